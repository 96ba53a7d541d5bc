//! weft-proxy: the sidecar library.
#![forbid(unsafe_code)]
pub mod balance;
pub mod metrics;
pub mod config;
pub mod route;
pub mod transport;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod admin;
pub mod app;
pub mod control;
pub mod identity;
