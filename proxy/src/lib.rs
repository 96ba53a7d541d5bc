//! weft-proxy: the sidecar library.
// No `unsafe`: the one libc call (memory given back) lives in `weft_common::memory`.
#![forbid(unsafe_code)]
pub mod accrual;
pub mod admin;
pub mod app;
pub mod balance;
pub mod classify;
pub mod config;
pub mod control;
pub mod control_tls;
pub mod fast_map;
pub mod filter;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod ondemand;
pub mod outbound;
pub mod process_metrics;
pub mod route;
pub mod shed;
pub mod state;
pub mod tap;
pub mod trace;
pub mod transport;
