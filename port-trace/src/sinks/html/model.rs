//! The page model: everything the page shows, as plain data, built once from the pipeline's
//! `View` (what the report and the summary read) and the recorder's series. Rendering
//! (`render`) reads only this.

use crate::{
    exhaustion::level::{Level, Thresholds},
    findings::Severity,
    pipeline::View,
    probes::Backend,
    sinks::{
        events::{FindingRecord, WorkloadFields, evidence_text},
        summary::scope_name,
    },
    stats::{DISTRIBUTION_EDGES_NS, LifetimeSummary, Lifetimes, Totals},
};

use super::recorder::{KINDS, PROTOS, Recorder, Sample};

/// How many scopes are plotted, processes and workloads get a distribution, rows a table
/// has, and findings are shown: the page's size does not grow with the trace.
pub const PLOTTED_SCOPES: usize = 4;
pub const TOP_DISTRIBUTIONS: usize = 4;
pub const TOP_ROWS: usize = 10;
pub const MAX_FINDINGS: usize = 20;
const HOLDERS_PER_SCOPE: usize = 5;

/// What the page says about where it comes from.
#[derive(Debug, Clone)]
pub struct Meta {
    pub host: String,
    pub kernel: String,
    /// None where a capture names one this version does not know.
    pub backend: Option<Backend>,
    pub version: String,
    /// When tracing started (Unix epoch ns), where known.
    pub started_epoch_ns: Option<u64>,
    pub thresholds: Thresholds,
    pub source: Source,
}

/// Where the page's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Live,
    /// `analyze CAPTURE`: the capture's file name.
    Capture(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Live => f.write_str("live trace"),
            Source::Capture(name) => write!(f, "capture ({name})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FindingView {
    pub severity: Severity,
    pub kind: String,
    pub place: String,
    pub who: String,
    pub evidence: String,
    pub remedy: String,
}

/// A point of a scope's occupancy: `(start_ns, end_ns)` since tracing started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScopePoint {
    pub start_ns: u64,
    pub end_ns: u64,
    pub used: u32,
    pub fails: u32,
    /// The most ports in use at one of those failures.
    pub fail_used: u32,
}

#[derive(Debug, Clone)]
pub struct ScopeView {
    pub name: String,
    pub level: Level,
    pub used: u32,
    pub capacity: u32,
    /// Seconds to full at the current pace, where it is filling.
    pub forecast_s: Option<f64>,
    pub fails: u64,
    pub points: Vec<ScopePoint>,
}

/// A rate over time: `(start_ns, end_ns, count)` per point.
#[derive(Debug, Clone)]
pub struct RateSeries {
    pub label: String,
    pub points: Vec<(u64, u64, u64)>,
}

#[derive(Debug, Clone)]
pub struct Distribution {
    pub label: String,
    pub counts: [u64; DISTRIBUTION_EDGES_NS.len()],
    /// Of `counts`, through TIME_WAIT (overall only; None where not known).
    pub time_wait: Option<[u64; DISTRIBUTION_EDGES_NS.len()]>,
    pub summary: LifetimeSummary,
}

#[derive(Debug, Clone)]
pub struct HolderRow {
    pub scope: String,
    pub process: String,
    pub workload: String,
    pub ports: u32,
}

#[derive(Debug, Clone)]
pub struct DestinationRow {
    pub destination: String,
    pub alloc: u64,
    pub release: u64,
    pub fail: u64,
    pub mean_ns: u64,
    pub max_ns: u64,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub meta: Meta,
    pub elapsed_ns: u64,
    pub totals: Totals,
    pub held: usize,
    pub held_time_wait: usize,
    pub findings: Vec<FindingView>,
    /// Findings beyond `MAX_FINDINGS`, not shown.
    pub more_findings: usize,
    pub scopes: Vec<ScopeView>,
    pub alloc_rates: Vec<RateSeries>,
    pub release_rates: Vec<RateSeries>,
    pub fail_rates: RateSeries,
    /// `(start_ns, end_ns, held, of which TIME_WAIT)`.
    pub held_points: Vec<(u64, u64, u64, u64)>,
    pub lifetimes: Vec<Distribution>,
    pub holders: Vec<HolderRow>,
    pub destinations: Vec<DestinationRow>,
    pub fails_by_error: Vec<(String, u64)>,
    pub fails_by_process: Vec<(String, u64)>,
}

/// A series of `Sample` counts picked by `count`, when it has any.
fn rates(recorder: &Recorder, label: String, count: impl Fn(&Sample) -> u64) -> Option<RateSeries> {
    let points: Vec<(u64, u64, u64)> = recorder
        .series
        .points()
        .map(|p| (p.start_ns, p.end_ns, count(&p.value)))
        .collect();
    points
        .iter()
        .any(|p| p.2 > 0)
        .then_some(RateSeries { label, points })
}

/// Per protocol and kind, the series with any count in `of`.
fn by_proto_kind(
    recorder: &Recorder,
    of: fn(&Sample) -> &super::recorder::ByProtoKind,
) -> Vec<RateSeries> {
    let mut out = Vec::new();
    for (p, proto) in PROTOS.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            out.extend(rates(recorder, format!("{proto} {kind}"), |s| of(s)[p][k]));
        }
    }
    out
}

fn distribution(label: String, lifetimes: &Lifetimes) -> Distribution {
    Distribution {
        label,
        counts: lifetimes.distribution(),
        time_wait: None,
        summary: lifetimes.summary(),
    }
}

impl Page {
    pub fn new(meta: Meta, view: &View<'_>, recorder: &Recorder) -> Self {
        let stats = view.stats;
        let owner = |netns: u32| view.exhaustion.owner(netns);
        // The plotted scopes: those that failed first, then the fullest at their peak.
        let mut slots: Vec<(usize, super::recorder::Slot)> = recorder
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, (*s)?)))
            .collect();
        slots.sort_by(|a, b| {
            (b.1.fails > 0)
                .cmp(&(a.1.fails > 0))
                .then(b.1.peak.total_cmp(&a.1.peak))
        });
        let levels: Vec<_> = view.exhaustion.fullest(usize::MAX);
        let scopes: Vec<ScopeView> = slots
            .iter()
            .take(PLOTTED_SCOPES)
            .map(|(i, slot)| {
                let usage = view.exhaustion.usage(&slot.key);
                ScopeView {
                    name: scope_name(&slot.key, owner(slot.key.netns).as_deref()),
                    level: levels
                        .iter()
                        .find(|(k, _, _)| *k == slot.key)
                        .map_or(Level::Ok, |(_, _, level)| *level),
                    used: usage.used,
                    capacity: usage.capacity,
                    forecast_s: view.exhaustion.forecast_s(&slot.key, view.now_ns),
                    fails: slot.fails,
                    points: recorder
                        .series
                        .points()
                        .filter(|p| p.value.scopes[*i].seen)
                        .map(|p| ScopePoint {
                            start_ns: p.start_ns,
                            end_ns: p.end_ns,
                            used: p.value.scopes[*i].used,
                            fails: p.value.scopes[*i].fails,
                            fail_used: p.value.scopes[*i].fail_used,
                        })
                        .collect(),
                }
            })
            .collect();
        let holders = slots
            .iter()
            .take(PLOTTED_SCOPES)
            .flat_map(|(_, slot)| {
                let scope = scope_name(&slot.key, owner(slot.key.netns).as_deref());
                view.exhaustion
                    .top_holders(&slot.key, HOLDERS_PER_SCOPE, view.sockets)
                    .into_iter()
                    .map(move |top| HolderRow {
                        scope: scope.clone(),
                        process: format!("{}[{}]", top.holder.comm.as_str(), top.holder.pid),
                        workload: WorkloadFields::new(top.cgroup, top.workload.as_ref()).display(),
                        ports: top.ports,
                    })
            })
            .collect();

        let all = stats.all();
        let mut overall = distribution("all".to_string(), &all);
        overall.time_wait = Some(recorder.time_wait.distribution());
        let mut lifetimes = vec![overall];
        let mut processes: Vec<_> = stats.by_process().iter().collect();
        processes.sort_by_key(|(comm, l)| (std::cmp::Reverse(l.summary().count), **comm));
        lifetimes.extend(
            processes
                .into_iter()
                .take(TOP_DISTRIBUTIONS)
                .map(|(comm, l)| distribution(format!("process {}", comm.as_str()), l)),
        );
        lifetimes.extend(
            stats
                .top_workloads(TOP_DISTRIBUTIONS)
                .into_iter()
                .filter(|(_, w)| w.workload.is_some() && w.lifetimes.summary().count > 0)
                .map(|(cgroup, w)| {
                    let name = WorkloadFields::new(cgroup, w.workload.as_ref()).display();
                    distribution(format!("workload {name}"), &w.lifetimes)
                }),
        );

        let mut fails_by_process: Vec<(String, u64)> = stats
            .fails_by_process
            .iter()
            .map(|(comm, n)| (comm.as_str().to_string(), *n))
            .collect();
        fails_by_process.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        fails_by_process.truncate(TOP_ROWS);

        let findings: Vec<FindingView> = view
            .findings
            .iter()
            .take(MAX_FINDINGS)
            .map(|f| {
                let record = FindingRecord::from(*f);
                let place = match (record.raddr, record.rport) {
                    (Some(addr), Some(port)) => format!(
                        "netns {} to {}",
                        record.netns,
                        std::net::SocketAddr::new(addr, port)
                    ),
                    _ => format!("netns {}", record.netns),
                };
                let who = record
                    .who
                    .as_ref()
                    .map(|w| match w.workload.display().as_str() {
                        "" => format!("{}[{}]", w.comm.as_str(), w.pid),
                        wl => format!("{}[{}] in {wl}", w.comm.as_str(), w.pid),
                    })
                    .unwrap_or_default();
                FindingView {
                    severity: f.severity,
                    kind: f.kind.as_str().to_string(),
                    place,
                    who,
                    evidence: evidence_text(&f.evidence),
                    remedy: f.remedy.clone(),
                }
            })
            .collect();

        Self {
            meta,
            elapsed_ns: view.elapsed_ns,
            totals: stats.totals,
            held: view.held,
            held_time_wait: view.held_time_wait,
            more_findings: view.findings.len().saturating_sub(findings.len()),
            findings,
            scopes,
            alloc_rates: by_proto_kind(recorder, |s| &s.alloc),
            release_rates: by_proto_kind(recorder, |s| &s.release),
            fail_rates: rates(recorder, "failed".to_string(), |s| {
                s.fail.iter().flatten().sum()
            })
            .unwrap_or(RateSeries {
                label: "failed".to_string(),
                points: Vec::new(),
            }),
            held_points: recorder
                .series
                .points()
                .map(|p| (p.start_ns, p.end_ns, p.value.held, p.value.held_time_wait))
                .collect(),
            lifetimes,
            holders,
            destinations: stats
                .top_destinations(TOP_ROWS)
                .into_iter()
                .map(|(destination, d)| DestinationRow {
                    destination: destination.to_string(),
                    alloc: d.alloc,
                    release: d.release,
                    fail: d.fail,
                    mean_ns: d.mean_lifetime_ns(),
                    max_ns: d.max_lifetime_ns,
                })
                .collect(),
            fails_by_error: stats
                .fails_by_error
                .iter()
                .map(|(e, n)| (e.to_string(), *n))
                .collect(),
            fails_by_process,
        }
    }
}
