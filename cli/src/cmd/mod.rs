//! The subcommands that print data.

pub mod check;
pub mod compile;
pub mod proxies;
pub mod stat;
