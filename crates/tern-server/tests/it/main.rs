//! Integration tests of the Tern server: the real binary on loopback sockets.

mod api;
mod config;
mod gateway;
mod mqtt;
mod plans;
mod restart;
mod support;
mod tls;
mod transport;
mod update;
