//! The Prometheus text reader lives in `weft_common::promtext` (shared with the CLI).
pub use weft_common::promtext::*;
