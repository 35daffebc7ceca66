//! The rules: when each finding is raised and kept, and the remedy it prints.

use super::{ConnKey, Evidence, Finding, Findings, Key, Kind, Severity, State, Who, socket_addr};
use crate::{exhaustion::Exhaustion, track::HeldSockets};

/// A finding's main count must move by this share of itself to be said again.
pub const MATERIAL: f64 = 0.25;
/// TCP_TIMEWAIT_LEN: fixed on Linux.
const TIME_WAIT_S: f64 = 60.0;
/// Fewer ports than this in a range is a lint (warn).
pub const SMALL_RANGE: u32 = 1000;
/// Ports in the half of a range connect() tries first, at least, for its filling to be a
/// finding: below this the scan that slows connects is short (and `range_small` says it).
pub const PARITY_MIN_HALF: u32 = 500;
/// A parity finding is kept while the half is this full (raised when it is full).
const PARITY_KEEP: f64 = 0.9;
/// Bind before connect: distinct destinations counted, at most.
pub const DESTINATIONS_SEEN: usize = 16;
/// Bind before connect is kept this long after the last such connect() while the process
/// holds no port from bind(0), then cleared (and counted afresh if it comes back).
const BIND_QUIET_NS: u64 = 60_000_000_000;

/// The bounds of the rules. Raising needs the first number, keeping a finding the looser
/// second (hysteresis).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// TIME_WAIT's share of a destination's held ports.
    pub churn_share: (f64, f64),
    /// Ports held to the destination: at least this many, or this share of the range,
    /// whichever is fewer (a 1000-port range fills long before 100 ports of 28k matter).
    pub churn_min_held: u32,
    pub churn_min_range_share: f64,
    /// A destination this full (of the range) makes churn critical.
    pub churn_critical_share: f64,
    /// Evaluations in a row the connections grew.
    pub leak_growing: u32,
    /// Connections held, at least.
    pub leak_min_held: u32,
    /// Releases under this share of allocations, over the growth.
    pub leak_release_share: f64,
    /// Evaluations without growth that clear a leak.
    pub leak_flat_clears: u32,
    /// connect()s from bind(0) ports that name a process ("repeatedly").
    pub bind_connects: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            churn_share: (0.5, 0.4),
            churn_min_held: 100,
            churn_min_range_share: 0.1,
            churn_critical_share: 0.8,
            leak_growing: 3,
            leak_min_held: 50,
            leak_release_share: 0.1,
            leak_flat_clears: 3,
            bind_connects: 3,
        }
    }
}

/// The namespace's range size (Linux's default range where it is not known).
fn range_size(exhaustion: &Exhaustion, netns: u32) -> u32 {
    exhaustion
        .range_of(netns)
        .map_or(crate::exhaustion::range::PortRange::default().size(), |r| {
            r.size()
        })
}

/// Ports one destination must hold for churn or a SYN_SENT pile-up there to matter: 100, or
/// 10% of the range, whichever is fewer (a 1000-port range fills long before 100 ports of
/// 28k matter).
pub(super) fn min_held(t: &Thresholds, exhaustion: &Exhaustion, netns: u32) -> u32 {
    t.churn_min_held
        .min((f64::from(range_size(exhaustion, netns)) * t.churn_min_range_share) as u32)
        .max(1)
}

/// Who holds the most ports to a TCP destination: the process a churn or pile-up names.
fn top_holder(
    exhaustion: &Exhaustion,
    sockets: &dyn HeldSockets,
    netns: u32,
    dest: super::Destination,
) -> Option<Who> {
    let key = crate::exhaustion::scope::ScopeKey {
        netns,
        proto: crate::event::Proto::Tcp,
        scope: crate::exhaustion::scope::Scope::Destination(dest),
    };
    let top = exhaustion.top_holder(&key, sockets)?;
    Some(Who {
        pid: top.holder.pid,
        comm: top.holder.comm,
        cgroup: top.cgroup,
        workload: top.workload,
    })
}

fn key(kind: Kind, netns: u32, finding_dest: Option<super::Destination>, pid: u32) -> Key {
    Key {
        kind,
        netns,
        proto: Some(crate::event::Proto::Tcp),
        destination: finding_dest,
        pid,
        port: 0,
    }
}

pub(super) fn churn(
    f: &mut Findings,
    exhaustion: &Exhaustion,
    sockets: &dyn HeldSockets,
    elapsed_s: Option<f64>,
    now_ns: u64,
    out: &mut Vec<Finding>,
) {
    let t = f.thresholds;
    let mut found = Vec::new();
    for ((netns, dest), counts) in &mut f.dests {
        if let Some(s) = elapsed_s.filter(|s| *s > 0.0) {
            counts.rate = counts.allocs as f64 / s;
        }
        counts.allocs = 0;
        let range_size = range_size(exhaustion, *netns);
        let min_held = min_held(&t, exhaustion, *netns);
        let share = if counts.held == 0 {
            0.0
        } else {
            f64::from(counts.time_wait) / f64::from(counts.held)
        };
        found.push((
            *netns,
            *dest,
            counts.held,
            counts.time_wait,
            share,
            min_held,
            range_size,
        ));
    }
    for (netns, dest, held, time_wait, share, min_held, range_size) in found {
        let active = f.is_active(&key(Kind::TimeWaitChurn, netns, Some(dest), 0));
        let (share_bound, held_bound) = if active {
            (t.churn_share.1, min_held / 2)
        } else {
            (t.churn_share.0, min_held)
        };
        if share < share_bound || time_wait < held_bound {
            continue;
        }
        let counts = &f.dests[&(netns, dest)];
        let mean_lifetime_s = (counts.releases > 0)
            .then(|| counts.lifetime_sum_ns as f64 / counts.releases as f64 / 1e9);
        let severity = if f64::from(held) >= t.churn_critical_share * f64::from(range_size) {
            Severity::Critical
        } else {
            Severity::Warn
        };
        let who = top_holder(exhaustion, sockets, netns, dest);
        out.push(Finding {
            kind: Kind::TimeWaitChurn,
            severity,
            state: State::Appeared,
            netns,
            proto: Some(crate::event::Proto::Tcp),
            destination: Some(dest),
            who,
            evidence: Evidence::TimeWait {
                held,
                time_wait,
                time_wait_share: share,
                alloc_rate_per_s: counts.rate,
                mean_lifetime_s,
                // Little's law with the hold at least TIME_WAIT's share of 60 s
                // (TCP_TIMEWAIT_LEN): until the first TIME_WAIT ends, the releases seen are
                // only the short ones, and their mean alone said "~1 port".
                steady_state_held: Some(
                    counts.rate * mean_lifetime_s.unwrap_or(0.0).max(share * TIME_WAIT_S),
                ),
                range_size,
            },
            remedy: format!(
                "this host closes its connections to {} first, so each port then waits \
                 60 s in TIME_WAIT: reuse connections (HTTP keep-alive, a connection pool), \
                 or let the peer close first; for outgoing connections set \
                 `sysctl -w net.ipv4.tcp_tw_reuse=1` (the default 2 is loopback only); or \
                 connect from more source addresses. Never tcp_tw_recycle (removed in 4.12)",
                socket_addr(dest.raddr, dest.rport)
            ),
            ts_ns: now_ns,
        });
    }
    // Destinations with nothing held are forgotten, unless a finding still names them.
    let active: Vec<(u32, super::Destination)> = f
        .active
        .keys()
        .filter(|k| k.kind == Kind::TimeWaitChurn)
        .filter_map(|k| Some((k.netns, k.destination?)))
        .collect();
    f.dests.retain(|k, c| c.held > 0 || active.contains(k));
}

pub(super) fn leaks(f: &mut Findings, now_ns: u64, out: &mut Vec<Finding>) {
    let t = f.thresholds;
    let active: std::collections::HashSet<ConnKey> = f
        .active
        .keys()
        .filter(|k| k.kind == Kind::ConnectionLeak)
        .filter_map(|k| {
            Some(ConnKey {
                netns: k.netns,
                proto: k.proto?,
                dest: k.destination?,
                pid: k.pid,
            })
        })
        .collect();
    for (key, c) in &mut f.conns {
        if c.held > c.last_held {
            if c.growing == 0 {
                // The growth starts from the last look.
                c.base_held = c.last_held;
                c.base_allocs = c.allocs;
                c.base_releases = c.releases;
                // ... and from its time, or the first connection's if never looked at.
                c.base_ns = if c.last_ns == 0 {
                    c.first_ns
                } else {
                    c.last_ns
                };
            }
            c.growing += 1;
            c.flat = 0;
        } else {
            c.flat += 1;
            if c.flat >= t.leak_flat_clears || c.held < c.last_held {
                c.growing = 0;
            }
        }
        c.last_held = c.held;
        c.last_ns = now_ns;
        let is_active = active.contains(key);
        let allocs = c.allocs - c.base_allocs;
        let releases = c.releases - c.base_releases;
        let leaking = if is_active {
            c.growing > 0 && c.held >= t.leak_min_held / 2
        } else {
            c.growing >= t.leak_growing
                && c.held >= t.leak_min_held
                && (releases as f64) < t.leak_release_share * allocs as f64
        };
        if !leaking {
            continue;
        }
        let since_s = (now_ns.saturating_sub(c.base_ns) as f64 / 1e9).max(1e-3);
        out.push(Finding {
            kind: Kind::ConnectionLeak,
            severity: Severity::Warn,
            state: State::Appeared,
            netns: key.netns,
            proto: Some(key.proto),
            destination: Some(key.dest),
            who: c.who.clone(),
            evidence: Evidence::Leak {
                held: c.held,
                slope_per_s: f64::from(c.held.saturating_sub(c.base_held)) / since_s,
                oldest_age_s: now_ns.saturating_sub(c.first_ns) as f64 / 1e9,
                allocations: allocs,
                releases,
            },
            remedy: format!(
                "{} opens connections to {} and does not close them: close each one when \
                 done (and on every error path), or bound the pool (a maximum size, an idle \
                 timeout)",
                c.who.as_ref().map_or("a process".to_string(), |w| format!(
                    "pid {} ({})",
                    w.pid, w.comm
                )),
                socket_addr(key.dest.raddr, key.dest.rport)
            ),
            ts_ns: now_ns,
        });
    }
    f.conns.retain(|k, c| c.held > 0 || active.contains(k));
}

pub(super) fn listeners(
    f: &mut Findings,
    exhaustion: &Exhaustion,
    now_ns: u64,
    out: &mut Vec<Finding>,
) {
    for (&key, fixed) in &f.fixed {
        out.extend(listener(key, fixed, exhaustion, now_ns));
    }
}

/// The finding for one port held by number, if it lies inside its namespace's range.
pub(super) fn listener(
    (netns, proto, port): (u32, crate::event::Proto, u16),
    fixed: &super::Fixed,
    exhaustion: &Exhaustion,
    now_ns: u64,
) -> Option<Finding> {
    let range = exhaustion.range_of(netns)?;
    if !range.contains(port) {
        return None;
    }
    let reserved = range.reserved_with(port);
    Some(Finding {
        kind: Kind::ListenerInRange,
        severity: Severity::Warn,
        state: State::Appeared,
        netns,
        proto: Some(proto),
        destination: None,
        who: Some(fixed.who.clone()),
        evidence: Evidence::Listener {
            port,
            range_low: range.low,
            range_high: range.high,
            reserved: crate::exhaustion::range::reserved_list(&range.reserved),
        },
        remedy: format!(
            "port {port} is inside the ephemeral range {}-{}: an outgoing connect() may \
             take it first and the service then fails to start. Reserve it in that \
             namespace: `sysctl -w net.ipv4.ip_local_reserved_ports={reserved}` (or move \
             the service outside the range)",
            range.low, range.high
        ),
        ts_ns: now_ns,
    })
}

pub(super) fn ranges(f: &Findings, exhaustion: &Exhaustion, now_ns: u64, out: &mut Vec<Finding>) {
    let host = f
        .host_netns
        .and_then(|h| Some((h, exhaustion.range_of(h)?)));
    for (netns, range) in exhaustion.ranges() {
        let size = u32::from(range.high - range.low) + 1;
        let host_differs = host
            .as_ref()
            .filter(|(h, hr)| *h != netns && (hr.low, hr.high) != (range.low, range.high));
        let evidence = Evidence::Range {
            range_low: range.low,
            range_high: range.high,
            size,
            unprivileged_start: range.unprivileged_start,
            host_low: host_differs.map(|(_, hr)| hr.low),
            host_high: host_differs.map(|(_, hr)| hr.high),
        };
        let mut lint = |kind, severity, remedy: String| {
            out.push(Finding {
                kind,
                severity,
                state: State::Appeared,
                netns,
                proto: None,
                destination: None,
                who: None,
                evidence: evidence.clone(),
                remedy,
                ts_ns: now_ns,
            });
        };
        let (low, high) = (range.low, range.high);
        if low % 2 == high % 2 && low != high {
            lint(
                Kind::RangeParity,
                Severity::Info,
                format!(
                    "the range {low}-{high} starts and ends on the same parity (the kernel \
                     warns: \"prefer different parity for start/end values\"): set \
                     `sysctl -w net.ipv4.ip_local_port_range=\"{low} {}\"`",
                    if high < u16::MAX { high + 1 } else { high - 1 }
                ),
            );
        }
        if let Some(start) = range.unprivileged_start.filter(|s| low < *s) {
            lint(
                Kind::RangeBelowUnprivileged,
                Severity::Warn,
                format!(
                    "the range starts at {low}, below ip_unprivileged_port_start {start}: \
                     connects take ports that services expect to bind; set \
                     `sysctl -w net.ipv4.ip_local_port_range=\"{start} {high}\"` or higher"
                ),
            );
        }
        if let Some((_, hr)) = host_differs {
            lint(
                Kind::RangeDiffersFromHost,
                Severity::Info,
                format!(
                    "this namespace's range {low}-{high} is not the host's {}-{} (namespaces \
                     do not inherit the host's tuning): if that is not meant, set \
                     net.ipv4.ip_local_port_range in the pod's or container's sysctls",
                    hr.low, hr.high
                ),
            );
        }
        if size < SMALL_RANGE {
            lint(
                Kind::RangeSmall,
                Severity::Warn,
                format!(
                    "the range {low}-{high} has only {size} ports: widen it, e.g. \
                     `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"` (Linux's default)"
                ),
            );
        }
    }
}

/// Bind before connect, for every process that does it; forgets those that stopped.
pub(super) fn bind_connects(
    f: &mut Findings,
    exhaustion: &Exhaustion,
    now_ns: u64,
    out: &mut Vec<Finding>,
) {
    let keys: Vec<(u32, u32)> = f.bound.keys().copied().collect();
    for key in keys {
        match bind_connect_one(f, key, exhaustion, now_ns) {
            Some(found) => out.push(found),
            // Not (or no longer) a finding: once quiet, its counts start afresh.
            None => {
                if let Some(b) = f.bound.get_mut(&key)
                    && now_ns.saturating_sub(b.last_connect_ns) >= BIND_QUIET_NS
                {
                    b.connects = 0;
                    b.failures = 0;
                    b.destinations.clear();
                }
            }
        }
    }
    f.bound.retain(|_, b| b.bound_held > 0 || b.connects > 0);
}

/// The bind-before-connect finding for one process (namespace, pid), if it is one: at least
/// `bind_connects` connect()s from bind(0) ports, and one lately or such a port still held.
pub(super) fn bind_connect_one(
    f: &Findings,
    (netns, pid): (u32, u32),
    exhaustion: &Exhaustion,
    now_ns: u64,
) -> Option<Finding> {
    let b = f.bound.get(&(netns, pid))?;
    let recent = now_ns.saturating_sub(b.last_connect_ns) < BIND_QUIET_NS;
    if b.connects < f.thresholds.bind_connects || !(recent || b.bound_held > 0) {
        return None;
    }
    let range_size = range_size(exhaustion, netns);
    let who = b.who.as_ref().map_or_else(
        || format!("pid {pid}"),
        |w| format!("pid {} ({})", w.pid, w.comm),
    );
    Some(Finding {
        kind: Kind::BindBeforeConnect,
        severity: if b.failures > 0 {
            Severity::Critical
        } else {
            Severity::Warn
        },
        state: State::Appeared,
        netns,
        proto: Some(crate::event::Proto::Tcp),
        destination: None,
        who: b.who.clone(),
        evidence: Evidence::BindConnect {
            connects: b.connects,
            destinations: b.destinations.len() as u32,
            bound_held: b.bound_held,
            bind_failures: b.failures,
            range_size,
        },
        remedy: format!(
            "{who} calls bind() with port 0 before connect(): a port bind() chooses is held \
             for every destination, so all its connections share this namespace's \
             {range_size} ports, where ports connect() chooses are reused for each \
             destination. Set IP_BIND_ADDRESS_NO_PORT before bind() \
             (`setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one)`, \
             Linux 4.2+; the port is then chosen at connect()), or do not bind() when the \
             source address does not matter"
        ),
        ts_ns: now_ns,
    })
}

/// The half of a destination's range that connect() tries first is used up.
pub(super) fn parity(f: &Findings, exhaustion: &Exhaustion, now_ns: u64, out: &mut Vec<Finding>) {
    for (key, half) in exhaustion.connect_halves() {
        let crate::exhaustion::scope::Scope::Destination(dest) = key.scope else {
            continue;
        };
        if half.capacity < PARITY_MIN_HALF {
            continue;
        }
        let active = f.is_active(&self::key(Kind::ParityHalfFull, key.netns, Some(dest), 0));
        let full = if active {
            f64::from(half.used) >= PARITY_KEEP * f64::from(half.capacity)
        } else {
            half.used >= half.capacity
        };
        if !full {
            continue;
        }
        let Some(range) = exhaustion.range_of(key.netns) else {
            continue;
        };
        let whole = exhaustion.usage(&key);
        let preferred = if range.low.is_multiple_of(2) {
            "even"
        } else {
            "odd"
        };
        out.push(Finding {
            kind: Kind::ParityHalfFull,
            severity: Severity::Warn,
            state: State::Appeared,
            netns: key.netns,
            proto: Some(crate::event::Proto::Tcp),
            destination: Some(dest),
            who: None,
            evidence: Evidence::Parity {
                half_used: half.used,
                half_capacity: half.capacity,
                used: whole.used,
                capacity: whole.capacity,
                preferred,
            },
            remedy: format!(
                "connect() to {} has used every {preferred} port of the range {}-{} (Linux \
                 4.6+ tries the ports at an even offset from the range start first and leaves \
                 the others to bind()): each connect() now scans all {} of them before it \
                 takes one of the other half, so on a large range connects slow down (CPU \
                 time in __inet_hash_connect) before they fail with EADDRNOTAVAIL. Hold fewer ports \
                 (the other findings name the causes), widen net.ipv4.ip_local_port_range, or \
                 connect from more source addresses; on recent kernels a socket given a range \
                 of its own (IP_LOCAL_PORT_RANGE, Linux 6.3+) is scanned without parity",
                socket_addr(dest.raddr, dest.rport),
                range.low,
                range.high,
                half.capacity
            ),
            ts_ns: now_ns,
        });
    }
}

/// Many connects to one destination not answered: SYN_SENT sockets (as the last look counted
/// them) at least `min_held` of them, kept down to half that.
pub(super) fn syn_sent(
    f: &Findings,
    exhaustion: &Exhaustion,
    sockets: &dyn HeldSockets,
    now_ns: u64,
    out: &mut Vec<Finding>,
) {
    for (&(netns, dest), &count) in &f.syn_sent {
        let min = min_held(&f.thresholds, exhaustion, netns);
        let active = f.is_active(&key(Kind::SynSentPileup, netns, Some(dest), 0));
        if count < if active { min / 2 } else { min }.max(1) {
            continue;
        }
        let counts = f.dests.get(&(netns, dest));
        let who = top_holder(exhaustion, sockets, netns, dest);
        out.push(Finding {
            kind: Kind::SynSentPileup,
            severity: Severity::Warn,
            state: State::Appeared,
            netns,
            proto: Some(crate::event::Proto::Tcp),
            destination: Some(dest),
            who,
            evidence: Evidence::SynSent {
                syn_sent: count,
                held: counts.map_or(count, |c| c.held),
                range_size: range_size(exhaustion, netns),
            },
            remedy: format!(
                "{count} connect()s to {} are waiting for an answer (SYN_SENT), each holding \
                 its port: the peer is down, overloaded (its SYN backlog full) or filtered (a \
                 firewall dropping SYNs). Check the peer's health; bound each connect with a \
                 timeout (a non-blocking connect() and poll, or TCP_SYNCNT / \
                 TCP_USER_TIMEOUT on the socket); and lower net.ipv4.tcp_syn_retries (6 wait \
                 ~127 s before ETIMEDOUT, 3 ~15 s)",
                socket_addr(dest.raddr, dest.rport)
            ),
            ts_ns: now_ns,
        });
    }
}
