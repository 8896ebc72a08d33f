//! Integration tests of tern-delta (one binary; see STYLE.md).
mod corpus;
mod full;
mod fuzz_corpus;
mod refusals;
mod resume;
