//! The subcommands: `trace` (the default: run the pipeline until stopped), `check` (will it
//! work here), `explain` (one port, with the IANA `registry`), `analyze` (replay a capture).

pub mod analyze;
pub mod check;
pub mod explain;
pub mod registry;
pub mod trace;
