//! The JSON report written on exit (`--report FILE`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    event::{Proto, comm::Comm},
    exhaustion::{
        level::Level,
        scope::{ScopeKey, ScopeKind, Usage},
    },
    pipeline::{Sink, View},
    probes::{Backend, LostCounts, ProbeErrors},
    sinks::events::{FindingRecord, WorkloadFields},
    stats::{DestinationStats, LifetimeSummary, Lifetimes, Stats, Totals},
    sys::output::OutputFile,
};

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub backend: String,
    pub duration_ns: u64,
    /// The findings in force when tracing stopped, most severe first (the finding records
    /// of the event stream, with state as last emitted).
    pub findings: Vec<serde_json::Value>,
    pub totals: Totals,
    pub lost: LostCounts,
    /// Failed runs of the attached eBPF programs: the total, and the programs with any.
    pub probe_errors: ProbeErrorsRecord,
    /// Ports still held when tracing stopped (in TIME_WAIT included).
    pub held_at_exit: usize,
    /// Of `held_at_exit`, by state: `time_wait`, and `other` (open sockets).
    pub held_by_state: HeldByState,
    /// Failed allocations by errno name.
    pub fail_by_error: BTreeMap<&'static str, u64>,
    /// Allocations per process (comm), released or not.
    pub alloc_by_process: BTreeMap<Comm, u64>,
    pub lifetime_ns: LifetimeGroups,
    /// The destinations of connect() with the most allocations and failures.
    pub top_destinations: Vec<DestinationRecord>,
    /// The fullest scopes when tracing stopped.
    pub scopes: Vec<ScopeRecord>,
    /// Per workload (cgroup), the most allocations and failures first: who it is, its
    /// counts and lifetimes.
    pub workloads: Vec<WorkloadRecord>,
}

/// Held ports by the states the tracker knows without asking the kernel.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct HeldByState {
    pub time_wait: usize,
    pub other: usize,
}

impl HeldByState {
    pub fn of(view: &View<'_>) -> Self {
        Self {
            time_wait: view.held_time_wait,
            other: view.held.saturating_sub(view.held_time_wait),
        }
    }
}

/// One workload's allocations, failures and lifetimes in the report.
#[derive(Debug, Serialize)]
pub struct WorkloadRecord {
    #[serde(flatten)]
    pub workload: WorkloadFields,
    pub alloc: u64,
    pub fail: u64,
    pub lifetime_ns: LifetimeSummary,
}

/// How many workloads the report lists (the stats keep `stats::MAX_WORKLOADS`).
const REPORT_WORKLOADS: usize = 100;

/// The programs' failed runs in the report.
#[derive(Debug, Serialize)]
pub struct ProbeErrorsRecord {
    pub total: u64,
    pub by_program: BTreeMap<&'static str, u64>,
}

impl From<&ProbeErrors> for ProbeErrorsRecord {
    fn from(errors: &ProbeErrors) -> Self {
        Self {
            total: errors.total(),
            by_program: errors.failing().collect(),
        }
    }
}

/// One scope's occupancy in the report.
#[derive(Debug, Serialize)]
pub struct ScopeRecord {
    pub netns: u32,
    pub proto: Proto,
    /// "namespace" or "destination".
    pub scope: ScopeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raddr: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rport: Option<u16>,
    pub used: u32,
    pub capacity: u32,
    pub level: Level,
    /// The pod or container that owns the namespace, where one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<WorkloadFields>,
}

impl From<&(ScopeKey, Usage, Level)> for ScopeRecord {
    fn from((key, usage, level): &(ScopeKey, Usage, Level)) -> Self {
        let dest = key.destination();
        Self {
            netns: key.netns,
            proto: key.proto,
            scope: key.kind(),
            raddr: dest.map(|d| d.raddr),
            rport: dest.map(|d| d.rport),
            used: usage.used,
            capacity: usage.capacity,
            level: *level,
            owner: None,
        }
    }
}

/// One destination's counts in the report.
#[derive(Debug, Serialize)]
pub struct DestinationRecord {
    pub destination: std::net::SocketAddr,
    #[serde(flatten)]
    pub counts: DestinationStats,
    pub mean_lifetime_ns: u64,
}

/// How many of the fullest scopes the report lists.
const REPORT_SCOPES: usize = 50;

/// How many destinations the report lists.
const REPORT_DESTINATIONS: usize = 50;

#[derive(Debug, Serialize)]
pub struct LifetimeGroups {
    pub all: LifetimeSummary,
    pub by_proto: BTreeMap<String, LifetimeSummary>,
    pub by_kind: BTreeMap<String, LifetimeSummary>,
    pub by_process: BTreeMap<String, LifetimeSummary>,
}

impl Report {
    pub fn new(stats: &Stats, backend: &str, duration_ns: u64, held_at_exit: usize) -> Self {
        fn group<K: ToString>(map: &BTreeMap<K, Lifetimes>) -> BTreeMap<String, LifetimeSummary> {
            map.iter()
                .map(|(k, v)| (k.to_string(), v.summary()))
                .collect()
        }
        Self {
            version: env!("CARGO_PKG_VERSION"),
            backend: backend.to_string(),
            duration_ns,
            totals: stats.totals,
            lost: stats.lost,
            probe_errors: (&stats.probe_errors).into(),
            held_at_exit,
            held_by_state: HeldByState {
                time_wait: 0,
                other: held_at_exit,
            },
            findings: Vec::new(),
            fail_by_error: stats.fails_by_error.clone(),
            alloc_by_process: stats.allocs_by_process().clone(),
            scopes: Vec::new(),
            workloads: stats
                .top_workloads(REPORT_WORKLOADS)
                .into_iter()
                .map(|(cgroup, w)| WorkloadRecord {
                    workload: WorkloadFields::new(cgroup, w.workload.as_ref()),
                    alloc: w.alloc,
                    fail: w.fail,
                    lifetime_ns: w.lifetimes.summary(),
                })
                .collect(),
            top_destinations: stats
                .top_destinations(REPORT_DESTINATIONS)
                .into_iter()
                .map(|(destination, counts)| DestinationRecord {
                    destination,
                    counts,
                    mean_lifetime_ns: counts.mean_lifetime_ns(),
                })
                .collect(),
            lifetime_ns: LifetimeGroups {
                all: stats.all().summary(),
                by_proto: group(stats.by_proto()),
                by_kind: group(stats.by_kind()),
                // Exact names (not `Display`'s terminal escapes): JSON escapes for itself.
                by_process: stats
                    .by_process()
                    .iter()
                    .map(|(comm, v)| (comm.as_str().to_string(), v.summary()))
                    .collect(),
            },
        }
    }

    /// The report of the pipeline's state in `view`, with its fullest scopes.
    pub fn from_view(view: &View<'_>, backend: &str) -> Self {
        let mut report = Self::new(view.stats, backend, view.elapsed_ns, view.held);
        report.held_by_state = HeldByState::of(view);
        report.findings = view
            .findings
            .iter()
            .filter_map(|f| serde_json::to_value(FindingRecord::from(*f)).ok())
            .collect();
        report.scopes = view
            .exhaustion
            .fullest(REPORT_SCOPES)
            .iter()
            .map(|scope| ScopeRecord {
                owner: view
                    .exhaustion
                    .owner(scope.0.netns)
                    .map(|owner| WorkloadFields::new(Default::default(), Some(&owner))),
                ..scope.into()
            })
            .collect();
        report
    }
}

/// `--report FILE`: the report, written when tracing stops.
pub struct ReportFile {
    /// Prepared before anything was attached; put in place, whole, at the finish.
    pub output: Option<OutputFile>,
    /// The backend that attached.
    pub backend: Backend,
}

impl Sink for ReportFile {
    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        let Some(mut output) = self.output.take() else {
            return Ok(());
        };
        let report = Report::from_view(view, self.backend.as_str());
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        output.write_all((json + "\n").as_bytes())?;
        Ok(output.commit()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::one_connect_held_for;

    #[test]
    fn report_shape() {
        let (stats, _) = one_connect_held_for(1_000);
        let value = serde_json::to_value(Report::new(&stats, "tracepoint", 5, 0)).expect("json");
        assert_eq!(value["totals"]["alloc"], 1);
        assert_eq!(value["totals"]["release"], 1);
        assert_eq!(value["totals"]["lost"], 0);
        assert_eq!(value["probe_errors"]["total"], 0);
        assert_eq!(value["alloc_by_process"]["curl"], 1);
        assert_eq!(value["lifetime_ns"]["all"]["p99.9"], 1_000);
        assert_eq!(value["lifetime_ns"]["by_proto"]["tcp"]["count"], 1);
        assert_eq!(value["lifetime_ns"]["by_process"]["curl"]["max"], 1_000);
        assert_eq!(value["lifetime_ns"]["by_kind"]["connect"]["min"], 1_000);
        let destination = &value["top_destinations"][0];
        assert_eq!(destination["destination"], "10.1.2.3:443");
        assert_eq!(destination["alloc"], 1);
        assert_eq!(destination["mean_lifetime_ns"], 1_000);
        // The event named no workload: its cgroup is unknown, and so listed bare.
        assert_eq!(value["workloads"][0]["alloc"], 1);
        assert!(value["workloads"][0].get("container").is_none());
    }

    #[test]
    fn workloads_are_named_with_their_counts_and_lifetimes() {
        use crate::{event::workload::fixtures::in_container, track::Outcome};
        let (mut stats, mut event) = one_connect_held_for(1_000);
        in_container(&mut event, 42, "web");
        stats.record(&event, Outcome::Allocated);
        stats.record(&event, Outcome::Allocated);
        stats.record(&event, Outcome::Failed);
        let value = serde_json::to_value(Report::new(&stats, "tracepoint", 5, 0)).expect("json");
        let web = &value["workloads"][0];
        assert_eq!(web["container"]["name"], "web");
        assert_eq!(web["container"]["runtime"], "docker");
        assert_eq!(web["cgroup"], format!("/docker/{:064x}", 42));
        assert_eq!(
            (web["alloc"].as_u64(), web["fail"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(web["lifetime_ns"]["count"], 0);
        assert_eq!(value["workloads"][1]["lifetime_ns"]["max"], 1_000);
    }
}
