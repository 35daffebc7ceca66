//! Each rule on synthetic event streams, with the near-misses that must not fire.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    event::{EventType, decode_raw, tests::raw_connect},
    exhaustion::{level::Thresholds as Levels, range::PortRange},
};

const S: u64 = 1_000_000_000;

fn range_1000(_: u32) -> Option<PortRange> {
    PortRange::parse("40000 40999", "40500")
}

fn exhaustion() -> Exhaustion {
    Exhaustion::with_range_reader(
        Levels {
            warn: 0.8,
            critical: 0.95,
        },
        range_1000,
    )
}

fn connect(cookie: u64, pid: u32, ts_ns: u64) -> Event {
    let mut raw = raw_connect();
    raw.cookie = cookie;
    raw.pid = pid;
    raw.lport = 40000 + (cookie % 1000) as u16;
    raw.ts_ns = ts_ns;
    decode_raw(&raw).expect("decodes")
}

/// Runs events through exhaustion and findings as the pipeline does.
struct Bench {
    ex: Exhaustion,
    f: Findings,
    emitted: Vec<Finding>,
    /// The sockets holding ports, as the tracker would have them.
    held: Vec<Event>,
}

impl Bench {
    fn new() -> Self {
        Self {
            ex: exhaustion(),
            f: Findings::new(Thresholds::default(), None, 0),
            emitted: Vec::new(),
            held: Vec::new(),
        }
    }

    fn feed(&mut self, event: &Event, outcome: Outcome) {
        self.ex.observe(event, outcome);
        self.f.observe(event, outcome);
        match outcome {
            Outcome::Allocated => self.held.push(event.clone()),
            Outcome::Released { .. } | Outcome::Reconciled => {
                self.held.retain(|held| held.cookie != event.cookie)
            }
            _ => {}
        }
    }

    fn tick(&mut self, now_ns: u64) -> Vec<Finding> {
        let out = self.f.evaluate(&self.ex, &self.held, now_ns);
        self.emitted.extend(out.clone());
        out
    }

    fn of(&self, kind: Kind) -> Vec<&Finding> {
        self.emitted.iter().filter(|f| f.kind == kind).collect()
    }
}

fn released(event: &Event, ts_ns: u64) -> Event {
    let mut r = event.clone();
    r.event = EventType::Release;
    r.ts_ns = ts_ns;
    r
}

/// A client that closes first: each connection lives 10 ms, then 60 s in TIME_WAIT.
#[test]
fn churn_fires_when_time_wait_holds_most_of_a_destination() {
    let mut b = Bench::new();
    let mut cookie = 0;
    for second in 0..3u64 {
        for _ in 0..100 {
            cookie += 1;
            let at = second * S + cookie;
            let c = connect(cookie, 77, at);
            b.feed(&c, Outcome::Allocated);
            b.feed(&released(&c, at + 10_000_000), Outcome::EnteredTimeWait);
        }
        b.tick((second + 1) * S);
    }
    let churn = b.of(Kind::TimeWaitChurn);
    let appeared = churn.iter().filter(|f| f.state == State::Appeared).count();
    assert_eq!(appeared, 1, "appeared once: {churn:?}");
    let f = churn[0];
    assert_eq!(f.state, State::Appeared);
    assert_eq!(f.who.as_ref().map(|w| w.pid), Some(77));
    match f.evidence {
        Evidence::TimeWait {
            held,
            time_wait,
            time_wait_share,
            alloc_rate_per_s,
            range_size,
            steady_state_held,
            ..
        } => {
            assert_eq!((held, time_wait), (100, 100), "after the first second");
            assert!((time_wait_share - 1.0).abs() < 1e-9);
            // Over the first interval, from the trace's start.
            assert!(
                (alloc_rate_per_s - 100.0).abs() < 1e-6,
                "{alloc_rate_per_s}"
            );
            assert_eq!(steady_state_held, Some(6000.0), "100/s, 60 s each");
            assert_eq!(range_size, 999);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(f.remedy.contains("net.ipv4.tcp_tw_reuse=1"), "{}", f.remedy);
    assert!(f.remedy.contains("keep-alive"), "{}", f.remedy);
    // 100 -> 200 -> 300 TIME_WAIT: each look moved by >= 25%, so each is an update; a
    // fourth look with nothing new says nothing.
    assert_eq!(b.emitted.len(), 3, "{:?}", b.emitted);
    match b.emitted[2].evidence {
        Evidence::TimeWait {
            alloc_rate_per_s,
            steady_state_held,
            ..
        } => {
            assert!((alloc_rate_per_s - 100.0).abs() < 1e-6);
            // 100/s x 60 s of TIME_WAIT (no release seen yet): 6000 ports, six ranges.
            assert_eq!(steady_state_held.map(f64::round), Some(6000.0));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(b.tick(4 * S).is_empty(), "no repeat without a change");
    // TIME_WAIT ends for them all: cleared, once.
    for c in 1..=cookie {
        let e = connect(c, 77, 0);
        b.feed(
            &released(&e, 70 * S),
            Outcome::Released {
                lifetime_ns: 60 * S,
                time_wait_ns: Some(60 * S),
            },
        );
    }
    let out = b.tick(70 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].state, State::Cleared);
    assert!(b.tick(71 * S).is_empty());
}

/// The server closes first: the client's ports are released at once, no TIME_WAIT.
#[test]
fn churn_does_not_fire_when_the_peer_closes_first() {
    let mut b = Bench::new();
    for cookie in 1..=600u64 {
        let c = connect(cookie, 77, cookie * 1_000_000);
        b.feed(&c, Outcome::Allocated);
        b.feed(
            &released(&c, cookie * 1_000_000 + 500_000),
            Outcome::Released {
                lifetime_ns: 500_000,
                time_wait_ns: None,
            },
        );
        if cookie % 100 == 0 {
            b.tick(cookie * 1_000_000);
        }
    }
    assert!(b.of(Kind::TimeWaitChurn).is_empty(), "{:?}", b.emitted);
    assert!(b.of(Kind::ConnectionLeak).is_empty(), "{:?}", b.emitted);
}

/// Few ports in TIME_WAIT: below the minimum count, nothing.
#[test]
fn churn_needs_a_minimum_count() {
    let mut b = Bench::new();
    for cookie in 1..=50u64 {
        let c = connect(cookie, 77, cookie);
        b.feed(&c, Outcome::Allocated);
        b.feed(&released(&c, cookie + 1), Outcome::EnteredTimeWait);
    }
    b.tick(S);
    assert!(b.of(Kind::TimeWaitChurn).is_empty());
}

/// A connection every 20 ms, never closed.
#[test]
fn a_leak_fires_after_growth_over_several_looks() {
    let mut b = Bench::new();
    let mut cookie = 0;
    for second in 0..5u64 {
        for i in 0..50 {
            cookie += 1;
            b.feed(
                &connect(cookie, 42, second * S + i * 20_000_000),
                Outcome::Allocated,
            );
        }
        b.tick((second + 1) * S);
    }
    let leaks = b.of(Kind::ConnectionLeak);
    assert!(!leaks.is_empty(), "{:?}", b.emitted);
    let f = leaks[0];
    assert_eq!(f.who.as_ref().map(|w| w.pid), Some(42));
    match f.evidence {
        Evidence::Leak {
            held,
            slope_per_s,
            oldest_age_s,
            releases,
            ..
        } => {
            assert_eq!(held, 150, "the third growing look");
            assert!((slope_per_s - 50.0).abs() < 1.0, "{slope_per_s}");
            assert!(oldest_age_s >= 2.9, "{oldest_age_s}");
            assert_eq!(releases, 0);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(f.remedy.contains("pid 42"), "{}", f.remedy);
    assert!(b.of(Kind::TimeWaitChurn).is_empty());
}

/// A pool that grows to its size within a look and then stays: no leak.
#[test]
fn a_pool_that_fills_and_stays_is_no_leak() {
    let mut b = Bench::new();
    for cookie in 1..=200u64 {
        b.feed(&connect(cookie, 42, cookie * 1_000_000), Outcome::Allocated);
    }
    for second in 1..10u64 {
        b.tick(second * S);
    }
    assert!(b.of(Kind::ConnectionLeak).is_empty(), "{:?}", b.emitted);
}

/// A pool that grows and recycles its connections (a release for each new one): no leak.
#[test]
fn a_busy_pool_that_replaces_connections_is_no_leak() {
    let mut b = Bench::new();
    let mut cookie = 0;
    for second in 0..6u64 {
        for _ in 0..100 {
            cookie += 1;
            let c = connect(cookie, 42, second * S + cookie);
            b.feed(&c, Outcome::Allocated);
            if cookie > 60 {
                let old = connect(cookie - 60, 42, 0);
                b.feed(
                    &released(&old, second * S + cookie),
                    Outcome::Released {
                        lifetime_ns: S,
                        time_wait_ns: None,
                    },
                );
            }
        }
        b.tick((second + 1) * S);
    }
    assert!(b.of(Kind::ConnectionLeak).is_empty(), "{:?}", b.emitted);
}

fn bound(port: u16, pid: u32) -> Event {
    let mut raw = raw_connect();
    raw.flags = port_trace_common::FLAG_EXPLICIT;
    raw.kind = port_trace_common::KIND_BIND;
    raw.lport = port;
    raw.pid = pid;
    raw.cookie = u64::from(port);
    let mut e = decode_raw(&raw).expect("decodes");
    e.raddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    e.rport = 0;
    e
}

#[test]
fn a_listener_inside_the_range_gets_the_exact_reserved_ports() {
    let mut b = Bench::new();
    // Inside the range; outside it; and a reserved one.
    for (port, pid) in [(40123, 5), (8080, 6), (40500, 7)] {
        b.feed(&bound(port, pid), Outcome::Allocated);
    }
    b.tick(S);
    let found = b.of(Kind::ListenerInRange);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].who.as_ref().map(|w| w.pid), Some(5));
    assert!(
        found[0]
            .remedy
            .contains("`sysctl -w net.ipv4.ip_local_reserved_ports=40123,40500`"),
        "{}",
        found[0].remedy
    );
    // It closes: cleared.
    b.feed(
        &released(&bound(40123, 5), 2 * S),
        Outcome::Released {
            lifetime_ns: S,
            time_wait_ns: None,
        },
    );
    let out = b.tick(2 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].kind, out[0].state),
        (Kind::ListenerInRange, State::Cleared)
    );
}

#[test]
fn a_listener_found_at_start_up_counts_too() {
    let mut b = Bench::new();
    let mut e = bound(40200, 9);
    e.explicit = false; // as the snapshot makes it
    b.ex.hold_existing(&e);
    b.f.existing(&e);
    b.tick(S);
    assert_eq!(b.of(Kind::ListenerInRange).len(), 1);
    b.f.existing_gone(&e);
    assert_eq!(b.tick(2 * S)[0].state, State::Cleared);
}

fn lint_of(range: &'static str) -> Vec<Kind> {
    let mut ex = Exhaustion::with_range_reader(
        Levels {
            warn: 0.8,
            critical: 0.95,
        },
        |netns| match netns {
            1 => PortRange::parse("32768 60999", ""),
            _ => None,
        },
    );
    let mut r = PortRange::parse(range, "").expect("range");
    r.unprivileged_start = Some(1024);
    // Seen through an event in namespace 2, whose range is `range`.
    let mut e = connect(1, 3, 0);
    e.netns = 2;
    ex.hold_existing(&e);
    ex.set_range_for_tests(2, r);
    let mut f = Findings::new(Thresholds::default(), Some(1), 0);
    let mut kinds: Vec<Kind> = f
        .evaluate(&ex, &vec![e], S)
        .iter()
        .map(|f| f.kind)
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn range_lint() {
    assert_eq!(lint_of("32768 60999"), []);
    assert_eq!(
        lint_of("32768 60998"),
        [Kind::RangeParity, Kind::RangeDiffersFromHost]
    );
    assert_eq!(
        lint_of("1000 60999"),
        [Kind::RangeBelowUnprivileged, Kind::RangeDiffersFromHost]
    );
    assert_eq!(
        lint_of("40000 40099"),
        [Kind::RangeDiffersFromHost, Kind::RangeSmall]
    );
}

#[test]
fn a_change_in_a_count_under_a_quarter_is_not_said_again() {
    let base = Finding {
        kind: Kind::ConnectionLeak,
        severity: Severity::Warn,
        state: State::Appeared,
        netns: 1,
        proto: Some(Proto::Tcp),
        destination: None,
        who: None,
        evidence: Evidence::Leak {
            held: 100,
            slope_per_s: 1.0,
            oldest_age_s: 1.0,
            allocations: 100,
            releases: 0,
        },
        remedy: String::new(),
        ts_ns: 0,
    };
    let mut later = base.clone();
    later.evidence = Evidence::Leak {
        held: 124,
        slope_per_s: 2.0,
        oldest_age_s: 9.0,
        allocations: 124,
        releases: 0,
    };
    assert!(!later.moved_from(&base));
    later.evidence = Evidence::Leak {
        held: 125,
        slope_per_s: 2.0,
        oldest_age_s: 9.0,
        allocations: 125,
        releases: 0,
    };
    assert!(later.moved_from(&base));
    later = base.clone();
    later.severity = Severity::Critical;
    assert!(later.moved_from(&base));
}

/// A TCP socket bound to port 0 by `pid` (port from the range), and its connect().
fn bound_any(cookie: u64, pid: u32, ts_ns: u64) -> (Event, Event) {
    let mut raw = raw_connect();
    raw.kind = port_trace_common::KIND_BIND;
    raw.cookie = cookie;
    raw.pid = pid;
    raw.lport = 40000 + (cookie % 1000) as u16;
    raw.ts_ns = ts_ns;
    let mut bind = decode_raw(&raw).expect("decodes");
    bind.raddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    bind.rport = 0;
    raw.event = port_trace_common::EVENT_BOUND_CONNECT;
    raw.rport = 443 + (cookie % 2) as u16;
    raw.ts_ns = ts_ns + 1_000;
    (bind, decode_raw(&raw).expect("decodes"))
}

impl Bench {
    /// As the pipeline: observed, then what is said at once.
    fn feed_now(&mut self, event: &Event, outcome: Outcome) -> Vec<Finding> {
        self.feed(event, outcome);
        let out = self.f.at_once(event, outcome, &self.ex);
        self.emitted.extend(out.clone());
        out
    }
}

#[test]
fn bind_before_connect_is_said_at_the_third_connect_and_critical_when_bind_fails() {
    let mut b = Bench::new();
    for cookie in 1..=2 {
        let (bind, connect) = bound_any(cookie, 31, cookie * 1_000_000);
        assert!(b.feed_now(&bind, Outcome::Allocated).is_empty());
        assert!(b.feed_now(&connect, Outcome::BoundConnected).is_empty());
    }
    let (bind, connect) = bound_any(3, 31, 3_000_000);
    b.feed_now(&bind, Outcome::Allocated);
    let out = b.feed_now(&connect, Outcome::BoundConnected);
    assert_eq!(out.len(), 1, "{out:?}");
    let f = &out[0];
    assert_eq!(
        (f.kind, f.severity, f.state),
        (Kind::BindBeforeConnect, Severity::Warn, State::Appeared)
    );
    assert_eq!(f.who.as_ref().map(|w| w.pid), Some(31));
    assert!(f.remedy.contains("IP_BIND_ADDRESS_NO_PORT"), "{}", f.remedy);
    assert_eq!(
        f.evidence,
        Evidence::BindConnect {
            connects: 3,
            destinations: 2,
            bound_held: 3,
            bind_failures: 0,
            // 40000-40999 less the reserved 40500.
            range_size: 999,
        }
    );
    // A fourth says nothing at once (a moved count waits for the interval), and the next
    // interval nothing new (3 to 4 held is a third more: said there).
    let (bind4, connect4) = bound_any(4, 31, 4_000_000);
    b.feed_now(&bind4, Outcome::Allocated);
    assert!(b.feed_now(&connect4, Outcome::BoundConnected).is_empty());
    let out = b.tick(S);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].state, State::Updated);
    assert!(b.tick(S + 1).is_empty());
    // A bind() that finds no port makes it critical, at once.
    let mut fail = bind.clone();
    fail.event = EventType::Fail;
    fail.port = 0;
    fail.errno = port_trace_common::EADDRINUSE;
    let out = b.feed_now(&fail, Outcome::Failed);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        (out[0].severity, out[0].state),
        (Severity::Critical, State::Updated)
    );
    // The process closes everything and stops: cleared a minute after its last connect.
    for cookie in 1..=4 {
        let (bind, _) = bound_any(cookie, 31, 0);
        b.feed(
            &released(&bind, 2 * S),
            Outcome::Released {
                lifetime_ns: S,
                time_wait_ns: None,
            },
        );
    }
    // Said again (its ports all closed), kept while the last connect is recent.
    let out = b.tick(30 * S);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].state, State::Updated);
    assert!(matches!(
        out[0].evidence,
        Evidence::BindConnect { bound_held: 0, .. }
    ));
    let out = b.tick(62 * S);
    assert_eq!(
        out.iter().map(|f| (f.kind, f.state)).collect::<Vec<_>>(),
        [(Kind::BindBeforeConnect, State::Cleared)]
    );
    assert!(b.f.bound.is_empty(), "forgotten");
}

/// Near-misses: bind(0) without connect() (a server on a port of the kernel's choosing),
/// twice bind-then-connect, and connect() alone.
#[test]
fn bind_without_connect_or_rarely_is_not_named() {
    let mut b = Bench::new();
    for cookie in 1..=50 {
        let (bind, _) = bound_any(cookie, 41, cookie);
        b.feed_now(&bind, Outcome::Allocated);
    }
    for cookie in 51..=52 {
        let (bind, connect) = bound_any(cookie, 42, cookie);
        b.feed_now(&bind, Outcome::Allocated);
        b.feed_now(&connect, Outcome::BoundConnected);
    }
    for cookie in 53..=200 {
        b.feed_now(&connect(cookie, 43, cookie), Outcome::Allocated);
    }
    b.tick(S);
    assert!(b.of(Kind::BindBeforeConnect).is_empty(), "{:?}", b.emitted);
}

fn range_2000(_: u32) -> Option<PortRange> {
    PortRange::parse("40000 41999", "")
}

/// connect() tries even offsets first: when those 1000 ports to one destination are held,
/// it scans them all before each connect.
#[test]
fn parity_half_full_when_the_preferred_half_is_used_up() {
    let mut b = Bench::new();
    b.ex = Exhaustion::with_range_reader(
        Levels {
            warn: 0.8,
            critical: 0.95,
        },
        range_2000,
    );
    let conn = |i: u16| {
        let mut c = connect(u64::from(i) + 1, 5, 1);
        c.port = 40000 + i;
        c
    };
    b.ex.refresh(0);
    // Every odd port and 999 of the 1000 even ones: not yet.
    for i in (1..2000).step_by(2).chain((0..1998).step_by(2)) {
        b.feed(&conn(i), Outcome::Allocated);
    }
    b.tick(S);
    assert!(b.of(Kind::ParityHalfFull).is_empty(), "{:?}", b.emitted);
    b.feed(&conn(1998), Outcome::Allocated);
    let out = b.tick(2 * S);
    let found: Vec<&Finding> = out
        .iter()
        .filter(|f| f.kind == Kind::ParityHalfFull)
        .collect();
    assert_eq!(found.len(), 1, "{out:?}");
    assert_eq!(
        found[0].evidence,
        Evidence::Parity {
            half_used: 1000,
            half_capacity: 1000,
            used: 2000,
            capacity: 2000,
            preferred: "even",
        }
    );
    assert!(found[0].remedy.contains("4.6"), "{}", found[0].remedy);
    // Kept down to 90% of the half; cleared below.
    let release = |b: &mut Bench, i: u16| {
        b.feed(
            &released(&conn(i), 3 * S),
            Outcome::Released {
                lifetime_ns: S,
                time_wait_ns: None,
            },
        )
    };
    for i in (0..100).map(|k| k * 2) {
        release(&mut b, i);
    }
    assert!(
        b.tick(3 * S)
            .iter()
            .all(|f| !(f.kind == Kind::ParityHalfFull && f.state == State::Cleared))
    );
    for i in (100..200).map(|k| k * 2) {
        release(&mut b, i);
    }
    let out = b.tick(4 * S);
    assert!(
        out.iter()
            .any(|f| f.kind == Kind::ParityHalfFull && f.state == State::Cleared),
        "{out:?}"
    );
}

/// A small range's half fills at once and its scan is short: no finding (range_small is).
#[test]
fn parity_is_not_judged_in_small_ranges() {
    let mut b = Bench::new();
    for cookie in 0..1000u64 {
        let mut c = connect(cookie + 1, 5, 1);
        c.port = 40000 + cookie as u16;
        b.feed(&c, Outcome::Allocated);
    }
    b.tick(S);
    assert!(b.of(Kind::ParityHalfFull).is_empty());
}

/// 150 connects to a peer that does not answer: named from the look's counts, cleared when
/// they are gone; a look records only what changed.
#[test]
fn syn_sent_pile_up_is_named_from_the_looks_counts() {
    let mut b = Bench::new();
    let mut cookie = 0;
    for _ in 0..150 {
        cookie += 1;
        b.feed(&connect(cookie, 12, cookie), Outcome::Allocated);
    }
    let dest = destination(&connect(1, 12, 1));
    let netns = connect(1, 12, 1).netns;
    assert_eq!(b.f.syn_sent_namespaces(&b.ex), [netns]);
    let look = |count| SynSent {
        netns,
        destination: dest,
        count,
    };
    // Counted socket by socket, as a dump lists them.
    let changes = b.f.syn_sent_look(&vec![look(1); 150]);
    assert_eq!(changes, [look(150)]);
    assert!(
        b.f.syn_sent_look(&vec![look(1); 150]).is_empty(),
        "unchanged"
    );
    let out = b.tick(S);
    let found: Vec<&Finding> = out
        .iter()
        .filter(|f| f.kind == Kind::SynSentPileup)
        .collect();
    assert_eq!(found.len(), 1, "{out:?}");
    assert_eq!(
        found[0].evidence,
        Evidence::SynSent {
            syn_sent: 150,
            held: 150,
            range_size: 999,
        }
    );
    assert_eq!(found[0].who.as_ref().map(|w| w.pid), Some(12));
    assert!(found[0].remedy.contains("tcp_syn_retries"));
    // Answered (or timed out): none left, cleared.
    assert_eq!(b.f.syn_sent_look(&[]), [look(0)]);
    let out = b.tick(2 * S);
    assert!(
        out.iter()
            .any(|f| f.kind == Kind::SynSentPileup && f.state == State::Cleared),
        "{out:?}"
    );
    // A replay applies the recorded changes alike.
    b.f.syn_sent_changed(&[look(150)]);
    assert!(
        b.tick(3 * S)
            .iter()
            .any(|f| f.kind == Kind::SynSentPileup && f.state == State::Appeared)
    );
}

/// A few unanswered connects among many held ports: not a pile-up.
#[test]
fn a_few_syn_sent_are_not_a_pile_up() {
    let mut b = Bench::new();
    for cookie in 1..=300 {
        b.feed(&connect(cookie, 12, cookie), Outcome::Allocated);
    }
    let c = connect(1, 12, 1);
    b.f.syn_sent_look(&[SynSent {
        netns: c.netns,
        destination: destination(&c),
        count: 20,
    }]);
    b.tick(S);
    assert!(b.of(Kind::SynSentPileup).is_empty(), "{:?}", b.emitted);
}

/// Records and labels use `as_str`; the JSON uses serde's name: the same.
#[test]
fn kind_names_are_serde_names() {
    for kind in Kind::ALL {
        assert_eq!(
            serde_json::to_value(kind).expect("serializes"),
            kind.as_str(),
            "{kind:?}"
        );
    }
}

/// Churn names who holds most ports to the destination, not whoever allocated last.
#[test]
fn churn_names_the_top_holder() {
    let mut b = Bench::new();
    for cookie in 1..=200 {
        let c = connect(cookie, 77, cookie);
        b.feed(&c, Outcome::Allocated);
        b.feed(&released(&c, cookie + 10), Outcome::EnteredTimeWait);
    }
    let late = connect(201, 88, 300);
    b.feed(&late, Outcome::Allocated);
    let out = b.tick(S);
    let churn: Vec<&Finding> = out
        .iter()
        .filter(|f| f.kind == Kind::TimeWaitChurn)
        .collect();
    assert_eq!(churn.len(), 1, "{out:?}");
    assert_eq!(churn[0].who.as_ref().map(|w| w.pid), Some(77));
}
