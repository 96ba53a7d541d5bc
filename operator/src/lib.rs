//! weft-operator: the control plane library.
//!
//! The model, the compiler, the per-kind checks and injection are the pure crate `weft-core`;
//! reading manifest directories is `weft-manifests`. They are re-exported under their old paths
//! (`crate::model`, `crate::compile`, `crate::validate`, `crate::inject`).
#![forbid(unsafe_code)]
pub mod admin;
pub mod aggregated;
pub mod apiserver;
pub mod discovery;
pub mod identity;
pub mod inject;
pub mod leader;
pub mod memory;
pub mod respond;
pub mod runtime;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod tap;
pub mod trafficmetrics;
pub mod webhook;

/// The compiler ([`weft_core::compile`]), with the directory report of `weft-manifests` and the
/// wire conversion ([`discovery::proto::ToProto`]).
pub mod compile {
    pub use crate::discovery::proto::ToProto;
    pub use weft_core::compile::*;
    pub use weft_manifests::{compile_dir, ReportError};
}

/// The mesh model ([`weft_core::model`]) and the manifest directory loader.
pub mod model {
    pub use weft_core::model::*;
    pub use weft_manifests as manifests;
}

pub use weft_core::validate;
