//! Integration tests of the Tern server: the real binary on loopback sockets.

mod api;
mod authority;
mod bounds;
mod config;
mod contract;
mod crash;
mod credentials;
mod gateway;
mod metrics;
mod mqtt;
mod plans;
mod restart;
mod schema;
mod support;
mod tls;
mod transport;
mod update;
