//! Stats: totals and allocation-lifetime histograms, overall and per protocol, kind,
//! process and workload.

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::HashMap;
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    event::comm::Comm,
    event::{
        AllocKind, Event, Proto, errno_name,
        workload::{CgroupId, Workload},
    },
    track::Outcome,
};
// The kernel's counters are the probes' to read; the stats keep the last reading.
use crate::probes::{KernelCounters, LostCounts, ProbeErrors};

/// Longest lifetime the histograms resolve (a day); longer ones are clamped to it.
const MAX_LIFETIME_NS: u64 = 86_400 * 1_000_000_000;
/// Two significant digits: 1% resolution, ~50 KiB a histogram.
const SIGNIFICANT_DIGITS: u8 = 2;

/// Lifetimes of one group: an HdrHistogram plus the exact extremes and mean.
#[derive(Debug, Clone)]
pub struct Lifetimes {
    histogram: Histogram<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that HdrHistogram accepts.
    Histogram::new_with_bounds(1, MAX_LIFETIME_NS, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            histogram: new_histogram(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

/// The summary of one group, in nanoseconds, as reports and summaries show it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LifetimeSummary {
    pub count: u64,
    pub min: u64,
    pub mean: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p999: u64,
    pub max: u64,
}

impl Lifetimes {
    pub fn record(&mut self, lifetime_ns: u64) {
        let clamped = lifetime_ns.clamp(1, MAX_LIFETIME_NS);
        // Cannot fail: the value is clamped into the histogram's bounds.
        let _ = self.histogram.record(clamped);
        self.count += 1;
        self.sum_ns += u128::from(lifetime_ns);
        self.min_ns = self.min_ns.min(lifetime_ns);
        self.max_ns = self.max_ns.max(lifetime_ns);
    }

    pub fn merge(&mut self, other: &Lifetimes) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn summary(&self) -> LifetimeSummary {
        if self.count == 0 {
            return LifetimeSummary {
                count: 0,
                min: 0,
                mean: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        // Percentiles come from the histogram, clamped into the exact [min, max].
        let q = |q: f64| {
            self.histogram
                .value_at_quantile(q)
                .clamp(self.min_ns, self.max_ns)
        };
        LifetimeSummary {
            count: self.count,
            min: self.min_ns,
            mean: (self.sum_ns / u128::from(self.count)) as u64,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.max_ns,
        }
    }
}

/// The log-scaled buckets of the terminal's distribution bars: decades up to a second,
/// then the spans people think in (10 s, a minute, TIME_WAIT's minute, ten minutes, an hour).
pub const DISTRIBUTION_EDGES_NS: [u64; 11] = [
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    60_000_000_000,
    600_000_000_000,
    3_600_000_000_000,
    MAX_LIFETIME_NS,
];

impl Lifetimes {
    /// How many lifetimes fell in each bucket `[previous edge, edge)` of
    /// `DISTRIBUTION_EDGES_NS` (the first from 0; the last takes what was clamped).
    pub fn distribution(&self) -> [u64; DISTRIBUTION_EDGES_NS.len()] {
        let mut counts = [0; DISTRIBUTION_EDGES_NS.len()];
        // Each recorded value once, by the low end of its 1% bucket, so none is counted in
        // two buckets.
        for value in self.histogram.iter_recorded() {
            let ns = self.histogram.lowest_equivalent(value.value_iterated_to());
            let bucket = DISTRIBUTION_EDGES_NS
                .iter()
                .position(|&edge| ns < edge)
                .unwrap_or(DISTRIBUTION_EDGES_NS.len() - 1);
            counts[bucket] += value.count_at_value();
        }
        counts
    }
}

/// What one destination (remote address and port) saw: the "top destinations" table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    pub alloc: u64,
    pub release: u64,
    pub fail: u64,
    #[serde(skip)]
    pub lifetime_sum_ns: u128,
    pub max_lifetime_ns: u64,
}

impl DestinationStats {
    pub fn mean_lifetime_ns(&self) -> u64 {
        match self.release {
            0 => 0,
            n => u64::try_from(self.lifetime_sum_ns / u128::from(n)).unwrap_or(u64::MAX),
        }
    }
}

/// Destinations tracked one by one; beyond this they are summed as one (a crawler can reach
/// millions, and memory must stay bounded).
pub const MAX_DESTINATIONS: usize = 10_000;

/// A destination as the key of `Stats::by_destination`, hashed as one 128-bit word and the
/// port: it is looked up for every event, and `SocketAddr`'s derived hash (an enum tag, the
/// address bytes as a slice with its length) was the costliest part of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer(SocketAddr);

impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(crate::event::ip_bits(self.0.ip()));
        state.write_u16(self.0.port());
    }
}

/// What one workload (one cgroup: a container, a pod's container, a service) did.
#[derive(Debug, Clone, Default)]
pub struct WorkloadStats {
    /// Who it is, where the `workload` stage found out.
    pub workload: Option<Arc<Workload>>,
    pub alloc: u64,
    pub fail: u64,
    pub lifetimes: Lifetimes,
}

/// Workloads tracked one by one; beyond this they are summed as one. A histogram is ~50 KiB,
/// so this bounds the memory at ~13 MiB on a node that churns through containers.
pub const MAX_WORKLOADS: usize = 256;

/// Event counts. `lost` is what the kernel could not deliver (see `LostCounts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub alloc: u64,
    pub release: u64,
    pub fail: u64,
    pub lost: u64,
    /// Releases whose allocation was not seen (lost, or made before port-trace started).
    pub unmatched_release: u64,
    /// Lines for stdout (event lines, warnings, summaries) that its reader did not take in
    /// time: dropped rather than waited for. The events themselves were counted; no
    /// event was lost.
    pub output_lines_dropped: u64,
    /// Ports found free by reconciliation with the kernel's sockets: their release was lost
    /// (not in `release`, and no lifetime recorded: it is not known).
    pub reconciled: u64,
}

/// One protocol, kind and process: its lifetimes, and its allocations, released or not.
#[derive(Debug, Clone, Default)]
struct Cell {
    lifetimes: Lifetimes,
    allocs: u64,
}

/// The per protocol, per kind and per process groups, merged from the cells.
#[derive(Debug, Default)]
struct Groups {
    by_proto: BTreeMap<Proto, Lifetimes>,
    by_kind: BTreeMap<AllocKind, Lifetimes>,
    by_process: BTreeMap<Comm, Lifetimes>,
    allocs_by_process: BTreeMap<Comm, u64>,
}

impl Groups {
    fn merge(cells: &HashMap<(Proto, AllocKind, Comm), Cell>) -> Self {
        let mut groups = Groups::default();
        for ((proto, kind, comm), cell) in cells {
            if cell.allocs > 0 {
                *groups.allocs_by_process.entry(*comm).or_default() += cell.allocs;
            }
            if cell.lifetimes.count == 0 {
                continue;
            }
            for group in [
                groups.by_proto.entry(*proto).or_default(),
                groups.by_kind.entry(*kind).or_default(),
                groups.by_process.entry(*comm).or_default(),
            ] {
                group.merge(&cell.lifetimes);
            }
        }
        groups
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub totals: Totals,
    pub lost: LostCounts,
    /// Failed runs of the attached programs (see `ProbeErrors`).
    pub probe_errors: ProbeErrors,
    /// Lifetimes and allocations at the finest grain the groups need: one protocol, kind and
    /// process. A release records one histogram here; per protocol, per kind and per process
    /// are merged from these when read (`by_proto` etc.), not recorded three times more.
    cells: HashMap<(Proto, AllocKind, Comm), Cell>,
    /// The groups as last merged from `cells`; emptied by every change to them.
    groups: std::cell::OnceCell<Groups>,
    /// Failed allocations per process.
    pub fails_by_process: BTreeMap<Comm, u64>,
    /// Failed allocations by errno name.
    pub fails_by_error: BTreeMap<&'static str, u64>,
    /// Per destination of connect(): up to `MAX_DESTINATIONS`, then `other_destinations`.
    by_destination: HashMap<Peer, DestinationStats>,
    pub other_destinations: DestinationStats,
    /// Per cgroup: up to `MAX_WORKLOADS`, then `other_workloads`.
    pub by_workload: HashMap<CgroupId, WorkloadStats>,
    pub other_workloads: WorkloadStats,
    /// Lifetimes since the last `take_interval`, for HdrHistogram interval logs: all, and
    /// per protocol.
    interval: BTreeMap<Option<Proto>, Histogram<u64>>,
    /// Whether anyone takes the intervals (`--hdr-log`): else they are not recorded.
    keep_intervals: bool,
}

impl Stats {
    /// `keep_intervals`: also record per-interval histograms (for `--hdr-log`).
    pub fn new(keep_intervals: bool) -> Self {
        Self {
            keep_intervals,
            ..Self::default()
        }
    }

    pub fn record(&mut self, event: &Event, outcome: Outcome) {
        self.record_destination(event, outcome);
        self.record_workload(event, outcome);
        match outcome {
            Outcome::Allocated => {
                self.totals.alloc += 1;
                self.cell(event).allocs += 1;
            }
            Outcome::Released { lifetime_ns, .. } => {
                self.totals.release += 1;
                self.cell(event).lifetimes.record(lifetime_ns);
                for group in [None, Some(event.proto)]
                    .into_iter()
                    .filter(|_| self.keep_intervals)
                {
                    let histogram = self.interval.entry(group).or_insert_with(new_histogram);
                    let _ = histogram.record(lifetime_ns.clamp(1, MAX_LIFETIME_NS));
                }
            }
            Outcome::UnmatchedRelease => {
                self.totals.release += 1;
                self.totals.unmatched_release += 1;
            }
            Outcome::Failed => {
                self.totals.fail += 1;
                *self.fails_by_process.entry(event.comm).or_default() += 1;
                *self
                    .fails_by_error
                    .entry(errno_name(event.errno))
                    .or_default() += 1;
            }
            Outcome::Reconciled => self.totals.reconciled += 1,
            // Still held; counted when its TIME_WAIT socket goes.
            Outcome::EnteredTimeWait => {}
            // The same port, still held: the findings stage counts these.
            Outcome::BoundConnected => {}
        }
    }

    /// The event's cell; the groups merged from the cells are stale from now on.
    fn cell(&mut self, event: &Event) -> &mut Cell {
        self.groups.take();
        self.cells
            .entry((event.proto, event.kind, event.comm))
            .or_default()
    }

    fn groups(&self) -> &Groups {
        self.groups.get_or_init(|| Groups::merge(&self.cells))
    }

    /// Lifetimes per protocol.
    pub fn by_proto(&self) -> &BTreeMap<Proto, Lifetimes> {
        &self.groups().by_proto
    }

    /// Lifetimes per kind of allocation.
    pub fn by_kind(&self) -> &BTreeMap<AllocKind, Lifetimes> {
        &self.groups().by_kind
    }

    /// Lifetimes per process.
    pub fn by_process(&self) -> &BTreeMap<Comm, Lifetimes> {
        &self.groups().by_process
    }

    /// Allocations per process, released or not.
    pub fn allocs_by_process(&self) -> &BTreeMap<Comm, u64> {
        &self.groups().allocs_by_process
    }

    /// Counts the event against its workload.
    fn record_workload(&mut self, event: &Event, outcome: Outcome) {
        if !matches!(
            outcome,
            Outcome::Allocated | Outcome::Released { .. } | Outcome::Failed
        ) {
            return;
        }
        let full = self.by_workload.len() >= MAX_WORKLOADS;
        let group = match self.by_workload.get_mut(&event.cgroup) {
            Some(group) => group,
            None if full => &mut self.other_workloads,
            None => self
                .by_workload
                .entry(event.cgroup)
                .or_insert_with(|| WorkloadStats {
                    workload: event.workload.clone(),
                    ..WorkloadStats::default()
                }),
        };
        // A cgroup first seen before it was named gets its name from a later event.
        if group.workload.is_none() && event.workload.is_some() {
            group.workload = event.workload.clone();
        }
        match outcome {
            Outcome::Allocated => group.alloc += 1,
            Outcome::Released { lifetime_ns, .. } => group.lifetimes.record(lifetime_ns),
            Outcome::Failed => group.fail += 1,
            _ => {}
        }
    }

    /// The workloads with the most allocations and failures, most first.
    pub fn top_workloads(&self, n: usize) -> Vec<(CgroupId, &WorkloadStats)> {
        let mut all: Vec<_> = self.by_workload.iter().map(|(id, w)| (*id, w)).collect();
        all.sort_by(|a, b| {
            (b.1.alloc + b.1.fail)
                .cmp(&(a.1.alloc + a.1.fail))
                .then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(n);
        all
    }

    /// Whether any event named a workload: else there is nothing to show per workload.
    pub fn has_workloads(&self) -> bool {
        self.by_workload.values().any(|w| w.workload.is_some())
    }

    /// Counts the event against its destination, for connect()s (TCP, or UDP's).
    fn record_destination(&mut self, event: &Event, outcome: Outcome) {
        if event.rport == 0 || matches!(outcome, Outcome::EnteredTimeWait | Outcome::BoundConnected)
        {
            return;
        }
        let addr = Peer(SocketAddr::new(event.raddr, event.rport));
        let full = self.by_destination.len() >= MAX_DESTINATIONS;
        let dest = match self.by_destination.get_mut(&addr) {
            Some(dest) => dest,
            None if full => &mut self.other_destinations,
            None => self.by_destination.entry(addr).or_default(),
        };
        match outcome {
            Outcome::Allocated => dest.alloc += 1,
            Outcome::Released { lifetime_ns, .. } => {
                dest.release += 1;
                dest.lifetime_sum_ns += u128::from(lifetime_ns);
                dest.max_lifetime_ns = dest.max_lifetime_ns.max(lifetime_ns);
            }
            Outcome::UnmatchedRelease => dest.release += 1,
            Outcome::Failed => dest.fail += 1,
            // No lifetime to count in the mean.
            Outcome::EnteredTimeWait | Outcome::Reconciled | Outcome::BoundConnected => {}
        }
    }

    /// The destinations with the most allocations and failures, most first.
    pub fn top_destinations(&self, n: usize) -> Vec<(SocketAddr, DestinationStats)> {
        let mut all: Vec<_> = self.by_destination.iter().map(|(a, d)| (a.0, *d)).collect();
        all.sort_by(|a, b| {
            (b.1.alloc + b.1.fail)
                .cmp(&(a.1.alloc + a.1.fail))
                .then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(n);
        all
    }

    /// The lifetimes recorded since the last call (None: all; Some: one protocol), and a
    /// fresh start for the next interval.
    pub fn take_interval(&mut self) -> BTreeMap<Option<Proto>, Histogram<u64>> {
        std::mem::take(&mut self.interval)
    }

    /// Every lifetime, merged from the per-protocol groups when asked (summaries, reports),
    /// rather than recorded once more per event.
    pub fn all(&self) -> Lifetimes {
        let mut all = Lifetimes::default();
        for lifetimes in self.by_proto().values() {
            all.merge(lifetimes);
        }
        all
    }

    /// The kernel's counters as read now (they only grow).
    pub fn set_counters(&mut self, counters: KernelCounters) {
        self.set_lost(counters.lost);
        self.probe_errors = counters.probe_errors;
    }

    /// Lines dropped on the way to stdout so far (they only grow).
    pub fn set_output_lines_dropped(&mut self, lines: u64) {
        self.totals.output_lines_dropped = lines;
    }

    pub fn set_lost(&mut self, lost: LostCounts) {
        self.lost = lost;
        self.totals.lost = lost.total();
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    /// Stats that saw one TCP connect by `curl` allocated and released after `lifetime_ns`.
    pub fn one_connect_held_for(lifetime_ns: u64) -> (Stats, Event) {
        let mut stats = Stats::new(true);
        let event = decode_raw(&raw_connect()).expect("decodes");
        stats.record(&event, Outcome::Allocated);
        stats.record(
            &event,
            Outcome::Released {
                lifetime_ns,
                time_wait_ns: None,
            },
        );
        (stats, event)
    }

    #[test]
    fn workloads_are_counted_bounded_and_named_when_known() {
        use crate::event::workload::fixtures::in_container;
        let mut stats = Stats::new(false);
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        // First seen before it was named: the name comes with a later event.
        event.cgroup = CgroupId(5);
        stats.record(&event, Outcome::Allocated);
        in_container(&mut event, 5, "web");
        stats.record(
            &event,
            Outcome::Released {
                lifetime_ns: 9,
                time_wait_ns: None,
            },
        );
        stats.record(&event, Outcome::Failed);
        let web = &stats.by_workload[&CgroupId(5)];
        assert_eq!(
            (web.alloc, web.fail, web.lifetimes.summary().count),
            (1, 1, 1)
        );
        assert_eq!(
            web.workload.as_ref().map(|w| w.container_label()),
            Some("web")
        );
        assert!(stats.has_workloads());
        for cgroup in 100..100 + MAX_WORKLOADS as u64 + 10 {
            in_container(&mut event, cgroup, "many");
            stats.record(&event, Outcome::Allocated);
        }
        assert_eq!(stats.by_workload.len(), MAX_WORKLOADS);
        assert_eq!(stats.other_workloads.alloc, 11);
        assert_eq!(stats.top_workloads(1)[0].0, CgroupId(5));
    }

    #[test]
    fn summary_of_known_values() {
        let mut lifetimes = Lifetimes::default();
        for ms in 1..=100u64 {
            lifetimes.record(ms * 1_000_000);
        }
        let s = lifetimes.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.min, 1_000_000);
        assert_eq!(s.max, 100_000_000);
        assert_eq!(s.mean, 50_500_000);
        // Two significant digits: within 1% of the true percentile.
        assert!((49_500_000..=50_500_000).contains(&s.p50), "p50 {}", s.p50);
        assert!((89_100_000..=90_900_000).contains(&s.p90), "p90 {}", s.p90);
        assert!(s.p99 >= s.p90 && s.p999 <= s.max);
    }

    #[test]
    fn all_merges_the_protocols() {
        let (mut stats, event) = one_connect_held_for(1_000);
        let mut udp = event.clone();
        udp.proto = Proto::Udp;
        stats.record(
            &udp,
            Outcome::Released {
                lifetime_ns: 9_000,
                time_wait_ns: None,
            },
        );
        let all = stats.all().summary();
        assert_eq!(
            (all.count, all.min, all.max, all.mean),
            (2, 1_000, 9_000, 5_000)
        );
        assert_eq!(stats.by_proto()[&Proto::Udp].summary().count, 1);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Lifetimes::default().summary().count, 0);
        assert_eq!(Lifetimes::default().summary().max, 0);
    }

    #[test]
    fn huge_lifetimes_are_clamped_not_lost() {
        let mut lifetimes = Lifetimes::default();
        lifetimes.record(u64::MAX / 2);
        lifetimes.record(0);
        let s = lifetimes.summary();
        assert_eq!((s.count, s.min, s.max), (2, 0, u64::MAX / 2));
    }

    #[test]
    fn intervals_start_afresh() {
        let (mut stats, event) = one_connect_held_for(1_000);
        let first = stats.take_interval();
        assert_eq!(first[&None].len(), 1);
        assert_eq!(first[&Some(Proto::Tcp)].len(), 1);
        assert!(stats.take_interval().is_empty());
        stats.record(
            &event,
            Outcome::Released {
                lifetime_ns: 5,
                time_wait_ns: None,
            },
        );
        assert_eq!(stats.take_interval()[&None].max(), 5);
        // The totals keep everything.
        assert_eq!(stats.all().summary().count, 2);
    }

    #[test]
    fn distribution_buckets_by_decade() {
        let mut lifetimes = Lifetimes::default();
        for ns in [5_000, 50_000, 50_000, 2_000_000, 90_000_000_000, u64::MAX] {
            lifetimes.record(ns);
        }
        let counts = lifetimes.distribution();
        assert_eq!(counts[0], 1, "<10us: {counts:?}");
        assert_eq!(counts[1], 2, "10-100us: {counts:?}");
        assert_eq!(counts[3], 1, "1-10ms: {counts:?}");
        assert_eq!(counts[8], 1, "1-10m: {counts:?}");
        assert_eq!(counts[10], 1, "clamped to the top: {counts:?}");
        assert_eq!(counts.iter().sum::<u64>(), 6);
    }

    #[test]
    fn destinations_are_counted_and_bounded() {
        let (mut stats, mut event) = one_connect_held_for(4_000);
        let first = SocketAddr::new(event.raddr, event.rport);
        assert_eq!(
            stats.by_destination[&Peer(first)],
            DestinationStats {
                alloc: 1,
                release: 1,
                fail: 0,
                lifetime_sum_ns: 4_000,
                max_lifetime_ns: 4_000
            }
        );
        stats.record(&event, Outcome::Failed);
        for port in 1..=MAX_DESTINATIONS as u16 + 10 {
            event.rport = port;
            stats.record(&event, Outcome::Allocated);
        }
        assert_eq!(stats.by_destination.len(), MAX_DESTINATIONS);
        // 10 010 ports, one of them 443 (seen first): 9 999 more fit, 10 overflow.
        assert_eq!(stats.other_destinations.alloc, 10);
        let top = stats.top_destinations(1);
        assert_eq!(top[0].0, first, "most allocations and failures first");
        assert_eq!(top[0].1.fail, 1);
    }

    #[test]
    fn groups_by_proto_kind_and_process() {
        let (mut stats, event) = one_connect_held_for(10);
        let mut failed = event.clone();
        failed.errno = 99;
        stats.record(&failed, Outcome::Failed);
        assert_eq!(stats.fails_by_error["EADDRNOTAVAIL"], 1);
        stats.record(&event, Outcome::UnmatchedRelease);
        assert_eq!(stats.totals.alloc, 1);
        assert_eq!(stats.totals.release, 2);
        assert_eq!(stats.totals.unmatched_release, 1);
        assert_eq!(stats.by_proto()[&Proto::Tcp].summary().count, 1);
        assert_eq!(stats.by_kind()[&AllocKind::Connect].summary().count, 1);
        assert_eq!(stats.by_process()[&Comm::from("curl")].summary().max, 10);
        // The groups are merged from the cells when read, and follow what comes after.
        let mut udp = event.clone();
        udp.proto = Proto::Udp;
        udp.kind = AllocKind::Sendmsg;
        stats.record(&udp, Outcome::Allocated);
        stats.record(
            &udp,
            Outcome::Released {
                lifetime_ns: 30,
                time_wait_ns: None,
            },
        );
        assert_eq!(stats.by_proto()[&Proto::Udp].summary().count, 1);
        assert_eq!(stats.by_kind()[&AllocKind::Sendmsg].summary().max, 30);
        let curl = &stats.by_process()[&Comm::from("curl")];
        assert_eq!((curl.summary().count, curl.summary().max), (2, 30));
        assert_eq!(stats.allocs_by_process()[&Comm::from("curl")], 2);
        assert_eq!(stats.all().summary().count, 2);
        stats.set_lost(LostCounts {
            ring_buffer_full: 2,
            socket_table_full: 3,
            failure_ring_full: 1,
            program_skipped: 4,
        });
        assert_eq!(stats.totals.lost, 10);
    }
}
