//! weft-proxy: the sidecar library.
#![forbid(unsafe_code)]
pub mod balance;
pub mod admin;
