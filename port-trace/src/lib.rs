//! port-trace: traces every ephemeral port the kernel hands out and how long it is held.
//!
//! The daemon is a pipeline, and its modules are its stages, in order (a stage imports only
//! earlier ones; `tests/layout.rs` holds it to that):
//!
//! 1. `probes`: check the machine, load and attach the eBPF programs, hand out the rings.
//! 2. `event`: the rings' bytes decoded into typed events; the filters.
//! 3. `workload`: each event's cgroup named (container, Kubernetes pod, systemd service),
//!    and each network namespace's owner.
//! 4. `track`: per-socket state and lifetimes, TIME_WAIT, the start-up snapshot.
//! 5. `exhaustion` and `stats`: occupancy, levels, forecasts and warnings; histograms and
//!    totals.
//! 6. `findings`: why a range fills (TIME_WAIT churn, leaks, listeners inside the range,
//!    range lint), with the evidence and the remedy.
//! 7. `pipeline`: the core that runs events through 4-6, without I/O.
//! 8. `sinks`: terminal, event lines, report, HdrHistogram log, Prometheus.
//!
//! Beside them: `sys` (OS plumbing any stage may use: netns, sock_diag, /proc, cgroups,
//! clocks),
//! `cmd` (the subcommands: trace, check, explain), `cli` and `error`.

pub mod cli;
pub mod cmd;
mod error;
pub mod event;
mod exhaustion;
mod findings;
mod pipeline;
pub mod probes;
pub mod sinks;
mod stats;
pub mod sys;
mod track;
pub mod workload;
