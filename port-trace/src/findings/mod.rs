//! Findings: why a range is filling, and what to change. Beside the exhaustion stage, which
//! says *how full*; this says *why*, with the process, the evidence in numbers and the remedy.
//!
//! Cost: per event only O(1) counter updates (`observe`: two hash-map entries at most);
//! every rule is judged once an interval (`evaluate`, from `Pipeline::tick` and at the
//! finish), from these counters, the exhaustion stage's ranges and the listeners seen, and
//! SYN_SENT counts a sock_diag look brings once an interval (`syn_sent_look`). Two are also
//! said at once (`at_once`), since the range can run out within an interval: a port bound by
//! number inside the range, and bind before connect at its third connect or a failed bind.
//!
//! Lifecycle: a finding is emitted once when it appears, again only when its evidence
//! changes materially (its severity, or its main count by a quarter or more; any change for
//! the range lint and listeners), and once more, cleared, when its cause is gone. Each rule
//! keeps a finding with looser bounds than it raises one (hysteresis), so it does not flap.
//!
//! - `rules`: the thresholds and the remedies.

mod rules;

use std::{net::IpAddr, sync::Arc};

// foldhash, not SipHash: `dests` and `conns` are touched for every allocation and release.
// Keys come from the kernel.
use foldhash::{HashMap, HashMapExt as _};

use serde::Serialize;

pub use self::rules::Thresholds;
use crate::{
    event::{
        AllocKind, Event, Proto,
        comm::Comm,
        workload::{CgroupId, Workload},
    },
    exhaustion::{
        Exhaustion,
        scope::{Destination, ScopeKey},
    },
    track::{HeldSockets, Outcome},
};

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A destination's ports are mostly in TIME_WAIT: this host closes first.
    TimeWaitChurn,
    /// A process's connections to one destination only grow.
    ConnectionLeak,
    /// A fixed port inside the ephemeral range: a connect() may take it first.
    ListenerInRange,
    /// The range's start and end have the same parity.
    RangeParity,
    /// The range starts below ip_unprivileged_port_start.
    RangeBelowUnprivileged,
    /// The namespace's range is not the host's.
    RangeDiffersFromHost,
    /// Fewer than `rules::SMALL_RANGE` ports.
    RangeSmall,
    /// A process binds to port 0 before connect(): each of its ports is held for every
    /// destination, not shared per destination.
    BindBeforeConnect,
    /// A destination has used up the half of the range connect() tries first: connects
    /// slow down before they fail.
    ParityHalfFull,
    /// Many ports held by connects to one destination not answered yet (SYN_SENT).
    SynSentPileup,
}

impl Kind {
    /// The name records and labels use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TimeWaitChurn => "time_wait_churn",
            Kind::ConnectionLeak => "connection_leak",
            Kind::ListenerInRange => "listener_in_range",
            Kind::RangeParity => "range_parity",
            Kind::RangeBelowUnprivileged => "range_below_unprivileged",
            Kind::RangeDiffersFromHost => "range_differs_from_host",
            Kind::RangeSmall => "range_small",
            Kind::BindBeforeConnect => "bind_before_connect",
            Kind::ParityHalfFull => "parity_half_full",
            Kind::SynSentPileup => "syn_sent_pileup",
        }
    }

    pub const ALL: [Kind; 10] = [
        Kind::BindBeforeConnect,
        Kind::ParityHalfFull,
        Kind::SynSentPileup,
        Kind::TimeWaitChurn,
        Kind::ConnectionLeak,
        Kind::ListenerInRange,
        Kind::RangeParity,
        Kind::RangeBelowUnprivileged,
        Kind::RangeDiffersFromHost,
        Kind::RangeSmall,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Critical => "critical",
        }
    }
}

/// Where a finding is in its life, as emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Appeared,
    Updated,
    Cleared,
}

/// Who causes it: the process (and its cgroup and workload, where known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub comm: Comm,
    pub cgroup: CgroupId,
    pub workload: Option<Arc<Workload>>,
}

impl Who {
    pub fn of(event: &Event) -> Self {
        Self {
            pid: event.pid,
            comm: event.comm,
            cgroup: event.cgroup,
            workload: event.workload.clone(),
        }
    }
}

/// The numbers behind a finding, per kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    TimeWait {
        /// Ports held to the destination now, TIME_WAIT included.
        held: u32,
        time_wait: u32,
        /// time_wait / held.
        time_wait_share: f64,
        /// Connections a second over the last interval.
        alloc_rate_per_s: f64,
        /// Mean port lifetime (TIME_WAIT included) of the releases seen.
        mean_lifetime_s: Option<f64>,
        /// Little's law: rate x mean lifetime (60 s of TIME_WAIT until a release is seen),
        /// the ports this pace holds in steady state.
        steady_state_held: Option<f64>,
        /// The namespace's range size.
        range_size: u32,
    },
    Leak {
        held: u32,
        /// Growth per second since the growth began.
        slope_per_s: f64,
        /// Since the first of the connections held now (approximately: since the process
        /// last held none to the destination).
        oldest_age_s: f64,
        allocations: u64,
        releases: u64,
    },
    Listener {
        port: u16,
        range_low: u16,
        range_high: u16,
        /// ip_local_reserved_ports as it is now.
        reserved: String,
    },
    SynSent {
        /// Sockets connecting to the destination, not answered yet (SYN_SENT), at the last
        /// look (sock_diag, once an interval).
        syn_sent: u32,
        /// Ports held to the destination now, TIME_WAIT included.
        held: u32,
        range_size: u32,
    },
    Parity {
        /// Ports of the half connect() tries first held to the destination, and how many
        /// that half has (less reserved ports and those bound exclusively).
        half_used: u32,
        half_capacity: u32,
        /// The whole destination scope.
        used: u32,
        capacity: u32,
        /// The parity of the port numbers connect() tries first (the range start's).
        preferred: &'static str,
    },
    BindConnect {
        /// connect()s from a port bind(0) chose, since the pattern was first seen.
        connects: u64,
        /// The distinct destinations they went to (counted up to `rules::DESTINATIONS_SEEN`).
        destinations: u32,
        /// Ports the process holds from bind(0) now (TCP).
        bound_held: u32,
        /// bind(0)s that failed for want of a port (EADDRINUSE) since then.
        bind_failures: u64,
        /// The namespace's range size: what every destination shares.
        range_size: u32,
    },
    Range {
        range_low: u16,
        range_high: u16,
        size: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        unprivileged_start: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_low: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_high: Option<u16>,
    },
}

impl Evidence {
    /// The count whose move by a quarter makes an update.
    fn main_count(&self) -> Option<f64> {
        match self {
            Evidence::TimeWait { time_wait, .. } => Some(f64::from(*time_wait)),
            Evidence::Leak { held, .. } => Some(f64::from(*held)),
            Evidence::BindConnect { bound_held, .. } => Some(f64::from(*bound_held)),
            Evidence::Parity { used, .. } => Some(f64::from(*used)),
            Evidence::SynSent { syn_sent, .. } => Some(f64::from(*syn_sent)),
            Evidence::Listener { .. } | Evidence::Range { .. } => None,
        }
    }
}

/// One finding, as the sinks get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub state: State,
    pub netns: u32,
    pub proto: Option<Proto>,
    /// The destination, for churn and leaks.
    pub destination: Option<Destination>,
    pub who: Option<Who>,
    pub evidence: Evidence,
    /// What to change: the socket option, sysctl or code change.
    pub remedy: String,
    /// CLOCK_MONOTONIC of this emission.
    pub ts_ns: u64,
}

/// What makes two findings the same one over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    netns: u32,
    proto: Option<Proto>,
    destination: Option<Destination>,
    pid: u32,
    port: u16,
}

impl Finding {
    fn key(&self) -> Key {
        Key {
            kind: self.kind,
            netns: self.netns,
            proto: self.proto,
            destination: self.destination,
            // Churn is the destination's, whoever holds most there; a leak and a listener are
            // a process's.
            pid: match self.kind {
                Kind::ConnectionLeak | Kind::ListenerInRange | Kind::BindBeforeConnect => {
                    self.who.as_ref().map_or(0, |w| w.pid)
                }
                _ => 0,
            },
            port: match self.evidence {
                Evidence::Listener { port, .. } => port,
                _ => 0,
            },
        }
    }

    /// Whether `self` (now) differs enough from `before` (as last emitted) to say again.
    fn moved_from(&self, before: &Finding) -> bool {
        if self.severity != before.severity {
            return true;
        }
        match (self.evidence.main_count(), before.evidence.main_count()) {
            (Some(now), Some(then)) => (now - then).abs() >= rules::MATERIAL * then.max(1.0),
            _ => self.evidence != before.evidence,
        }
    }
}

/// Per destination (TCP connect): what churn is judged on.
#[derive(Debug, Default)]
struct DestCounts {
    held: u32,
    time_wait: u32,
    /// Allocations since the last evaluation.
    allocs: u64,
    lifetime_sum_ns: u128,
    releases: u64,
    /// Allocation rate over the last interval, set at each evaluation.
    rate: f64,
}

/// Per process and destination: what a leak is judged on.
#[derive(Debug, Default)]
struct Conns {
    held: u32,
    /// Since the process last held none here.
    first_ns: u64,
    allocs: u64,
    releases: u64,
    /// At the start of the current growth, and how many evaluations it has grown.
    base_held: u32,
    base_allocs: u64,
    base_releases: u64,
    base_ns: u64,
    last_held: u32,
    /// When it was last looked at (0: not yet).
    last_ns: u64,
    growing: u32,
    flat: u32,
    who: Option<Who>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    netns: u32,
    proto: Proto,
    dest: Destination,
    pid: u32,
}

/// Per namespace and process: TCP bind(0), and connect()s from those ports (what
/// bind-before-connect is judged on).
#[derive(Debug, Default)]
struct BoundConnects {
    /// Ports held from bind(0) now.
    bound_held: u32,
    /// connect()s from them since the pattern was first seen (or last cleared).
    connects: u64,
    /// Their distinct destinations, the first `rules::DESTINATIONS_SEEN`.
    destinations: Vec<Destination>,
    /// bind(0)s that failed for want of a port, since then.
    failures: u64,
    last_connect_ns: u64,
    who: Option<Who>,
}

/// TCP sockets in SYN_SENT to one destination, as a look (sock_diag) counted them: what a
/// SYN_SENT pile-up is judged on. Counted once an interval where a destination holds many
/// ports, not per connection: no ring buffer record per state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynSent {
    pub netns: u32,
    pub destination: Destination,
    /// 0: none any more.
    pub count: u32,
}

/// A fixed port held by number (bind to port N, or a listener found at start-up).
#[derive(Debug)]
struct Fixed {
    count: u32,
    who: Who,
}

pub struct Findings {
    thresholds: Thresholds,
    /// The host's namespace, to compare ranges with.
    host_netns: Option<u32>,
    dests: HashMap<(u32, Destination), DestCounts>,
    conns: HashMap<ConnKey, Conns>,
    fixed: HashMap<(u32, Proto, u16), Fixed>,
    bound: HashMap<(u32, u32), BoundConnects>,
    /// SYN_SENT sockets per destination at the last look; none where zero.
    syn_sent: HashMap<(u32, Destination), u32>,
    /// As last emitted, until cleared.
    active: HashMap<Key, Finding>,
    last_eval_ns: Option<u64>,
}

/// Whether `outcome` is the socket's own close: a process holds a port until its socket
/// closes, and a port living on in TIME_WAIT after that is the kernel's (leaks and bind
/// before connect count what the process holds). Its later release, or one reconciliation
/// found for a TIME_WAIT port, is not a second close.
fn socket_closed(event: &Event, outcome: Outcome) -> bool {
    match outcome {
        Outcome::EnteredTimeWait
        | Outcome::Released {
            time_wait_ns: None, ..
        } => true,
        Outcome::Reconciled => !event.time_wait,
        _ => false,
    }
}

fn destination(event: &Event) -> Destination {
    Destination {
        laddr: event.laddr,
        raddr: event.raddr,
        rport: event.rport,
    }
}

impl Findings {
    /// `started_ns`: when tracing started, the first interval's start (rates over it).
    pub fn new(thresholds: Thresholds, host_netns: Option<u32>, started_ns: u64) -> Self {
        Self {
            thresholds,
            host_netns,
            dests: HashMap::new(),
            conns: HashMap::new(),
            fixed: HashMap::new(),
            bound: HashMap::new(),
            syn_sent: HashMap::new(),
            active: HashMap::new(),
            last_eval_ns: Some(started_ns),
        }
    }

    /// A socket found at start-up: a TCP socket bound with no peer is a listener (or about
    /// to be one) on a port chosen by number.
    pub fn existing(&mut self, event: &Event) {
        if event.proto == Proto::Tcp && event.kind == AllocKind::Bind && event.rport == 0 {
            self.fixed_held(event);
        }
    }

    /// A start-up socket is gone.
    pub fn existing_gone(&mut self, event: &Event) {
        if event.proto == Proto::Tcp && event.kind == AllocKind::Bind && event.rport == 0 {
            self.fixed_freed(event);
        }
    }

    fn fixed_held(&mut self, event: &Event) {
        self.fixed
            .entry((event.netns, event.proto, event.port))
            .and_modify(|f| f.count += 1)
            .or_insert_with(|| Fixed {
                count: 1,
                who: Who::of(event),
            });
    }

    fn fixed_freed(&mut self, event: &Event) {
        let key = (event.netns, event.proto, event.port);
        if let Some(fixed) = self.fixed.get_mut(&key) {
            fixed.count -= 1;
            if fixed.count == 0 {
                self.fixed.remove(&key);
            }
        }
    }

    /// One matched event: counters only.
    pub fn observe(&mut self, event: &Event, outcome: Outcome) {
        if event.explicit {
            // UDP is left out: resolvers bind random source ports of their own by number,
            // inside the range, by design.
            if event.proto == Proto::Tcp {
                match outcome {
                    Outcome::Allocated => self.fixed_held(event),
                    Outcome::Released { .. } | Outcome::Reconciled => self.fixed_freed(event),
                    _ => {}
                }
            }
            return;
        }
        if event.proto == Proto::Tcp && event.kind == AllocKind::Bind {
            self.observe_bound(event, outcome);
            return;
        }
        if !matches!(event.kind, AllocKind::Connect | AllocKind::Sendmsg) {
            return;
        }
        let dest = destination(event);
        let released_from_tw = match outcome {
            Outcome::Allocated => Some(false),
            Outcome::Released { time_wait_ns, .. } => Some(time_wait_ns.is_some()),
            Outcome::Reconciled => Some(event.time_wait),
            Outcome::EnteredTimeWait => None,
            Outcome::UnmatchedRelease | Outcome::Failed | Outcome::BoundConnected => return,
        };
        if event.proto == Proto::Tcp && event.kind == AllocKind::Connect {
            let counts = self.dests.entry((event.netns, dest)).or_default();
            match outcome {
                Outcome::Allocated => {
                    counts.held += 1;
                    counts.allocs += 1;
                }
                Outcome::EnteredTimeWait => counts.time_wait += 1,
                _ => {
                    counts.held = counts.held.saturating_sub(1);
                    if released_from_tw == Some(true) {
                        counts.time_wait = counts.time_wait.saturating_sub(1);
                    }
                    if let Outcome::Released { lifetime_ns, .. } = outcome {
                        counts.lifetime_sum_ns += u128::from(lifetime_ns);
                        counts.releases += 1;
                    }
                }
            }
            counts.time_wait = counts.time_wait.min(counts.held);
        }
        // A connection counts as held by the process until its socket closes: TIME_WAIT
        // belongs to the kernel, and a process that closes is not leaking.
        let key = ConnKey {
            netns: event.netns,
            proto: event.proto,
            dest,
            pid: event.pid,
        };
        match outcome {
            Outcome::Allocated => {
                let conns = self.conns.entry(key).or_default();
                if conns.held == 0 {
                    conns.first_ns = event.ts_ns;
                }
                conns.held += 1;
                conns.allocs += 1;
                if conns.who.is_none() {
                    conns.who = Some(Who::of(event));
                }
            }
            _ if socket_closed(event, outcome) => self.conn_closed(&key),
            _ => {}
        }
    }

    /// A TCP socket bound to port 0: held, connected, closed, or a bind() that found no port.
    fn observe_bound(&mut self, event: &Event, outcome: Outcome) {
        let key = (event.netns, event.pid);
        match outcome {
            Outcome::Allocated => self.bound.entry(key).or_default().bound_held += 1,
            Outcome::BoundConnected => {
                let b = self.bound.entry(key).or_default();
                b.connects += 1;
                b.last_connect_ns = event.ts_ns;
                let dest = destination(event);
                if b.destinations.len() < rules::DESTINATIONS_SEEN
                    && !b.destinations.contains(&dest)
                {
                    b.destinations.push(dest);
                }
                if b.who.is_none() {
                    b.who = Some(Who::of(event));
                }
            }
            _ if socket_closed(event, outcome) => {
                if let Some(b) = self.bound.get_mut(&key) {
                    b.bound_held = b.bound_held.saturating_sub(1);
                }
            }
            // The range ran out for bind(0): the pattern's own failure when the process
            // binds before connecting; else it counts against those in the namespace that do.
            Outcome::Failed => {
                let own = self.bound.get(&key).is_some_and(|b| b.connects > 0);
                for ((netns, pid), b) in &mut self.bound {
                    if *netns == event.netns && b.connects > 0 && (!own || *pid == event.pid) {
                        b.failures += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn conn_closed(&mut self, key: &ConnKey) {
        if let Some(conns) = self.conns.get_mut(key) {
            conns.held = conns.held.saturating_sub(1);
            conns.releases += 1;
        }
    }

    /// What an event just `observe`d says at once, not at the next interval: a port bound by
    /// number inside the range (a connect() may take it first), and bind before connect
    /// (seen repeatedly, or a bind() that failed for it: the range may be gone by then).
    pub fn at_once(
        &mut self,
        event: &Event,
        outcome: Outcome,
        exhaustion: &Exhaustion,
    ) -> Vec<Finding> {
        let found: Vec<Finding> = if event.explicit {
            let key = (event.netns, event.proto, event.port);
            let fixed = self
                .fixed
                .get(&key)
                .filter(|_| outcome == Outcome::Allocated);
            fixed
                .and_then(|fixed| rules::listener(key, fixed, exhaustion, event.ts_ns))
                .into_iter()
                .collect()
        } else if event.proto == Proto::Tcp && event.kind == AllocKind::Bind {
            // A connect: this process's pattern; a failure: everyone's in the namespace
            // (rare, and the range is out).
            let keys: Vec<(u32, u32)> = match outcome {
                Outcome::BoundConnected => vec![(event.netns, event.pid)],
                Outcome::Failed => self
                    .bound
                    .keys()
                    .filter(|(netns, _)| *netns == event.netns)
                    .copied()
                    .collect(),
                _ => return Vec::new(),
            };
            keys.into_iter()
                .filter_map(|key| rules::bind_connect_one(self, key, exhaustion, event.ts_ns))
                .collect()
        } else {
            return Vec::new();
        };
        found
            .into_iter()
            .filter_map(|found| self.settle_one(found))
            .collect()
    }

    /// One finding found between evaluations: emitted if new or its severity changed; a
    /// count that moved waits for the interval (per event it would be said every few).
    fn settle_one(&mut self, mut found: Finding) -> Option<Finding> {
        let id = found.key();
        match self.active.get(&id) {
            None => found.state = State::Appeared,
            Some(before) if found.severity != before.severity => found.state = State::Updated,
            Some(_) => return None,
        }
        self.active.insert(id, found.clone());
        Some(found)
    }

    /// The namespaces worth a SYN_SENT look: where some destination holds enough ports for a
    /// pile-up there to be one.
    pub fn syn_sent_namespaces(&self, exhaustion: &Exhaustion) -> Vec<u32> {
        let mut namespaces: Vec<u32> = self
            .dests
            .iter()
            .filter(|((netns, _), counts)| {
                counts.held >= rules::min_held(&self.thresholds, exhaustion, *netns) / 2
            })
            .map(|((netns, _), _)| *netns)
            .collect();
        namespaces.extend(self.syn_sent.keys().map(|(netns, _)| *netns));
        namespaces.sort_unstable();
        namespaces.dedup();
        namespaces
    }

    /// What a SYN_SENT look found (every destination with such sockets, in the namespaces
    /// looked at); returns the changes since the last look (a count of 0 for those gone),
    /// which a capture records for replay.
    pub fn syn_sent_look(&mut self, found: &[SynSent]) -> Vec<SynSent> {
        let mut now: HashMap<(u32, Destination), u32> = HashMap::new();
        for s in found.iter().filter(|s| s.count > 0) {
            *now.entry((s.netns, s.destination)).or_default() += s.count;
        }
        let mut changes: Vec<SynSent> = now
            .iter()
            .filter(|(key, count)| self.syn_sent.get(key) != Some(count))
            .map(|(&(netns, destination), &count)| SynSent {
                netns,
                destination,
                count,
            })
            .collect();
        changes.extend(
            self.syn_sent
                .keys()
                .filter(|key| !now.contains_key(key))
                .map(|&(netns, destination)| SynSent {
                    netns,
                    destination,
                    count: 0,
                }),
        );
        self.syn_sent = now;
        changes
    }

    /// Changes a look found (replay: the capture's `syn_sent` records).
    pub fn syn_sent_changed(&mut self, changes: &[SynSent]) {
        for s in changes {
            let key = (s.netns, s.destination);
            if s.count == 0 {
                self.syn_sent.remove(&key);
            } else {
                self.syn_sent.insert(key, s.count);
            }
        }
    }

    /// Judges every rule as of `now_ns`; returns what appeared, changed or cleared.
    /// `held`: the sockets holding ports, to name who holds the most where a finding names
    /// someone.
    pub fn evaluate(
        &mut self,
        exhaustion: &Exhaustion,
        held: &dyn HeldSockets,
        now_ns: u64,
    ) -> Vec<Finding> {
        let elapsed_s = self
            .last_eval_ns
            .map(|then| now_ns.saturating_sub(then) as f64 / 1e9);
        self.last_eval_ns = Some(now_ns);
        let mut current = Vec::new();
        rules::churn(self, exhaustion, held, elapsed_s, now_ns, &mut current);
        rules::leaks(self, now_ns, &mut current);
        rules::listeners(self, exhaustion, now_ns, &mut current);
        rules::ranges(self, exhaustion, now_ns, &mut current);
        rules::bind_connects(self, exhaustion, now_ns, &mut current);
        rules::parity(self, exhaustion, now_ns, &mut current);
        rules::syn_sent(self, exhaustion, held, now_ns, &mut current);
        self.settle(current, now_ns)
    }

    fn is_active(&self, key: &Key) -> bool {
        self.active.contains_key(key)
    }

    /// What is found now against what was: the emissions.
    fn settle(&mut self, current: Vec<Finding>, now_ns: u64) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for mut finding in current {
            let key = finding.key();
            seen.insert(key);
            match self.active.get(&key) {
                None => finding.state = State::Appeared,
                Some(before) if finding.moved_from(before) => finding.state = State::Updated,
                Some(_) => continue,
            }
            self.active.insert(key, finding.clone());
            out.push(finding);
        }
        let gone: Vec<Key> = self
            .active
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(mut finding) = self.active.remove(&key) {
                finding.state = State::Cleared;
                finding.ts_ns = now_ns;
                out.push(finding);
            }
        }
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
        out
    }

    /// Ports of a scope in TIME_WAIT (TCP connect()s, as counted here): a destination's,
    /// or all of a namespace's destinations'.
    pub fn time_wait_in(&self, key: &ScopeKey) -> u32 {
        if key.proto != Proto::Tcp {
            return 0;
        }
        match key.destination() {
            Some(dest) => self
                .dests
                .get(&(key.netns, dest))
                .map_or(0, |c| c.time_wait),
            None => self
                .dests
                .iter()
                .filter(|((netns, _), _)| *netns == key.netns)
                .map(|(_, c)| c.time_wait)
                .sum(),
        }
    }

    /// The findings in force, most severe first.
    pub fn active(&self) -> Vec<&Finding> {
        let mut all: Vec<&Finding> = self.active.values().collect();
        all.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.kind.cmp(&b.kind))
                .then(a.netns.cmp(&b.netns))
        });
        all
    }
}

/// An address for people: IPv6 in brackets.
pub fn socket_addr(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// A finding for the sinks' tests.
#[cfg(test)]
pub mod fixtures;

#[cfg(test)]
mod tests;
