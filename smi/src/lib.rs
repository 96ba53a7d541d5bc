//! The Service Mesh Interface API as Rust types.
#![forbid(unsafe_code)]

pub mod hub;
