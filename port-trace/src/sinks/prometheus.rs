//! Prometheus metrics (`--prometheus ADDR`): lifetime histograms, allocation/release/failure
//! counters, occupancy gauges, lost events, dropped output lines and build info, in the
//! Prometheus text format.
//!
//! Counters and histograms are fed event by event (`record`); the gauges are set from the
//! pipeline's state just before each scrape (`set_state`), so a scrape sees the state of
//! that moment. Label values are bounded: protocols, kinds and errnos are small fixed sets,
//! processes are capped at `PROCESS_SERIES` and workloads (`container`, `pod`, `namespace`)
//! at `WORKLOAD_SERIES` (later ones are "other"), and only the fullest `DESTINATION_SERIES`
//! destination scopes get gauges.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    event::{
        Event, errno_name,
        workload::{CgroupId, Workload},
    },
    exhaustion::scope::{ScopeKey, Usage},
    findings::Finding,
    pipeline::{Sink, View},
    probes::{KernelCounters, LostCounts, ProbeErrors},
    sys::procfs::kernel_release,
    track::Outcome,
};

/// Processes (by name) with series of their own. The first ones to allocate keep their
/// series for the whole run, so every series only grows; the rest share "other".
pub const PROCESS_SERIES: usize = 20;
/// Workloads (container, pod, namespace) with series of their own, as for processes.
/// Processes in no container or pod have empty labels and do not count.
pub const WORKLOAD_SERIES: usize = 50;
/// Destination scopes with gauges of their own: the fullest ones at scrape time.
pub const DESTINATION_SERIES: usize = 50;
/// The label value of the processes beyond `PROCESS_SERIES`.
pub const OTHER_PROCESS: &str = "other";

/// A scope, its usage, and the workload that owns its namespace.
pub type ScopeState = (ScopeKey, Usage, Option<Arc<Workload>>);

/// Cgroups whose series are remembered before the memory starts afresh.
const MAX_CGROUPS: usize = 4_096;

/// The labels of the per-event series: what, who, and where they run.
const WORKLOAD_LABELS: [&str; 6] = ["proto", "kind", "process", "container", "pod", "namespace"];

/// Lifetime buckets in seconds: 1, 2.5 and 5 per decade from 1 µs to 10 000 s (~2.8 h), so
/// `histogram_quantile` is within a factor 2.5 anywhere from a loopback RST to a leak.
fn lifetime_buckets() -> Vec<f64> {
    let mut buckets = Vec::new();
    for exponent in -6..=3 {
        for mantissa in [1.0, 2.5, 5.0] {
            buckets.push(mantissa * 10f64.powi(exponent));
        }
    }
    buckets.push(10_000.0);
    buckets
}

pub struct Metrics {
    registry: Registry,
    lifetime: HistogramVec,
    allocations: IntCounterVec,
    releases: IntCounterVec,
    failures: IntCounterVec,
    lost: IntCounterVec,
    /// Lines dropped on the way to stdout (not events: those were counted).
    output_lines_dropped: IntCounter,
    output_lines_dropped_seen: u64,
    probe_errors: IntCounterVec,
    /// Each program's failed runs at the last scrape.
    probe_errors_seen: HashMap<&'static str, u64>,
    scope_used: IntGaugeVec,
    scope_capacity: IntGaugeVec,
    held: IntGauge,
    /// `held` by state: time_wait, other.
    held_by_state: IntGaugeVec,
    /// Findings in force by kind, severity and namespace.
    findings: IntGaugeVec,
    connections_refused: IntCounter,
    /// The metrics server's refused connections at the last scrape.
    connections_refused_seen: u64,
    /// Ports found free by reconciliation, and the total at the last scrape.
    reconciled: IntCounter,
    reconciled_seen: u64,
    /// Processes with a series of their own.
    processes: HashSet<String>,
    /// Workloads (container, pod, namespace labels) with series of their own.
    workloads: HashSet<[Box<str>; 3]>,
    /// Per cgroup, whether its workload has series of its own: one lookup per event.
    own_series: HashMap<CgroupId, bool>,
    /// The kernel's lost counters at the last scrape: the counter grows by the difference.
    lost_seen: LostCounts,
}

impl Metrics {
    pub fn new(backend: &str, version: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let lifetime = HistogramVec::new(
            HistogramOpts::new(
                "port_trace_port_lifetime_seconds",
                "How long ephemeral ports were held, from allocation to release (TIME_WAIT \
                 included), by protocol, allocation kind, process and workload.",
            )
            .buckets(lifetime_buckets()),
            &WORKLOAD_LABELS,
        )?;
        let allocations = IntCounterVec::new(
            Opts::new(
                "port_trace_allocations_total",
                "Ephemeral ports the kernel handed out, by protocol, allocation kind, process \
                 and workload (container, pod and its Kubernetes namespace; empty outside \
                 them).",
            ),
            &WORKLOAD_LABELS,
        )?;
        let releases = IntCounterVec::new(
            Opts::new(
                "port_trace_releases_total",
                "Ephemeral ports released (after TIME_WAIT, where there was one).",
            ),
            &["proto", "kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "port_trace_failures_total",
                "Failed ephemeral port allocations, by errno (EADDRNOTAVAIL: no free port \
                 for the destination; EADDRINUSE: no free port for bind/listen; EAGAIN: no \
                 free port for UDP).",
            ),
            &[
                "proto",
                "kind",
                "errno",
                "process",
                "container",
                "pod",
                "namespace",
            ],
        )?;
        let lost = IntCounterVec::new(
            Opts::new(
                "port_trace_lost_events_total",
                "Events the kernel could not deliver, by reason (ring_buffer_full, \
                 program_skipped: a program run the kernel skipped (nested, or a kretprobe \
                 out of instances), \
                 socket_table_full, failure_ring_full).",
            ),
            &["reason"],
        )?;
        let output_lines_dropped = IntCounter::new(
            "port_trace_output_lines_dropped_total",
            "Lines for stdout (event lines, warnings, summaries) dropped because its reader \
             did not keep up; the events themselves were counted.",
        )?;
        let probe_errors = IntCounterVec::new(
            Opts::new(
                "port_trace_probe_errors_total",
                "Failed runs of port-trace's eBPF programs, by program: a helper or kernel \
                 read that failed, so an event may be missing or incomplete.",
            ),
            &["program"],
        )?;
        let scope_labels = [
            "netns",
            "proto",
            "scope",
            "destination",
            "container",
            "pod",
            "namespace",
        ];
        let scope_used = IntGaugeVec::new(
            Opts::new(
                "port_trace_scope_ports_used",
                "Ports in use in a scope: a namespace's ephemeral range (scope=\"namespace\", \
                 what bind(0), listen and UDP draw from) or the ports for one TCP destination \
                 (scope=\"destination\"). container, pod and namespace name the workload \
                 that owns the network namespace, where one does.",
            ),
            &scope_labels,
        )?;
        let scope_capacity = IntGaugeVec::new(
            Opts::new(
                "port_trace_scope_ports_capacity",
                "Ports a scope can hold: the ephemeral range less reserved ports (and, for a \
                 destination, less ports held exclusively).",
            ),
            &scope_labels,
        )?;
        let held = IntGauge::new(
            "port_trace_ports_held",
            "Ports allocated and not yet released (TIME_WAIT included), as traced.",
        )?;
        // Beside port_trace_ports_held, not a label on it: dashboards and the soak read that
        // series unlabelled.
        let held_by_state = IntGaugeVec::new(
            Opts::new(
                "port_trace_ports_held_by_state",
                "Ports held, by state: time_wait (the socket is closed, the kernel keeps the \
                 port 60 s) and other (open sockets).",
            ),
            &["state"],
        )?;
        let findings = IntGaugeVec::new(
            Opts::new(
                "port_trace_findings",
                "Findings in force (why a range fills: time_wait_churn, connection_leak, \
                 listener_in_range, range_*), by kind, severity and network namespace; the \
                 remedy is in the finding records and the summary.",
            ),
            &["kind", "severity", "netns"],
        )?;
        let connections_refused = IntCounter::new(
            "port_trace_metrics_connections_refused_total",
            "Connections to this metrics endpoint closed unanswered because too many were \
             open at once (an idle one closed to make room, or the new one at once).",
        )?;
        let reconciled = IntCounter::new(
            "port_trace_reconciled_total",
            "Ports found free by reconciliation with the kernel's sockets: their release \
             event was lost, so they are not in port_trace_releases_total and have no \
             lifetime.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "port_trace_build_info",
                "Always 1: port-trace's version, the backend tracing, and the kernel.",
            ),
            &["version", "backend", "kernel"],
        )?;
        build_info
            .with_label_values(&[version, backend, &kernel_release()])
            .set(1);
        registry.register(Box::new(lifetime.clone()))?;
        registry.register(Box::new(allocations.clone()))?;
        registry.register(Box::new(releases.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(lost.clone()))?;
        registry.register(Box::new(output_lines_dropped.clone()))?;
        registry.register(Box::new(probe_errors.clone()))?;
        registry.register(Box::new(scope_used.clone()))?;
        registry.register(Box::new(scope_capacity.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(held_by_state.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(reconciled.clone()))?;
        registry.register(Box::new(build_info))?;
        // Every reason has a series from the start, so `rate()` sees the first loss.
        for reason in [
            "ring_buffer_full",
            "socket_table_full",
            "failure_ring_full",
            "program_skipped",
        ] {
            lost.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            lifetime,
            allocations,
            releases,
            failures,
            lost,
            output_lines_dropped,
            output_lines_dropped_seen: 0,
            probe_errors,
            probe_errors_seen: HashMap::new(),
            scope_used,
            scope_capacity,
            held,
            held_by_state,
            findings,
            connections_refused,
            connections_refused_seen: 0,
            reconciled,
            reconciled_seen: 0,
            processes: HashSet::new(),
            workloads: HashSet::new(),
            own_series: HashMap::new(),
            lost_seen: LostCounts::default(),
        })
    }

    /// The process label for `comm`: its own name while there is room, else "other".
    fn process<'a>(&mut self, comm: &'a str) -> &'a str {
        if self.processes.contains(comm) {
            comm
        } else if self.processes.len() < PROCESS_SERIES && comm != OTHER_PROCESS {
            self.processes.insert(comm.to_string());
            comm
        } else {
            OTHER_PROCESS
        }
    }

    /// The container, pod and namespace labels of `event`'s workload: its own while there
    /// is room, else "other"; empty outside containers and pods.
    fn workload<'a>(&mut self, event: &'a Event) -> [&'a str; 3] {
        let labels = event.workload.as_deref().map_or(["", "", ""], |w| {
            [w.container_label(), w.pod_label(), w.namespace_label()]
        });
        if labels == ["", "", ""] {
            return labels;
        }
        let own = match self.own_series.get(&event.cgroup) {
            Some(&own) => own,
            None => {
                let key = labels.map(Into::into);
                let own = self.workloads.contains(&key) || self.workloads.len() < WORKLOAD_SERIES;
                if own {
                    self.workloads.insert(key);
                }
                // Containers come and go: forget the cgroups, keep which labels have series.
                if self.own_series.len() >= MAX_CGROUPS {
                    self.own_series.clear();
                }
                self.own_series.insert(event.cgroup, own);
                own
            }
        };
        if own { labels } else { [OTHER_PROCESS; 3] }
    }

    /// Counts one event that the filters let through.
    pub fn record(&mut self, event: &Event, outcome: Outcome) {
        let proto = event.proto.as_str();
        let kind = event.kind.as_str();
        match outcome {
            Outcome::Allocated => {
                let process = self.process(&event.comm);
                let [container, pod, namespace] = self.workload(event);
                self.allocations
                    .with_label_values(&[proto, kind, process, container, pod, namespace])
                    .inc();
            }
            Outcome::Released { lifetime_ns, .. } => {
                let process = self.process(&event.comm);
                let [container, pod, namespace] = self.workload(event);
                self.lifetime
                    .with_label_values(&[proto, kind, process, container, pod, namespace])
                    .observe(lifetime_ns as f64 / 1e9);
                self.releases.with_label_values(&[proto, kind]).inc();
            }
            Outcome::UnmatchedRelease => self.releases.with_label_values(&[proto, kind]).inc(),
            Outcome::Failed => {
                let process = self.process(&event.comm);
                let [container, pod, namespace] = self.workload(event);
                self.failures
                    .with_label_values(&[
                        proto,
                        kind,
                        errno_name(event.errno),
                        process,
                        container,
                        pod,
                        namespace,
                    ])
                    .inc();
            }
            // Counted from the totals at each scrape (no event line is made for them).
            Outcome::EnteredTimeWait | Outcome::Reconciled => {}
            // In port_trace_findings (bind_before_connect), not a series of its own.
            Outcome::BoundConnected => {}
        }
    }

    /// Sets the gauges from the pipeline's state: every namespace scope and the fullest
    /// destinations (`scopes`, fullest first), the kernel's lost counters, ports held.
    /// Each scope comes with the pod or container that owns its namespace, where one does:
    /// its gauges carry that workload's labels.
    pub fn set_state(&mut self, scopes: &[ScopeState], lost: LostCounts, held: usize) {
        // Scopes that emptied must disappear, not freeze at their last value.
        self.scope_used.reset();
        self.scope_capacity.reset();
        let mut destinations = 0;
        for (key, usage, owner) in scopes {
            let destination = match key.destination() {
                Some(d) if destinations < DESTINATION_SERIES => {
                    destinations += 1;
                    std::net::SocketAddr::new(d.raddr, d.rport).to_string()
                }
                Some(_) => continue,
                None => String::new(),
            };
            let owner = owner.as_deref();
            let netns = key.netns.to_string();
            let labels = [
                netns.as_str(),
                key.proto.as_str(),
                key.kind().as_str(),
                destination.as_str(),
                owner.map_or("", Workload::container_label),
                owner.map_or("", Workload::pod_label),
                owner.map_or("", Workload::namespace_label),
            ];
            self.scope_used
                .with_label_values(&labels)
                .set(i64::from(usage.used));
            self.scope_capacity
                .with_label_values(&labels)
                .set(i64::from(usage.capacity));
        }
        for (reason, now, before) in [
            (
                "ring_buffer_full",
                lost.ring_buffer_full,
                self.lost_seen.ring_buffer_full,
            ),
            (
                "socket_table_full",
                lost.socket_table_full,
                self.lost_seen.socket_table_full,
            ),
            (
                "failure_ring_full",
                lost.failure_ring_full,
                self.lost_seen.failure_ring_full,
            ),
            (
                "program_skipped",
                lost.program_skipped,
                self.lost_seen.program_skipped,
            ),
        ] {
            self.lost
                .with_label_values(&[reason])
                .inc_by(now.saturating_sub(before));
        }
        self.lost_seen = lost;
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Held ports by state: `time_wait` of `held`.
    pub fn set_held_by_state(&mut self, time_wait: usize, held: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.held_by_state
            .with_label_values(&["time_wait"])
            .set(gauge(time_wait));
        self.held_by_state
            .with_label_values(&["other"])
            .set(gauge(held.saturating_sub(time_wait)));
    }

    /// The findings in force, counted by kind, severity and namespace; cleared ones vanish.
    pub fn set_findings(&mut self, findings: &[&Finding]) {
        self.findings.reset();
        for finding in findings {
            self.findings
                .with_label_values(&[
                    finding.kind.as_str(),
                    finding.severity.as_str(),
                    &finding.netns.to_string(),
                ])
                .inc();
        }
    }

    /// Counts the lines dropped on the way to stdout, `dropped` so far.
    pub fn set_output_lines_dropped(&mut self, dropped: u64) {
        self.output_lines_dropped
            .inc_by(dropped.saturating_sub(self.output_lines_dropped_seen));
        self.output_lines_dropped_seen = self.output_lines_dropped_seen.max(dropped);
    }

    /// The exposition in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!("encoding the metrics: {err}");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Counts the programs' failed runs: every attached program gets a series (0 until one
    /// fails), growing by what the kernel counted since the last scrape.
    pub fn set_probe_errors(&mut self, errors: &ProbeErrors) {
        for program in &errors.programs {
            let seen = self.probe_errors_seen.entry(program.program).or_default();
            self.probe_errors
                .with_label_values(&[program.program])
                .inc_by(program.count.saturating_sub(*seen));
            *seen = program.count;
        }
    }

    /// The metrics server's refused connections: `total` since the start.
    pub fn set_connections_refused(&mut self, total: u64) {
        self.connections_refused
            .inc_by(total.saturating_sub(self.connections_refused_seen));
        self.connections_refused_seen = total;
    }

    /// The exposition as of `view`, gauges included, with the kernel's counters.
    pub fn scrape(&mut self, view: &View<'_>, counters: &KernelCounters) -> String {
        self.set_probe_errors(&counters.probe_errors);
        let lost = counters.lost;
        let scopes: Vec<ScopeState> = view
            .exhaustion
            .fullest(usize::MAX)
            .into_iter()
            .map(|(key, usage, _)| (key, usage, view.exhaustion.owner(key.netns)))
            .collect();
        self.set_state(&scopes, lost, view.held);
        self.set_held_by_state(view.held_time_wait, view.held);
        self.set_findings(&view.findings);
        self.set_output_lines_dropped(view.stats.totals.output_lines_dropped);
        let reconciled = view.stats.totals.reconciled;
        self.reconciled
            .inc_by(reconciled.saturating_sub(self.reconciled_seen));
        self.reconciled_seen = reconciled;
        self.render()
    }
}

impl Sink for Metrics {
    fn event(&mut self, event: &Event, outcome: Outcome) -> std::io::Result<()> {
        self.record(event, outcome);
        Ok(())
    }
}

/// The Content-Type of `render`'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Proto, decode_raw, tests::raw_connect},
        exhaustion::scope::{Destination, Scope},
    };

    fn connect() -> Event {
        decode_raw(&raw_connect()).expect("decodes")
    }

    /// The value of the sample line that starts with `prefix` (name and labels).
    #[test]
    fn findings_and_held_by_state_are_gauges() {
        let mut metrics = Metrics::new("kprobe", "0").expect("metrics");
        let churn = crate::findings::fixtures::churn();
        metrics.set_findings(&[&churn]);
        metrics.set_held_by_state(780, 800);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                r#"port_trace_findings{kind="time_wait_churn",netns="7",severity="warn"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"port_trace_ports_held_by_state{state="time_wait"}"#
            ),
            Some(780.0)
        );
        assert_eq!(
            sample(&text, r#"port_trace_ports_held_by_state{state="other"}"#),
            Some(20.0)
        );
        // Cleared: the series goes.
        metrics.set_findings(&[]);
        assert!(!metrics.render().contains("time_wait_churn"));
    }

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn buckets_span_microseconds_to_hours() {
        let buckets = lifetime_buckets();
        assert_eq!(buckets.first(), Some(&1e-6));
        assert!(buckets.last().is_some_and(|&b| b >= 3_600.0));
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
    }

    #[test]
    fn a_release_lands_in_its_bucket_and_counters() {
        let mut metrics = Metrics::new("tracepoint", "9.9.9").expect("metrics");
        let event = connect();
        metrics.record(&event, Outcome::Allocated);
        metrics.record(
            &event,
            Outcome::Released {
                lifetime_ns: 3_000_000, // 3 ms
                time_wait_ns: None,
            },
        );
        let text = metrics.render();
        let labels =
            r#"container="",kind="connect",namespace="",pod="",process="curl",proto="tcp""#;
        assert_eq!(
            sample(&text, &format!("port_trace_allocations_total{{{labels}}}")),
            Some(1.0),
            "{text}"
        );
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("port_trace_port_lifetime_seconds_bucket{{{labels},le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0025"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(1.0), "{text}");
        assert!(text.contains(r#"port_trace_build_info{backend="tracepoint""#));
        assert!(text.contains(r#"version="9.9.9""#), "{text}");
    }

    #[test]
    fn failures_by_errno_and_processes_bounded() {
        let mut metrics = Metrics::new("kprobe", "0").expect("metrics");
        let mut event = connect();
        event.errno = 99;
        for i in 0..PROCESS_SERIES + 5 {
            event.comm = crate::event::comm::Comm::from(format!("p{i}").as_str());
            metrics.record(&event, Outcome::Failed);
        }
        let text = metrics.render();
        let other = format!(
            "port_trace_failures_total{{container=\"\",errno=\"EADDRNOTAVAIL\",kind=\"connect\",namespace=\"\",pod=\"\",process=\"{OTHER_PROCESS}\",proto=\"tcp\"}}"
        );
        assert_eq!(sample(&text, &other), Some(5.0), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("port_trace_failures_total{"))
            .count();
        assert_eq!(series, PROCESS_SERIES + 1, "{text}");
    }

    #[test]
    fn workloads_label_series_and_are_bounded() {
        use crate::event::workload::{Pod, fixtures::in_container};
        let mut metrics = Metrics::new("tracepoint", "0").expect("metrics");
        let mut event = connect();
        // A pod's container: all three labels.
        in_container(&mut event, 1, "api");
        if let Some(workload) = event.workload.as_mut().map(std::sync::Arc::make_mut) {
            workload.pod = Some(Pod {
                namespace: Some("shop".into()),
                name: Some("api-7d9f".into()),
                uid: "u1".into(),
            });
        }
        metrics.record(&event, Outcome::Allocated);
        let text = metrics.render();
        let pod = r#"port_trace_allocations_total{container="api",kind="connect",namespace="shop",pod="api-7d9f",process="curl",proto="tcp"}"#;
        assert_eq!(sample(&text, pod), Some(1.0), "{text}");
        // More containers than series: the rest share "other"; a known one keeps its own
        // even from a new cgroup (a restarted container keeps its name).
        for cgroup in 2..2 + WORKLOAD_SERIES as u64 + 3 {
            in_container(&mut event, cgroup, &format!("c{cgroup}"));
            metrics.record(&event, Outcome::Allocated);
        }
        in_container(&mut event, 999, "c2");
        metrics.record(&event, Outcome::Allocated);
        let text = metrics.render();
        let other = r#"port_trace_allocations_total{container="other",kind="connect",namespace="other",pod="other",process="curl",proto="tcp"}"#;
        assert_eq!(sample(&text, other), Some(4.0), "{text}");
        let c2 = r#"port_trace_allocations_total{container="c2",kind="connect",namespace="",pod="",process="curl",proto="tcp"}"#;
        assert_eq!(sample(&text, c2), Some(2.0), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("port_trace_allocations_total{"))
            .count();
        assert_eq!(series, WORKLOAD_SERIES + 1, "{text}");
    }

    #[test]
    fn gauges_follow_the_state_and_lost_counts_only_grow() {
        let mut metrics = Metrics::new("tracepoint", "0").expect("metrics");
        let namespace = ScopeKey {
            netns: 4026531840,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        };
        let destination = ScopeKey {
            scope: Scope::Destination(Destination {
                laddr: "127.0.0.1".parse().expect("ip"),
                raddr: "10.0.0.1".parse().expect("ip"),
                rport: 443,
            }),
            ..namespace
        };
        let usage = |used| Usage {
            used,
            capacity: 28_232,
        };
        let lost = LostCounts {
            ring_buffer_full: 4,
            ..Default::default()
        };
        let web = Arc::new(crate::event::workload::fixtures::docker(Some("web"), "ab"));
        metrics.set_state(
            &[
                (destination, usage(9), None),
                (namespace, usage(3), Some(web)),
            ],
            lost,
            12,
        );
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                r#"port_trace_scope_ports_used{container="",destination="10.0.0.1:443",namespace="",netns="4026531840",pod="",proto="tcp",scope="destination"}"#
            ),
            Some(9.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"port_trace_scope_ports_capacity{container="web",destination="",namespace="",netns="4026531840",pod="",proto="tcp",scope="namespace"}"#
            ),
            Some(28_232.0),
            "{text}"
        );
        assert_eq!(sample(&text, "port_trace_ports_held"), Some(12.0));
        // The next scrape: the destination emptied, the kernel counted one more loss.
        let lost = LostCounts {
            ring_buffer_full: 5,
            ..Default::default()
        };
        metrics.set_state(&[(namespace, usage(1), None)], lost, 1);
        let text = metrics.render();
        assert!(!text.contains("10.0.0.1:443"), "{text}");
        assert_eq!(
            sample(
                &text,
                r#"port_trace_lost_events_total{reason="ring_buffer_full"}"#
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"port_trace_lost_events_total{reason="socket_table_full"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn dropped_output_lines_are_a_counter_of_their_own() {
        let mut metrics = Metrics::new("tracepoint", "0").expect("metrics");
        let name = "port_trace_output_lines_dropped_total";
        assert_eq!(sample(&metrics.render(), name), Some(0.0));
        metrics.set_output_lines_dropped(3);
        metrics.set_output_lines_dropped(3);
        metrics.set_output_lines_dropped(10);
        let text = metrics.render();
        assert_eq!(sample(&text, name), Some(10.0), "{text}");
        assert!(!text.contains("port_trace_lost_events_total{reason=\"output"));
    }

    #[test]
    fn probe_errors_count_per_program_and_only_grow() {
        use crate::probes::{Backend, counters::ProgramErrors};
        let mut metrics = Metrics::new("tracepoint", "0.1.0").expect("metrics");
        let errors = |count| ProbeErrors {
            programs: vec![
                ProgramErrors {
                    program: "tcp_state",
                    backend: Backend::Tracepoint,
                    count,
                },
                ProgramErrors {
                    program: "sock_release",
                    backend: Backend::Tracepoint,
                    count: 0,
                },
            ],
        };
        metrics.set_probe_errors(&errors(3));
        metrics.set_probe_errors(&errors(5));
        let text = metrics.render();
        assert!(
            text.contains("port_trace_probe_errors_total{program=\"tcp_state\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("port_trace_probe_errors_total{program=\"sock_release\"} 0"),
            "{text}"
        );
    }
}
