//! Harness for weft's end-to-end tests: a real control plane ([`cluster`]), a kubelet stand-in
//! that runs pods from the repository's images (built by `scripts/build-images.sh`, read and
//! unpacked by [`images`]) as processes in network namespaces ([`kubelet`]), and Helm via the
//! Python SDK (`e2e/scripts/helm.py`).
#![forbid(unsafe_code)]

pub mod apply;
pub mod chaos;
pub mod cluster;
pub mod conformance;
pub mod echo_basic;
pub mod gateway_crds;
pub mod harness;
pub mod images;
pub mod kubelet;
pub mod loopback;
pub mod operator;
pub mod prometheus;
pub mod workspace;
