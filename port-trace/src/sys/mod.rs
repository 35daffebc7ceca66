//! OS plumbing, no pipeline logic: network namespaces, sock_diag netlink, /proc, clocks,
//! output files, stdout and stderr. Every stage may use these; these use no stage.

pub mod clock;
pub mod netns;
pub mod output;
pub mod procfs;
pub mod sock_diag;
pub mod stdio;
