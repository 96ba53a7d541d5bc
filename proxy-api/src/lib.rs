//! The gRPC contract between weft-operator and weft-proxy.
#![forbid(unsafe_code)]
