//! weft-operator: the control plane library.
#![forbid(unsafe_code)]
pub mod inject;
