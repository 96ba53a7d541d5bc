//! The subcommands that print data.

pub mod anchors;
pub mod check;
pub mod compile;
pub mod diff;
pub mod edges;
pub mod install;
pub mod proxies;
pub mod routes;
pub mod stat;
pub mod tap;
pub mod targets;
pub mod top;
pub mod verdict;
pub mod version;
pub mod webhooks;
