//! Reconciliation: tracked ports against the kernel's own sockets. A release the kernel could
//! not deliver (ring buffer full) would leave its port "held" for good, and occupancy and
//! forecasts inflated with it; so now and then (and at once after any loss) each namespace
//! with tracked ports is dumped through sock_diag, and a port with no socket left is released
//! as `Outcome::Reconciled`.
//!
//! The rule is careful, because a dump is one moment and events travel late:
//! - a port allocated less than `MARGIN_NS` before the look is not judged (its event may
//!   have raced the dump);
//! - a port is released only when absent from two looks at least `CONFIRM_NS` apart (a
//!   release still on its way through the ring buffer arrives in between and settles it);
//! - a TIME_WAIT socket holds its port, and dumps list it (every state is asked for);
//! - a TCP socket that is bound and neither connected nor listening is listed by dumps only
//!   from Linux 6.9 on: where it is not, such ports are never judged;
//! - on the tracepoint backend a port is matched by its socket cookie, exactly; on the
//!   kprobe backend (cookies of its own) by its connection (TCP connect) or its port. A
//!   connection is one socket's at a time: when it is tracked more than once, only the
//!   newest claim can be the socket the dump lists, and the older ones are judged absent
//!   (under take-over churn every connection of a small range is in use again at once, so
//!   without this a lost release on the kprobe backend was never found).
//!
//! `Reconciler` is the rule and when to look, without I/O; `look_at` does the dumps.

use std::net::SocketAddr;

use foldhash::{HashMap, HashSet};

use super::tracker::TrackedPort;
use crate::{
    event::{AllocKind, Proto},
    sys::{
        netns,
        sock_diag::{self, DiagSocket},
    },
};

/// A tracked port younger than this at a look is not judged.
pub const MARGIN_NS: u64 = 1_000_000_000;
/// A port is released when absent from two looks at least this far apart.
pub const CONFIRM_NS: u64 = 2_000_000_000;
/// Looks a loss asks for are at least this far apart, however often the counters are read:
/// under steady loss (the kernel skipping program runs under loopback churn, say) dumping
/// every namespace more often would take the time the rings need most. Not longer: a port
/// leaked late in a burst must still be found within a few seconds (tests/take_over.rs
/// waits 6 s), and three seconds missed some.
pub const LOSS_GAP_NS: u64 = 1_000_000_000;

/// How tracked ports are matched to the kernel's sockets.
#[derive(Debug, Clone, Copy)]
pub struct Matching {
    /// The events' cookies are the kernel's socket cookies (tracepoint backend).
    pub kernel_cookies: bool,
    /// Dumps list TCP sockets that are only bound (Linux 6.9+).
    pub bound_only_listed: bool,
}

/// One namespace's sockets, as one dump found them.
#[derive(Debug, Default)]
pub struct Look {
    /// The protocols whose dump succeeded: ports of the others are not judged.
    protos: Vec<Proto>,
    cookies: HashSet<u64>,
    ports: HashSet<(Proto, u16)>,
    /// TCP connections (local, remote), addresses canonical (v4-mapped as v4).
    connections: HashSet<(SocketAddr, SocketAddr)>,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Look {
    /// The sockets of a dump of the protocols `protos` (those that succeeded).
    pub fn new(protos: Vec<Proto>, sockets: impl IntoIterator<Item = (Proto, DiagSocket)>) -> Self {
        let mut look = Self {
            protos,
            ..Self::default()
        };
        for (proto, socket) in sockets {
            if socket.sport == 0 {
                continue;
            }
            look.cookies.insert(socket.cookie);
            look.ports.insert((proto, socket.sport));
            if proto == Proto::Tcp {
                look.connections.insert((
                    canonical(SocketAddr::new(socket.src, socket.sport)),
                    canonical(SocketAddr::new(socket.dst, socket.dport)),
                ));
            }
        }
        look
    }

    /// A namespace that is gone: it has no sockets at all.
    pub fn gone() -> Self {
        Self::new(vec![Proto::Tcp, Proto::Udp], [])
    }

    /// Whether the kernel still has a socket for `port`; None when this look cannot say.
    fn has(&self, port: &TrackedPort, matching: Matching) -> Option<bool> {
        let event = &port.event;
        if !self.protos.contains(&event.proto) {
            return None;
        }
        let bound_only = event.proto == Proto::Tcp && event.kind == AllocKind::Bind;
        if bound_only && !matching.bound_only_listed {
            return None;
        }
        Some(if matching.kernel_cookies {
            self.cookies.contains(&event.cookie)
        } else if event.proto == Proto::Tcp && event.kind == AllocKind::Connect {
            self.connections
                .contains(&(canonical(event.local()), canonical(event.remote())))
        } else {
            self.ports.contains(&(event.proto, event.port))
        })
    }
}

/// A TCP connection's identity in the kernel's tables, for the allocations that made one.
type Connection = (u32, SocketAddr, SocketAddr);

fn connection(event: &crate::event::Event) -> Option<Connection> {
    (event.proto == Proto::Tcp && event.kind == AllocKind::Connect).then(|| {
        (
            event.netns,
            canonical(event.local()),
            canonical(event.remote()),
        )
    })
}

/// For each connection tracked more than once, the newest claim (allocation time, cookie):
/// the kernel holds one socket per connection, TIME_WAIT included, so a connection made
/// again was free again, and the older claims on it are stale (their release was lost, or a
/// take-over was not seen). Without the kernel's cookies this is what tells them from the
/// socket that has the connection now.
fn newest_claims(tracked: &[TrackedPort]) -> HashMap<Connection, (u64, u64)> {
    let mut newest: HashMap<Connection, (u64, u64)> = HashMap::default();
    for port in tracked {
        if let Some(key) = connection(&port.event) {
            let claim = (port.since_ns, port.event.cookie);
            let entry = newest.entry(key).or_insert(claim);
            *entry = (*entry).max(claim);
        }
    }
    newest
}

/// Dumps the TCP and UDP sockets of each of `namespaces`: one dump per namespace and
/// protocol, whatever the number of tracked ports. A namespace that cannot be entered any
/// more is gone, and its sockets with it.
pub fn look_at(namespaces: impl IntoIterator<Item = u32>) -> HashMap<u32, Look> {
    namespaces
        .into_iter()
        .map(|netns| {
            let look = match sock_diag::dump_namespace(
                netns,
                &[Proto::Tcp.ipproto(), Proto::Udp.ipproto()],
            ) {
                Some(dump) => {
                    let protos = [Proto::Tcp, Proto::Udp]
                        .into_iter()
                        .filter(|p| !dump.failed.contains(&p.ipproto()))
                        .collect();
                    let sockets = dump
                        .sockets
                        .into_iter()
                        .filter_map(|(number, s)| Some((Proto::from_ipproto(number)?, s)));
                    Look::new(protos, sockets)
                }
                // Could not be entered: gone if a clean search finds nothing that opens it;
                // otherwise (still there, or the search failed) nothing is judged.
                None if netns::is_gone(netns) => Look::gone(),
                None => Look::default(),
            };
            (netns, look)
        })
        .collect()
}

/// When to look, and which ports were absent at the last look.
#[derive(Debug)]
pub struct Reconciler {
    matching: Matching,
    every_ns: u64,
    next_ns: u64,
    /// The kernel's lost-event total at the last `due`.
    lost_seen: u64,
    /// When the last look was judged.
    last_look_ns: Option<u64>,
    /// Cookies absent at a look, and when first found absent.
    suspects: HashMap<u64, u64>,
}

impl Reconciler {
    /// Looks every `every_ns`, the first one period after `now_ns`.
    pub fn new(matching: Matching, every_ns: u64, now_ns: u64) -> Self {
        Self {
            matching,
            every_ns,
            next_ns: now_ns.saturating_add(every_ns),
            lost_seen: 0,
            last_look_ns: None,
            suspects: HashMap::default(),
        }
    }

    /// Whether to look now: the period is up, a suspect is due its second look, or the
    /// kernel lost events since the last call (`lost`, its running total).
    pub fn due(&mut self, now_ns: u64, lost: u64) -> bool {
        if lost > self.lost_seen {
            self.lost_seen = lost;
            let soonest = self
                .last_look_ns
                .map_or(now_ns, |last| last.saturating_add(LOSS_GAP_NS));
            self.next_ns = self.next_ns.min(soonest.max(now_ns));
        }
        now_ns >= self.next_ns
    }

    /// Judges the tracked ports of the namespaces in `looks` (dumped just after `at_ns`);
    /// returns the cookies of those to release, and plans the next look: soon when some
    /// port was absent for the first time, else a period on.
    pub fn judge(
        &mut self,
        tracked: impl IntoIterator<Item = TrackedPort>,
        looks: &HashMap<u32, Look>,
        at_ns: u64,
    ) -> Vec<u64> {
        let tracked: Vec<TrackedPort> = tracked
            .into_iter()
            .filter(|port| looks.contains_key(&port.event.netns))
            .collect();
        let newest = (!self.matching.kernel_cookies).then(|| newest_claims(&tracked));
        let mut gone = Vec::new();
        let mut suspects = HashMap::default();
        let (mut young, mut unjudged, mut superseded) = (0u64, 0u64, 0u64);
        for port in &tracked {
            let Some(look) = looks.get(&port.event.netns) else {
                continue;
            };
            if port.since_ns.saturating_add(MARGIN_NS) > at_ns {
                young += 1;
                continue;
            }
            // A connection a newer tracked socket has is not this socket's any more,
            // whatever the dump lists for it: the kernel has one socket per connection.
            let taken = newest
                .as_ref()
                .and_then(|newest| newest.get(&connection(&port.event)?))
                .is_some_and(|&newest| newest != (port.since_ns, port.event.cookie));
            if taken {
                superseded += 1;
            } else {
                match look.has(port, self.matching) {
                    Some(false) => {}
                    Some(true) => continue,
                    None => {
                        unjudged += 1;
                        continue;
                    }
                }
            }
            let cookie = port.event.cookie;
            let first = self.suspects.get(&cookie).copied().unwrap_or(at_ns);
            if at_ns.saturating_sub(first) >= CONFIRM_NS {
                gone.push(cookie);
            } else {
                suspects.insert(cookie, first);
            }
        }
        tracing::debug!(
            tracked = tracked.len(),
            young,
            unjudged,
            superseded,
            suspects = suspects.len(),
            gone = gone.len(),
            "reconciliation look"
        );
        self.suspects = suspects;
        self.last_look_ns = Some(at_ns);
        self.next_ns = if self.suspects.is_empty() {
            at_ns.saturating_add(self.every_ns)
        } else {
            at_ns.saturating_add(CONFIRM_NS)
        };
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use port_trace_common::{KIND_BIND, KIND_CONNECT, KIND_LISTEN};

    use super::*;
    use crate::event::{Event, decode_raw, tests::raw_connect};

    const S: u64 = 1_000_000_000;
    const NETNS: u32 = 7;

    fn port(cookie: u64, kind: u8, since_ns: u64) -> TrackedPort {
        let mut raw = raw_connect();
        raw.cookie = cookie;
        raw.kind = kind;
        raw.netns = NETNS;
        raw.lport = 40_000 + cookie as u16;
        raw.ts_ns = since_ns;
        TrackedPort {
            event: decode_raw(&raw).expect("decodes"),
            since_ns,
        }
    }

    /// The socket the kernel would list for `event`.
    fn socket_of(event: &Event, cookie: u64) -> (Proto, DiagSocket) {
        (
            event.proto,
            DiagSocket {
                family: libc::AF_INET as u8,
                state: 1,
                sport: event.port,
                dport: event.rport,
                src: event.laddr,
                dst: event.raddr,
                cookie,
                inode: 0,
            },
        )
    }

    fn looks(sockets: Vec<(Proto, DiagSocket)>) -> HashMap<u32, Look> {
        HashMap::from_iter([(NETNS, Look::new(vec![Proto::Tcp, Proto::Udp], sockets))])
    }

    const EXACT: Matching = Matching {
        kernel_cookies: true,
        bound_only_listed: true,
    };

    #[test]
    fn released_only_when_absent_from_two_looks_apart() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let kept = port(1, KIND_CONNECT, 0);
        let lost = port(2, KIND_CONNECT, 0);
        let present = looks(vec![socket_of(&kept.event, 1)]);
        let tracked = || vec![kept.clone(), lost.clone()];
        assert!(!r.due(10 * S, 0));
        assert!(r.due(30 * S, 0));
        assert!(
            r.judge(tracked(), &present, 30 * S).is_empty(),
            "first look"
        );
        // Looked at again soon, to confirm.
        assert!(!r.due(31 * S, 0));
        assert!(r.due(32 * S, 0));
        assert_eq!(r.judge(tracked(), &present, 32 * S), [2]);
        // Nothing suspect left: the next look a period on.
        assert!(r.judge(vec![kept.clone()], &present, 32 * S).is_empty());
        assert!(!r.due(61 * S, 0));
        assert!(r.due(62 * S, 0));
    }

    #[test]
    fn a_port_seen_again_is_no_longer_suspect() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let p = port(1, KIND_CONNECT, 0);
        r.judge(vec![p.clone()], &looks(vec![]), 30 * S);
        let back = looks(vec![socket_of(&p.event, 1)]);
        assert!(r.judge(vec![p.clone()], &back, 32 * S).is_empty());
        // Absent again: a first look again, not a confirmation.
        assert!(r.judge(vec![p.clone()], &looks(vec![]), 34 * S).is_empty());
        assert_eq!(r.judge(vec![p], &looks(vec![]), 36 * S), [1]);
    }

    #[test]
    fn too_close_looks_confirm_nothing() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let p = port(1, KIND_CONNECT, 0);
        assert!(r.judge(vec![p.clone()], &looks(vec![]), 30 * S).is_empty());
        assert!(r.judge(vec![p.clone()], &looks(vec![]), 31 * S).is_empty());
        assert_eq!(r.judge(vec![p], &looks(vec![]), 32 * S), [1]);
    }

    #[test]
    fn a_loss_makes_it_look_at_once() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        assert!(!r.due(S, 0));
        assert!(r.due(2 * S, 5), "events were lost");
        r.judge(vec![], &looks(vec![]), 2 * S);
        assert!(!r.due(3 * S, 5), "the same loss again is nothing new");
        // Steady loss: looks at most every LOSS_GAP_NS, not at every new loss.
        assert!(
            !r.due(2 * S + LOSS_GAP_NS / 2, 6),
            "too soon after the last look"
        );
        assert!(r.due(2 * S + LOSS_GAP_NS, 7));
    }

    #[test]
    fn young_ports_and_other_namespaces_are_not_judged() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        // Allocated just before the look: its socket may not be in the dump yet.
        let young = port(1, KIND_CONNECT, 30 * S - MARGIN_NS / 2);
        let mut elsewhere = port(2, KIND_CONNECT, 0);
        elsewhere.event.netns = NETNS + 1;
        let tracked = || vec![young.clone(), elsewhere.clone()];
        assert!(r.judge(tracked(), &looks(vec![]), 30 * S).is_empty());
        // By 33 s the young one is old enough, but absent only once.
        assert!(r.judge(tracked(), &looks(vec![]), 33 * S).is_empty());
        assert_eq!(
            r.judge(tracked(), &looks(vec![]), 35 * S),
            [1],
            "never the other netns"
        );
    }

    #[test]
    fn a_failed_dump_and_unlisted_bound_sockets_prove_nothing() {
        let matching = Matching {
            kernel_cookies: true,
            bound_only_listed: false,
        };
        let mut r = Reconciler::new(matching, 30 * S, 0);
        let bound = port(1, KIND_BIND, 0);
        let listener = port(2, KIND_LISTEN, 0);
        let mut udp = port(3, KIND_BIND, 0);
        udp.event.proto = Proto::Udp;
        let only_udp_failed = HashMap::from_iter([(NETNS, Look::new(vec![Proto::Tcp], []))]);
        let tracked = || vec![bound.clone(), listener.clone(), udp.clone()];
        r.judge(tracked(), &only_udp_failed, 30 * S);
        assert_eq!(
            r.judge(tracked(), &only_udp_failed, 32 * S),
            [2],
            "the listener only: bound TCP sockets are not listed, the UDP dump failed"
        );
    }

    #[test]
    fn time_wait_sockets_hold_their_port() {
        // A parked port's event is its release; the TIME_WAIT socket keeps the cookie.
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let parked = port(1, KIND_CONNECT, 0);
        let mut tw = socket_of(&parked.event, 1);
        tw.1.state = port_trace_common::TCP_TIME_WAIT;
        for at in [30 * S, 32 * S] {
            assert!(
                r.judge(vec![parked.clone()], &looks(vec![tw]), at)
                    .is_empty()
            );
        }
    }

    #[test]
    fn without_kernel_cookies_connections_and_ports_are_matched() {
        let matching = Matching {
            kernel_cookies: false,
            bound_only_listed: true,
        };
        let mut r = Reconciler::new(matching, 30 * S, 0);
        let connected = port(1, KIND_CONNECT, 0);
        let mut udp = port(2, KIND_BIND, 0);
        udp.event.proto = Proto::Udp;
        let other_destination = port(3, KIND_CONNECT, 0);
        let mut sockets = vec![
            // Another cookie (kprobe ids are not the kernel's), the same connection.
            socket_of(&connected.event, 999),
            socket_of(&udp.event, 998),
        ];
        // Port 3's port, but to another destination: not its connection.
        let (_, mut elsewhere) = socket_of(&other_destination.event, 997);
        elsewhere.dst = IpAddr::from(Ipv4Addr::new(10, 9, 9, 9));
        sockets.push((Proto::Tcp, elsewhere));
        let tracked = || vec![connected.clone(), udp.clone(), other_destination.clone()];
        r.judge(tracked(), &looks(sockets.clone()), 30 * S);
        assert_eq!(r.judge(tracked(), &looks(sockets), 32 * S), [3]);
    }

    /// Take-over churn on the kprobe backend: connection X's first socket lost its release
    /// (a missed probe), a newer socket has X now (in TIME_WAIT), and the dump lists X. By
    /// connection alone both look present, and the stale one was held for good.
    #[test]
    fn without_kernel_cookies_an_older_claim_on_a_connection_is_stale() {
        let matching = Matching {
            kernel_cookies: false,
            bound_only_listed: true,
        };
        let mut r = Reconciler::new(matching, 30 * S, 0);
        let stale = port(1, KIND_CONNECT, 0);
        let mut newer = port(2, KIND_CONNECT, 5 * S);
        newer.event.port = stale.event.port;
        let mut other = port(3, KIND_CONNECT, 0);
        other.event.rport += 1;
        // The kernel's sockets: connection X (the newer one's, in TIME_WAIT) and `other`'s.
        let (_, mut x) = socket_of(&newer.event, 999);
        x.state = port_trace_common::TCP_TIME_WAIT;
        let sockets = vec![(Proto::Tcp, x), socket_of(&other.event, 998)];
        let tracked = || vec![stale.clone(), newer.clone(), other.clone()];
        assert!(
            r.judge(tracked(), &looks(sockets.clone()), 30 * S)
                .is_empty()
        );
        assert_eq!(
            r.judge(tracked(), &looks(sockets.clone()), 32 * S),
            [1],
            "the older claim on X, not the newer one, nor another connection"
        );
        // With the kernel's own cookies the same stale entry is simply absent.
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let exact = vec![socket_of(&newer.event, 2), socket_of(&other.event, 3)];
        r.judge(tracked(), &looks(exact.clone()), 30 * S);
        assert_eq!(r.judge(tracked(), &looks(exact), 32 * S), [1]);
    }

    #[test]
    fn a_namespace_that_is_gone_has_no_sockets() {
        let mut r = Reconciler::new(EXACT, 30 * S, 0);
        let p = port(1, KIND_LISTEN, 0);
        let gone = HashMap::from_iter([(NETNS, Look::gone())]);
        r.judge(vec![p.clone()], &gone, 30 * S);
        assert_eq!(r.judge(vec![p], &gone, 32 * S), [1]);
    }
}
