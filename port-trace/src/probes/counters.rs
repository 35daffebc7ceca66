//! What the kernel side counts instead of reporting: events it could not deliver
//! (`LostCounts`) and program runs that failed (`ProbeErrors`), summed over CPUs.

use anyhow::Context as _;
use port_trace_common::PROBE_NAMES;
use serde::Serialize;

use super::Backend;

/// Everything the kernel side counts, read together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub lost: LostCounts,
    pub probe_errors: ProbeErrors,
}

/// Why events were lost, summed over CPUs from the kernel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    /// The ring buffer was full: the daemon did not keep up.
    pub ring_buffer_full: u64,
    /// The per-socket table was full (`--max-sockets`): a socket went untracked.
    pub socket_table_full: u64,
    /// The failure ring buffer was full: failed allocations went unreported.
    pub failure_ring_full: u64,
    /// Program runs the kernel skipped: a tracepoint or kprobe fired inside a program already
    /// running on that CPU (an interrupt's network processing during a kprobe, say), and the
    /// kernel does not nest tracing programs; or a kretprobe had no instance free for a call
    /// (`maxactive`). The event of that run is missing: a release, most often, under
    /// loopback churn. (Skipped runs that cannot carry an event are not counted:
    /// `SKIPS_LOSE_NOTHING`.)
    pub program_skipped: u64,
}

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.ring_buffer_full
            + self.socket_table_full
            + self.failure_ring_full
            + self.program_skipped
    }
}

/// Failed runs of the attached backend's programs (the `PROBE_ERRORS` counters): a helper or
/// a kernel read that failed, so the run did less than it should have. Programs that only
/// found nothing to do are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProbeErrors {
    /// In attach order.
    pub programs: Vec<ProgramErrors>,
}

/// One program's failed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProgramErrors {
    /// The program's name in the eBPF object, as in `Probes::programs`' labels.
    pub program: &'static str,
    /// The backend that attaches it.
    pub backend: Backend,
    /// Failed runs, summed over CPUs.
    pub count: u64,
}

impl ProbeErrors {
    /// Failed runs of all programs together.
    pub fn total(&self) -> u64 {
        self.programs.iter().map(|p| p.count).sum()
    }

    /// The programs with a failed run, and how many.
    pub fn failing(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.programs
            .iter()
            .filter(|p| p.count > 0)
            .map(|p| (p.program, p.count))
    }

    /// Reads every program's count with `count(PROBE_* index)`, the programs taken from the
    /// backends' attach tables.
    pub(super) fn collect(
        backends: &[Backend],
        mut count: impl FnMut(u32) -> anyhow::Result<u64>,
    ) -> anyhow::Result<Self> {
        let programs = super::programs()
            .filter(|(backend, _)| backends.contains(backend))
            .map(|(backend, program)| {
                let index = probe_index(program)
                    .with_context(|| format!("program {program} has no PROBE_* counter"))?;
                Ok(ProgramErrors {
                    program,
                    backend,
                    count: count(index)?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { programs })
    }
}

/// A program's index into `PROBE_ERRORS` (`PROBE_*` in port-trace-common).
fn probe_index(program: &str) -> Option<u32> {
    PROBE_NAMES
        .iter()
        .position(|name| *name == program)
        .map(|index| index as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use port_trace_common::{PROBE_KP_BIND, PROBE_PROGRAMS, PROBE_TCP_STATE};

    use super::*;

    #[test]
    fn every_counter_names_one_program_of_one_backend() {
        // The counters' names and the attach tables name the same programs.
        let counters: BTreeSet<&str> = PROBE_NAMES.into_iter().collect();
        let tables: BTreeSet<&str> = super::super::programs().map(|(_, name)| name).collect();
        assert_eq!(counters.len(), PROBE_PROGRAMS as usize, "a name twice");
        assert_eq!(counters, tables);
    }

    #[test]
    fn sums_and_labels_each_programs_count() {
        // Each program's count is its own index: a mix-up shows.
        let errors = ProbeErrors::collect(&[Backend::Kprobe, Backend::Tracepoint], |index| {
            Ok(u64::from(index))
        })
        .expect("collects");
        assert_eq!(errors.programs.len(), PROBE_PROGRAMS as usize);
        let find = |name: &str| {
            *errors
                .programs
                .iter()
                .find(|p| p.program == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(
            find("kp_bind"),
            ProgramErrors {
                program: "kp_bind",
                backend: Backend::Kprobe,
                count: u64::from(PROBE_KP_BIND),
            }
        );
        assert_eq!(find("tcp_state").backend, Backend::Tracepoint);
        assert_eq!(find("tcp_state").count, u64::from(PROBE_TCP_STATE));
        let n = u64::from(PROBE_PROGRAMS);
        assert_eq!(errors.total(), n * (n - 1) / 2);
        assert_eq!(ProbeErrors::default().total(), 0);
    }

    #[test]
    fn serializes_for_a_report() {
        let errors = ProbeErrors {
            programs: vec![ProgramErrors {
                program: "tcp_state",
                backend: Backend::Tracepoint,
                count: 3,
            }],
        };
        assert_eq!(
            serde_json::to_string(&errors).expect("serializes"),
            r#"{"programs":[{"program":"tcp_state","backend":"tracepoint","count":3}]}"#
        );
    }

    #[test]
    fn a_failed_read_is_an_error() {
        let err = ProbeErrors::collect(&[Backend::Tracepoint], |_| anyhow::bail!("no map"))
            .expect_err("fails");
        assert_eq!(err.to_string(), "no map");
    }
}
