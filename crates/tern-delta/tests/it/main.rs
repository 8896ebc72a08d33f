//! Integration tests of tern-delta.
mod corpus;
