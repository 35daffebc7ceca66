//! Stats: totals and allocation-lifetime histograms, overall and per protocol, kind and
//! process.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    events::{AllocKind, Event, Proto, errno_name},
    tracker::Outcome,
};

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

/// Event counts. `lost` is what the kernel could not deliver (see `LostCounts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub alloc: u64,
    pub release: u64,
    pub fail: u64,
    pub lost: u64,
    /// Releases whose allocation was not seen (lost, or made before port-trace started).
    pub unmatched_release: u64,
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
}

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.ring_buffer_full + self.socket_table_full + self.failure_ring_full
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub totals: Totals,
    pub lost: LostCounts,
    pub all: Lifetimes,
    pub by_proto: BTreeMap<Proto, Lifetimes>,
    pub by_kind: BTreeMap<AllocKind, Lifetimes>,
    pub by_process: BTreeMap<String, Lifetimes>,
    /// Allocations per process, released or not.
    pub allocs_by_process: BTreeMap<String, u64>,
    /// Failed allocations by errno name.
    pub fails_by_error: BTreeMap<&'static str, u64>,
    /// Lifetimes since the last `take_interval`, for HdrHistogram interval logs: all, and
    /// per protocol.
    interval: BTreeMap<Option<Proto>, Histogram<u64>>,
}

impl Stats {
    pub fn record(&mut self, event: &Event, outcome: Outcome) {
        match outcome {
            Outcome::Allocated => {
                self.totals.alloc += 1;
                *self
                    .allocs_by_process
                    .entry(event.comm.clone())
                    .or_default() += 1;
            }
            Outcome::Released { lifetime_ns, .. } => {
                self.totals.release += 1;
                self.all.record(lifetime_ns);
                self.by_proto
                    .entry(event.proto)
                    .or_default()
                    .record(lifetime_ns);
                self.by_kind
                    .entry(event.kind)
                    .or_default()
                    .record(lifetime_ns);
                self.by_process
                    .entry(event.comm.clone())
                    .or_default()
                    .record(lifetime_ns);
                for group in [None, Some(event.proto)] {
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
                *self
                    .fails_by_error
                    .entry(errno_name(event.errno))
                    .or_default() += 1;
            }
            // Still held; counted when its TIME_WAIT socket goes.
            Outcome::EnteredTimeWait => {}
        }
    }

    /// The lifetimes recorded since the last call (None: all; Some: one protocol), and a
    /// fresh start for the next interval.
    pub fn take_interval(&mut self) -> BTreeMap<Option<Proto>, Histogram<u64>> {
        std::mem::take(&mut self.interval)
    }

    pub fn set_lost(&mut self, lost: LostCounts) {
        self.lost = lost;
        self.totals.lost = lost.total();
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::events::{decode_raw, tests::raw_connect};

    /// Stats that saw one TCP connect by `curl` allocated and released after `lifetime_ns`.
    pub fn one_connect_held_for(lifetime_ns: u64) -> (Stats, Event) {
        let mut stats = Stats::default();
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
        assert_eq!(stats.all.summary().count, 2);
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
        assert_eq!(stats.by_proto[&Proto::Tcp].summary().count, 1);
        assert_eq!(stats.by_kind[&AllocKind::Connect].summary().count, 1);
        assert_eq!(stats.by_process["curl"].summary().max, 10);
        stats.set_lost(LostCounts {
            ring_buffer_full: 2,
            socket_table_full: 3,
            failure_ring_full: 1,
        });
        assert_eq!(stats.totals.lost, 6);
    }
}
