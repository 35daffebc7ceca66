//! OS plumbing, no pipeline logic: network namespaces, sock_diag netlink, /proc, cgroups,
//! perf events, the node's pod logs and the Docker socket, clocks, output files, stdout and
//! stderr.
//! Every stage may use these; these use no stage.

pub mod cgroups;
pub mod clock;
pub mod docker;
pub mod netns;
pub mod output;
pub mod perf_event;
pub mod pods;
pub mod procfs;
pub mod sock_diag;
pub mod stdio;
