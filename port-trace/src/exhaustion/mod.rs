//! Exhaustion watch: keeps the occupancy model current from matched events, and turns what
//! it sees into warnings (a scope crossing a line, or an allocation failing) with who holds
//! the ports and how long until the scope is full.
//!
//! - `range`: a namespace's ephemeral range, read from its sysctls.
//! - `scope`: what an allocation draws from (namespace or destination), usage, holders.
//! - `occupancy`: the counting model, the way the kernel counts.
//! - `level`: ok / warn / critical per scope, with hysteresis.
//! - `forecast`: time to exhaustion by Little's law.
//! - `warning`: what this stage hands the sinks.
//! - `workloads`: who the holders are, and who owns each namespace.

pub mod forecast;
pub mod level;
pub mod occupancy;
mod port_counts;
pub mod range;
pub mod scope;
pub mod warning;
pub mod workloads;

use std::sync::Arc;

use foldhash::HashMap;

use self::{
    level::{Level, Levels, Thresholds},
    occupancy::Occupancy,
    range::PortRange,
    scope::{ScopeKey, Usage},
    warning::{Reason, Top, Warning},
    workloads::Workloads,
};
use crate::{
    event::{Event, workload::Workload},
    track::{HeldSockets, Outcome},
};

/// How many holders a warning names.
const TOP: usize = 5;

/// How long a scope's named holders serve the warnings that follow (see `name_holders`).
const NAMED_FOR_NS: u64 = 1_000_000_000;

pub struct Exhaustion {
    occupancy: Occupancy,
    levels: Levels,
    workloads: Workloads,
    /// Where a namespace's range comes from: the running system, a capture's (replay), or
    /// a fixed one in tests.
    read_range: RangeReader,
    /// Ranges set since `take_new_ranges` last looked: first seen, or changed.
    new_ranges: Vec<(u32, PortRange)>,
    /// Each scope's holders as last named for a warning, and when (`name_holders`); emptied
    /// at every refresh.
    named: HashMap<ScopeKey, (u64, Vec<Top>)>,
}

/// Reads namespace `inode`'s range; None when it cannot be read.
pub type RangeReader = Box<dyn Fn(u32) -> Option<PortRange> + Send + Sync>;

impl Exhaustion {
    pub fn new(thresholds: Thresholds) -> Self {
        Self::with_range_reader(thresholds, PortRange::of_netns)
    }

    /// With namespace ranges from `read_range` instead of the running system (tests, and
    /// replay from a capture).
    pub fn with_range_reader(
        thresholds: Thresholds,
        read_range: impl Fn(u32) -> Option<PortRange> + Send + Sync + 'static,
    ) -> Self {
        Self {
            occupancy: Occupancy::default(),
            levels: Levels::new(thresholds),
            workloads: Workloads::default(),
            read_range: Box::new(read_range),
            new_ranges: Vec::new(),
            named: HashMap::default(),
        }
    }

    /// Tells which namespace is the host's: shared by host-network containers, it is owned
    /// by none of them.
    pub fn with_host_netns(mut self, host_netns: Option<u32>) -> Self {
        self.workloads = Workloads::new(host_netns);
        self
    }

    /// The pod or container that alone allocates in a namespace, to name it by.
    pub fn owner(&self, netns: u32) -> Option<Arc<Workload>> {
        self.workloads.owner(netns)
    }

    /// The process holding the most ports in a scope (walks the held sockets: for a finding
    /// once an interval, not per event).
    pub fn top_holder(&self, key: &ScopeKey, held: &dyn HeldSockets) -> Option<Top> {
        self.top_holders(key, 1, held).into_iter().next()
    }

    /// The `n` processes holding the most ports in a scope, named (walks the held sockets:
    /// once an interval, or for a warning; not per event).
    pub fn top_holders(&self, key: &ScopeKey, n: usize, held: &dyn HeldSockets) -> Vec<Top> {
        self.occupancy
            .top_holders(key, n, held)
            .into_iter()
            .map(|(holder, ports)| {
                let (cgroup, workload) = self.workloads.of_pid(holder.pid);
                Top {
                    holder,
                    ports,
                    cgroup,
                    workload,
                }
            })
            .collect()
    }

    /// Seconds until a scope is full at the current pace, or None if it is not filling.
    pub fn forecast_s(&self, key: &ScopeKey, now_ns: u64) -> Option<f64> {
        self.seconds_left(key, self.occupancy.usage(key), now_ns)
    }

    fn seconds_left(&self, key: &ScopeKey, usage: Usage, now_ns: u64) -> Option<f64> {
        self.occupancy.pace(key)?.seconds_left(usage, now_ns)
    }

    /// Names who holds the most ports in each warning's scope, as of `now_ns`. A step of
    /// its own, after `observe` or `refresh`: it walks every held socket, and is needed only
    /// when there is a warning. A failure in a scope named less than `NAMED_FOR_NS` ago
    /// keeps those names: when a range has run out every failed allocation raises a
    /// warning, and a walk each would put the daemon behind exactly then. (A line crossed
    /// is rare, and named afresh.)
    pub fn name_holders(&mut self, warnings: &mut [Warning], held: &dyn HeldSockets, now_ns: u64) {
        for warning in warnings {
            let fresh = self
                .named
                .get(&warning.scope)
                .filter(|(at_ns, _)| now_ns.saturating_sub(*at_ns) < NAMED_FOR_NS)
                .filter(|_| warning.reason == Reason::Failure);
            warning.top = match fresh {
                Some((_, top)) => top.clone(),
                None => {
                    let top = self.top_holders(&warning.scope, TOP, held);
                    self.named.insert(warning.scope, (now_ns, top.clone()));
                    top
                }
            };
        }
    }

    /// A warning without its holders (`name_holders` adds them).
    fn warning(&self, key: &ScopeKey, level: Level, reason: Reason, now_ns: u64) -> Warning {
        let usage = self.occupancy.usage(key);
        Warning {
            level,
            reason,
            scope: *key,
            usage,
            forecast_s: self.seconds_left(key, usage, now_ns),
            top: Vec::new(),
            owner: self.workloads.owner(key.netns),
        }
    }

    /// How full a scope is now.
    pub fn usage(&self, key: &ScopeKey) -> Usage {
        self.occupancy.usage(key)
    }

    /// Every TCP destination scope with ports held, and its usage of the half of the range
    /// connect() tries first.
    pub fn connect_halves(&self) -> Vec<(ScopeKey, Usage)> {
        self.occupancy.connect_halves()
    }

    /// Every namespace seen and its range as last read.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, &PortRange)> + '_ {
        self.occupancy
            .namespaces()
            .filter_map(|netns| Some((netns, self.occupancy.range(netns)?)))
    }

    /// Sets a namespace's range as if read (tests of later stages).
    #[cfg(test)]
    pub fn set_range_for_tests(&mut self, netns: u32, range: PortRange) {
        self.occupancy.set_range(netns, range);
    }

    /// Namespace `netns`'s range: as last read if seen, else read now (None if unreadable).
    pub fn range_of(&self, netns: u32) -> Option<PortRange> {
        self.occupancy
            .range(netns)
            .cloned()
            .or_else(|| (self.read_range)(netns))
    }

    /// The `n` fullest scopes with something held, and their levels.
    pub fn fullest(&self, n: usize) -> Vec<(ScopeKey, Usage, Level)> {
        self.occupancy
            .fullest(n)
            .into_iter()
            .map(|(key, usage)| (key, usage, self.levels.level(&key)))
            .collect()
    }

    /// A namespace seen for the first time gets its range read. One that cannot be read
    /// (entering it needs CAP_SYS_ADMIN and, for /proc, CAP_SYS_PTRACE) is modelled with
    /// Linux's default range until a refresh reads it, and the log says so: a container's
    /// range often differs from the host's, so its warnings may be off until then.
    fn know(&mut self, netns: u32) {
        if !self.occupancy.has_namespace(netns) {
            let range = (self.read_range)(netns).unwrap_or_else(|| {
                let assumed = PortRange::default();
                tracing::warn!(
                    "could not read the ephemeral port range of netns {netns}: assuming \
                     Linux's default {}-{} there until it can be read",
                    assumed.low,
                    assumed.high
                );
                assumed
            });
            self.new_ranges.push((netns, range.clone()));
            self.occupancy.set_range(netns, range);
        }
    }

    /// Whether a range was set since `take_new_ranges` last looked.
    pub fn has_new_ranges(&self) -> bool {
        !self.new_ranges.is_empty()
    }

    /// The ranges set since the last call (a namespace first seen, or its range changed),
    /// for a capture to record.
    pub fn take_new_ranges(&mut self) -> std::vec::Drain<'_, (u32, PortRange)> {
        self.new_ranges.drain(..)
    }

    /// A socket that held its port before tracing started (the snapshot).
    pub fn hold_existing(&mut self, event: &Event) {
        self.know(event.netns);
        self.workloads.learn(event);
        self.occupancy.hold(event);
    }

    /// A socket from the snapshot is gone.
    pub fn free_existing(&mut self, event: &Event) {
        self.occupancy.free(event, None);
    }

    /// Takes one matched event; returns the warnings it raises.
    pub fn observe(&mut self, event: &Event, outcome: Outcome) -> Vec<Warning> {
        let mut raised = Vec::new();
        match outcome {
            Outcome::Allocated => {
                self.know(event.netns);
                self.workloads.learn(event);
                let usages = self.occupancy.allocate(event);
                for (key, usage) in Occupancy::scopes_of(event).zip(usages) {
                    if let Some(level) = self.levels.update(key, usage) {
                        raised.push(self.warning(&key, level, Reason::Threshold, event.ts_ns));
                    }
                }
            }
            Outcome::Released { lifetime_ns, .. } => {
                let usages = self.occupancy.free(event, Some(lifetime_ns));
                for (key, usage) in Occupancy::scopes_of(event).zip(usages) {
                    self.levels.update(key, usage);
                }
            }
            // Free, found by reconciliation: how long it was held is not known, so the
            // forecast learns nothing from it.
            Outcome::Reconciled => {
                let usages = self.occupancy.free(event, None);
                for (key, usage) in Occupancy::scopes_of(event).zip(usages) {
                    self.levels.update(key, usage);
                }
            }
            Outcome::Failed => {
                self.know(event.netns);
                // The scope the failed request drew from: its destination for a TCP
                // connect, else its namespace.
                if let Some(key) = Occupancy::scopes_of(event).last() {
                    self.levels.failed(key);
                    raised.push(self.warning(&key, Level::Critical, Reason::Failure, event.ts_ns));
                }
            }
            Outcome::EnteredTimeWait | Outcome::UnmatchedRelease | Outcome::BoundConnected => {}
        }
        raised
    }

    /// Re-reads every namespace's range (it can change at run time) and re-checks the
    /// scopes in use against it.
    pub fn refresh(&mut self, now_ns: u64) -> Vec<Warning> {
        self.named.clear();
        let namespaces: Vec<u32> = self.occupancy.namespaces().collect();
        for netns in namespaces {
            match (self.read_range)(netns) {
                Some(range) if self.occupancy.range(netns) != Some(&range) => {
                    self.new_ranges.push((netns, range.clone()));
                    self.occupancy.set_range(netns, range);
                }
                Some(_) => {}
                // No process left in it (a pod or container gone), nothing held there:
                // forgotten, with its levels, pace and owner, so short-lived namespaces do
                // not pile up (nor their range lint). Should it come back, its next event
                // brings it back and its range is read again.
                None if self.occupancy.forget_if_empty(netns) => {
                    self.levels.forget(netns);
                    self.workloads.forget(netns);
                }
                None => {}
            }
        }
        let mut raised = Vec::new();
        for (key, usage) in self.occupancy.fullest(usize::MAX) {
            if let Some(level) = self.levels.update(key, usage) {
                raised.push(self.warning(&key, level, Reason::Threshold, now_ns));
            }
        }
        raised
    }
}

#[cfg(test)]
mod tests {
    use port_trace_common::{EVENT_FAIL, EVENT_RELEASE};

    use super::{scope::ScopeKind, *};
    use crate::event::{decode_raw, tests::raw_connect};

    fn tiny(_: u32) -> Option<PortRange> {
        PortRange::parse("40000 40009", "")
    }

    fn exhaustion() -> Exhaustion {
        let mut e = Exhaustion::new(Thresholds {
            warn: 0.8,
            critical: 0.95,
        });
        e.read_range = Box::new(tiny);
        e
    }

    fn connect(port: u16, ts_ns: u64) -> Event {
        let mut raw = raw_connect();
        raw.lport = port;
        raw.ts_ns = ts_ns;
        decode_raw(&raw).expect("decodes")
    }

    /// A namespace with no process left and nothing held is forgotten at the re-check; one
    /// that still holds a port is kept.
    #[test]
    fn a_gone_namespace_with_nothing_held_is_forgotten() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let alive = Arc::new(AtomicBool::new(true));
        let reads = alive.clone();
        let mut e = Exhaustion::with_range_reader(
            Thresholds {
                warn: 0.8,
                critical: 0.95,
            },
            move |_| {
                reads
                    .load(Ordering::Relaxed)
                    .then(|| PortRange::parse("40000 40009", ""))
                    .flatten()
            },
        );
        let held = connect(40001, 1);
        e.observe(&held, Outcome::Allocated);
        alive.store(false, Ordering::Relaxed);
        e.refresh(2);
        assert!(e.range_of(held.netns).is_some(), "a port is held there");
        let mut released = held.clone();
        released.event = crate::event::EventType::Release;
        e.observe(
            &released,
            Outcome::Released {
                lifetime_ns: 1,
                time_wait_ns: None,
            },
        );
        e.refresh(3);
        assert_eq!(e.ranges().count(), 0, "forgotten");
        assert!(e.range_of(held.netns).is_none());
    }

    #[test]
    fn warns_at_80_then_critical_then_on_failure() {
        let mut e = exhaustion();
        let mut raised = Vec::new();
        let mut held = Vec::new();
        for (i, port) in (40000..40010).enumerate() {
            let event = connect(port, i as u64 * 100_000_000);
            let mut warnings = e.observe(&event, Outcome::Allocated);
            held.push(event);
            e.name_holders(&mut warnings, &held, 0);
            raised.extend(warnings.into_iter().map(|w| (port, w)));
        }
        // 8 of 10 for the destination (and the namespace): warn; 10 of 10: critical.
        let levels: Vec<_> = raised
            .iter()
            .map(|(p, w)| (*p, w.scope.kind(), w.level))
            .collect();
        assert_eq!(
            levels,
            vec![
                (40007, ScopeKind::Namespace, Level::Warn),
                (40007, ScopeKind::Destination, Level::Warn),
                (40009, ScopeKind::Namespace, Level::Critical),
                (40009, ScopeKind::Destination, Level::Critical),
            ]
        );
        let warn = &raised[1].1;
        assert_eq!((warn.usage.used, warn.usage.capacity), (8, 10));
        assert_eq!(warn.scope.destination().map(|d| d.rport), Some(443));
        assert_eq!(warn.top[0].holder.comm, "curl");
        assert_eq!(warn.top[0].ports, 8);
        // 10 allocations a second, nothing released: 2 ports left is about 2 s... at the
        // decayed rate, a little more.
        let left = warn.forecast_s.expect("filling");
        assert!((1.0..30.0).contains(&left), "{left}");

        let mut raw = raw_connect();
        raw.event = EVENT_FAIL;
        raw.errno = 99;
        let fail = decode_raw(&raw).expect("decodes");
        let w = e.observe(&fail, Outcome::Failed);
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].level, w[0].reason, w[0].scope.kind()),
            (Level::Critical, Reason::Failure, ScopeKind::Destination)
        );
        assert_eq!(w[0].usage.used, 10);
    }

    #[test]
    fn releases_lower_the_level_with_hysteresis() {
        let mut e = exhaustion();
        for port in 40000..40008 {
            e.observe(&connect(port, 0), Outcome::Allocated);
        }
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.lport = 40007;
        let release = decode_raw(&raw).expect("decodes");
        let released = Outcome::Released {
            lifetime_ns: 1,
            time_wait_ns: None,
        };
        assert!(e.observe(&release, released).is_empty());
        // 7 of 10 is under 75%: back to ok, so 8 of 10 warns again.
        let again = e.observe(&connect(40007, 1), Outcome::Allocated);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn a_port_in_time_wait_still_counts_until_released() {
        let mut e = exhaustion();
        let alloc = connect(40000, 0);
        e.observe(&alloc, Outcome::Allocated);
        let key = Occupancy::scopes_of(&alloc)
            .nth(1)
            .expect("a connect has a destination");
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.lport = 40000;
        raw.flags = port_trace_common::FLAG_TIME_WAIT;
        let closed = decode_raw(&raw).expect("decodes");
        e.observe(&closed, Outcome::EnteredTimeWait);
        assert_eq!(e.occupancy.usage(&key).used, 1, "TIME_WAIT holds the port");
        let released = Outcome::Released {
            lifetime_ns: 60_000_000_000,
            time_wait_ns: Some(60_000_000_000),
        };
        e.observe(&closed, released);
        assert_eq!(e.occupancy.usage(&key).used, 0);
    }

    #[test]
    fn a_smaller_range_raises_warnings_on_refresh() {
        let mut e = exhaustion();
        for port in 40000..40005 {
            assert!(e.observe(&connect(port, 0), Outcome::Allocated).is_empty());
        }
        fn five(_: u32) -> Option<PortRange> {
            PortRange::parse("40000 40005", "")
        }
        e.read_range = Box::new(five);
        let raised = e.refresh(0);
        assert_eq!(raised.len(), 2, "namespace and destination are 5 of 6 now");
    }
}
