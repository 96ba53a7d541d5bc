//! weft's pure core: the mesh model, the compiler, the per-kind analysis and sidecar injection.
//!
//! Nothing here does I/O or needs an async runtime, a Kubernetes client, gRPC or protobuf:
//! sources (the operator's watchers, `weft-manifests`, the CLI) feed it typed objects and read
//! typed results.
//!
//! * [`model`]: the mesh model (SMI hub objects and the cluster state the compiler reads);
//!   [`model::parse`] reads manifest text.
//! * [`analysis`]: one analysis per SMI kind, read by the compiler, status and admission.
//! * [`compile`]: from the model to per-proxy config.
//! * [`reason`]: the typed reasons of problems and their condition/Event strings.
//! * [`validate`]: the per-object checks behind admission and status conditions.
//! * [`inject`]: the proxy injector (JSON in, JSON out).
#![forbid(unsafe_code)]

/// One analysis per SMI kind ([`compile::analysis`]).
pub use compile::analysis;

pub mod compile;
pub mod inject;
pub mod model;
pub mod reason;
pub mod validate;
