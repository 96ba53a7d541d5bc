//! Process wiring: builds identity, discovery, the listeners and the admin server from the
//! environment, runs them, and drains on SIGTERM/SIGINT.

pub mod env;

pub use env::{ControlAddr, EnvError, LogFormat, ProxyEnv};
