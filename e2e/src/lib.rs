//! Harness for weft's end-to-end tests: a real control plane ([`cluster`]), a kubelet stand-in
//! that runs pods as processes in network namespaces ([`kubelet`]), and Helm via the Python SDK
//! ([`helm`]).
#![forbid(unsafe_code)]

pub mod apply;
pub mod cluster;
pub mod harness;
pub mod kubelet;
pub mod loopback;
pub mod operator;
pub mod workspace;
