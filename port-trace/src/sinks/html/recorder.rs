//! What the page needs over time and the stats do not keep: per-interval counts by protocol
//! and kind, held ports, the fullest scopes' occupancy and where allocations failed, in
//! bounded series (`series`). Per event it is a few array increments, no allocation and no
//! lookup beyond a scan of `TRACKED` slots for a failure; the rest happens once an interval.

use crate::{
    event::{AllocKind, Event, Proto},
    exhaustion::{Exhaustion, scope::ScopeKey, warning::Reason, warning::Warning},
    stats::Lifetimes,
    track::Outcome,
};

use super::series::{Merge, Series};

/// Scopes followed over time (the page plots the fullest of them).
pub const TRACKED: usize = 6;
pub const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
pub const KINDS: [AllocKind; 4] = [
    AllocKind::Connect,
    AllocKind::Bind,
    AllocKind::Listen,
    AllocKind::Sendmsg,
];

fn proto_index(proto: Proto) -> usize {
    match proto {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

fn kind_index(kind: AllocKind) -> usize {
    match kind {
        AllocKind::Connect => 0,
        AllocKind::Bind => 1,
        AllocKind::Listen => 2,
        AllocKind::Sendmsg => 3,
    }
}

/// Counts by protocol and kind.
pub type ByProtoKind = [[u64; KINDS.len()]; PROTOS.len()];

/// One scope's occupancy in one point (as at its end; the highest of the intervals it
/// spans), and the failures in it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScopeSample {
    pub used: u32,
    pub capacity: u32,
    pub fails: u32,
    /// The most ports in use when one of those failures happened.
    pub fail_used: u32,
    /// Whether the scope was looked at in this point (a slot taken later has no past).
    pub seen: bool,
}

/// One interval (or several, merged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub alloc: ByProtoKind,
    pub release: ByProtoKind,
    pub fail: ByProtoKind,
    /// Ports held (peak), of which in TIME_WAIT.
    pub held: u64,
    pub held_time_wait: u64,
    /// By slot of `Recorder::slots`.
    pub scopes: [ScopeSample; TRACKED],
}

impl Merge for Sample {
    fn merge(&mut self, later: &Self) {
        for (mine, theirs) in [
            (&mut self.alloc, &later.alloc),
            (&mut self.release, &later.release),
            (&mut self.fail, &later.fail),
        ] {
            for (a, b) in mine.iter_mut().flatten().zip(theirs.iter().flatten()) {
                *a += b;
            }
        }
        self.held = self.held.max(later.held);
        self.held_time_wait = self.held_time_wait.max(later.held_time_wait);
        for (a, b) in self.scopes.iter_mut().zip(&later.scopes) {
            a.used = a.used.max(b.used);
            a.capacity = a.capacity.max(b.capacity);
            a.fails += b.fails;
            a.fail_used = a.fail_used.max(b.fail_used);
            a.seen |= b.seen;
        }
    }
}

/// A scope followed in a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    pub key: ScopeKey,
    /// The fullest it was, as a share of its capacity.
    pub peak: f64,
    pub fails: u64,
}

impl Slot {
    /// Which to keep when a slot is wanted: failures first, then the fuller.
    fn rank(&self) -> (bool, f64) {
        (self.fails > 0, self.peak)
    }
}

#[derive(Debug, Default)]
pub struct Recorder {
    /// Since the last tick.
    pending: Sample,
    pub series: Series<Sample>,
    pub slots: [Option<Slot>; TRACKED],
    /// Released lifetimes that went through TIME_WAIT: a histogram like the stats' own, so
    /// its distribution buckets each lifetime exactly as theirs does.
    pub time_wait: Lifetimes,
    /// The end of the last sample (ns since tracing started).
    last_ns: u64,
}

impl Recorder {
    /// One event the report filters let through (O(1), no allocation).
    pub fn event(&mut self, event: &Event, outcome: Outcome) {
        let (p, k) = (proto_index(event.proto), kind_index(event.kind));
        match outcome {
            Outcome::Allocated => self.pending.alloc[p][k] += 1,
            Outcome::Released {
                lifetime_ns,
                time_wait_ns,
            } => {
                self.pending.release[p][k] += 1;
                if time_wait_ns.is_some() {
                    self.time_wait.record(lifetime_ns);
                }
            }
            Outcome::Failed => self.pending.fail[p][k] += 1,
            _ => {}
        }
    }

    /// Failures are marked on the scope they happened in (whoever's they were: the range is
    /// shared).
    pub fn warnings(&mut self, warnings: &[Warning]) {
        for warning in warnings.iter().filter(|w| w.reason == Reason::Failure) {
            let ratio = warning.usage.ratio();
            if let Some(i) = self.slot(warning.scope, ratio, true) {
                let sample = &mut self.pending.scopes[i];
                sample.fails += 1;
                sample.fail_used = sample.fail_used.max(warning.usage.used);
                if let Some(slot) = self.slots[i].as_mut() {
                    slot.fails += 1;
                }
            }
        }
    }

    /// The slot following `key`: its own, a free one, or the least important one if `key`
    /// matters more (that slot's past is cleared: it was another scope's).
    fn slot(&mut self, key: ScopeKey, ratio: f64, failing: bool) -> Option<usize> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key))
        {
            if let Some(slot) = self.slots[i].as_mut() {
                slot.peak = slot.peak.max(ratio);
            }
            return Some(i);
        }
        let new = Slot {
            key,
            peak: ratio,
            fails: 0,
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                let (i, least) = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i, s.as_ref()?.rank())))
                    .min_by(|a, b| a.1.0.cmp(&b.1.0).then(a.1.1.total_cmp(&b.1.1)))?;
                if (failing, ratio) <= least {
                    return None;
                }
                self.series
                    .for_each_value(|s| s.scopes[i] = ScopeSample::default());
                self.pending.scopes[i] = ScopeSample::default();
                i
            }
        };
        self.slots[i] = Some(new);
        Some(i)
    }

    /// Once an interval: the interval's counts and the state now become one sample.
    pub fn tick(&mut self, exhaustion: &Exhaustion, elapsed_ns: u64, held: (usize, usize)) {
        // The finish right after a tick: nothing new to say.
        if elapsed_ns <= self.last_ns
            && !self.series.is_empty()
            && self.pending == Sample::default()
        {
            return;
        }
        for (key, usage, _) in exhaustion.fullest(TRACKED) {
            self.slot(key, usage.ratio(), false);
        }
        let mut sample = std::mem::take(&mut self.pending);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            let usage = exhaustion.usage(&slot.key);
            slot.peak = slot.peak.max(usage.ratio());
            let failed = sample.scopes[i];
            sample.scopes[i] = ScopeSample {
                // As at the interval's end, or as at a failure in it if that was fuller.
                used: usage.used.max(failed.fail_used),
                capacity: usage.capacity,
                seen: true,
                ..failed
            };
        }
        sample.held = held.0 as u64;
        sample.held_time_wait = held.1 as u64;
        let start = self.last_ns.min(elapsed_ns);
        self.series.push(start, elapsed_ns, sample);
        self.last_ns = elapsed_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{decode_raw, tests::raw_connect},
        exhaustion::{
            level::{Level, Thresholds},
            range::PortRange,
            scope::{Scope, Usage},
        },
    };

    fn exhaustion() -> Exhaustion {
        Exhaustion::with_range_reader(
            Thresholds {
                warn: 0.8,
                critical: 0.95,
            },
            |_| PortRange::parse("40000 40009", ""),
        )
    }

    fn connect(cookie: u64, port: u16) -> Event {
        let mut raw = raw_connect();
        raw.cookie = cookie;
        raw.lport = port;
        decode_raw(&raw).expect("decodes")
    }

    fn key(netns: u32) -> ScopeKey {
        ScopeKey {
            netns,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        }
    }

    fn failure(netns: u32, used: u32) -> Warning {
        Warning {
            level: Level::Critical,
            reason: Reason::Failure,
            scope: key(netns),
            usage: Usage { used, capacity: 10 },
            forecast_s: None,
            top: Vec::new(),
            owner: None,
        }
    }

    #[test]
    fn counts_by_protocol_and_kind_and_time_wait_by_bucket() {
        let mut r = Recorder::default();
        let e = connect(1, 40000);
        r.event(&e, Outcome::Allocated);
        r.event(&e, Outcome::Allocated);
        r.event(&e, Outcome::Failed);
        r.event(
            &e,
            Outcome::Released {
                lifetime_ns: 61_000_000_000,
                time_wait_ns: Some(60_000_000_000),
            },
        );
        r.event(
            &e,
            Outcome::Released {
                lifetime_ns: 5_000,
                time_wait_ns: None,
            },
        );
        r.tick(&exhaustion(), 10, (1, 0));
        let p = r.series.points().next().expect("a point");
        assert_eq!(p.value.alloc[0][0], 2, "tcp connect");
        assert_eq!(p.value.fail[0][0], 1);
        assert_eq!(p.value.release[0][0], 2);
        let time_wait = r.time_wait.distribution();
        assert_eq!(time_wait[8], 1, "1-10 min, past TIME_WAIT's minute");
        assert_eq!(time_wait.iter().sum::<u64>(), 1);
        assert_eq!((p.start_ns, p.end_ns, p.value.held), (0, 10, 1));
    }

    #[test]
    fn time_wait_lifetimes_fall_in_the_buckets_the_stats_put_them_in() {
        // Just past TIME_WAIT's minute and other edges: the histogram's 1% steps may put a
        // lifetime a bucket below its exact one; the page's two counts must agree.
        let lifetimes = [
            60_000_000_000,
            60_100_000_000,
            60_500_000_000,
            1_000_000_001,
            10_050_000_000,
            600_100_000_000,
        ];
        let (mut r, mut stats) = (Recorder::default(), Lifetimes::default());
        for lifetime_ns in lifetimes {
            let released = Outcome::Released {
                lifetime_ns,
                time_wait_ns: Some(60_000_000_000),
            };
            r.event(&connect(1, 40000), released);
            stats.record(lifetime_ns);
        }
        assert_eq!(r.time_wait.distribution(), stats.distribution());
    }

    #[test]
    fn a_failure_is_marked_at_the_occupancy_it_happened_at_not_the_intervals_end() {
        let mut r = Recorder::default();
        let mut ex = exhaustion();
        for i in 0..3u16 {
            ex.observe(&connect(u64::from(i), 40000 + i), Outcome::Allocated);
        }
        let netns = connect(0, 40000).netns;
        // The range was full when the allocation failed; by the tick most ports are free.
        r.warnings(&[failure(netns, 10)]);
        r.tick(&ex, 10, (3, 0));
        let slot = r
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key(netns)))
            .expect("the namespace is followed");
        let s = r.series.points().next().expect("a point").value.scopes[slot];
        assert_eq!((s.fail_used, s.used, s.fails), (10, 10, 1));
        r.tick(&ex, 20, (3, 0));
        let later = r
            .series
            .points()
            .nth(1)
            .expect("a second point")
            .value
            .scopes[slot];
        assert_eq!((later.fail_used, later.used, later.fails), (0, 3, 0));
    }

    #[test]
    fn the_fullest_scopes_are_followed_and_failures_marked_on_theirs() {
        let mut r = Recorder::default();
        let mut ex = exhaustion();
        for i in 0..8u16 {
            ex.observe(&connect(u64::from(i), 40000 + i), Outcome::Allocated);
        }
        let netns = connect(0, 40000).netns;
        r.warnings(&[failure(netns, 8)]);
        r.tick(&ex, 10, (8, 0));
        let slot = r
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key(netns)))
            .expect("the namespace is followed");
        let p = r.series.points().next().expect("a point");
        let s = p.value.scopes[slot];
        assert_eq!((s.used, s.capacity, s.fails, s.seen), (8, 10, 1, true));
        assert_eq!(r.slots[slot].map(|s| s.fails), Some(1));
    }

    #[test]
    fn a_failing_scope_takes_the_slot_of_a_quiet_one_and_not_its_past() {
        let mut r = Recorder::default();
        for netns in 0..TRACKED as u32 {
            r.slot(key(netns), 0.1 + f64::from(netns) / 100.0, false);
        }
        r.tick(&exhaustion(), 10, (0, 0));
        // Full: a quiet, emptier scope gets no slot; a failing one takes the emptiest's.
        assert_eq!(r.slot(key(100), 0.05, false), None);
        r.warnings(&[failure(100, 1)]);
        let slot = r
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.key == key(100)))
            .expect("followed");
        assert_eq!(slot, 0, "the emptiest slot (10%)");
        let past = r.series.points().next().expect("a point").value.scopes[slot];
        assert_eq!(past, ScopeSample::default(), "its past was another scope's");
    }
}
