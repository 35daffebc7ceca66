//! Findings for real: each cause driven with real sockets in a network namespace of its own
//! with a small range, and port-trace (`--interval 1s`, that namespace only) naming it, with
//! the process and the remedy: TIME_WAIT churn before the first EADDRNOTAVAIL, a leak, and a
//! listener inside the range with the exact ip_local_reserved_ports value.

mod common;

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, skip_unless_root};
use serde_json::Value;

fn start(netns: &Netns) -> Tracer {
    let inode = netns.inode().to_string();
    Tracer::start(&["--interval", "1s", "--netns", &inode])
}

fn findings<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "finding" && e["kind"] == kind)
        .collect()
}

/// Every finding kind in `events`, for the assertions' messages and the no-false-finding
/// checks.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "finding")
        .map(|e| format!("{} {}", e["kind"], e["state"]))
        .collect()
}

fn small_netns(low: u16, high: u16) -> Netns {
    let netns = Netns::new();
    netns.sysctl("net/ipv4/ip_local_port_range", &format!("{low} {high}"));
    netns
}

#[test]
fn time_wait_churn_is_named_before_the_range_runs_out() {
    if skip_unless_root("time_wait_churn_is_named_before_the_range_runs_out") {
        return;
    }
    let netns = small_netns(40_000, 40_999);
    // No TIME_WAIT reuse, even on loopback: the range then runs out as it would to a remote
    // peer.
    netns.sysctl("net/ipv4/tcp_tw_reuse", "0");
    let tracer = start(&netns);
    let failed = netns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener");
        let server = thread::spawn(move || {
            // The peer closes second: it reads our FIN, then closes (no TIME_WAIT there).
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let _ = stream.read_to_end(&mut Vec::new());
            }
        });
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
        let mut failed = 0;
        // ~330 connections a second: the 1000 ports are all in TIME_WAIT after ~3 s.
        let started = Instant::now();
        for i in 0..1300u32 {
            match TcpStream::connect(target) {
                Ok(stream) => drop(stream), // we close first
                Err(_) => failed += 1,
            }
            let due = started + Duration::from_millis(u64::from(i) * 3);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        // Left waiting in accept(): it ends with the test process.
        drop(server);
        failed
    });
    thread::sleep(Duration::from_millis(1_500));
    let (events, report) = tracer.stop();
    let churn = findings(&events, "time_wait_churn");
    assert!(!churn.is_empty(), "no churn finding: {:?}", kinds(&events));
    let first = churn[0];
    assert_eq!(first["state"], "appeared");
    assert_eq!(first["rport"].as_u64(), Some(5000), "{first}");
    assert_eq!(
        first["who"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{first}"
    );
    assert!(
        first["evidence"]["time_wait_share"].as_f64() >= Some(0.5),
        "{first}"
    );
    let remedy = first["remedy"].as_str().unwrap_or_default();
    assert!(remedy.contains("net.ipv4.tcp_tw_reuse=1"), "{remedy}");
    assert!(remedy.contains("keep-alive"), "{remedy}");
    // Before the first failure, if the range ran out.
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let found = at(&|e| e["type"] == "finding" && e["kind"] == "time_wait_churn");
    if let Some(fail) = at(&|e| e["type"] == "fail" && e["error"] == "EADDRNOTAVAIL") {
        assert!(
            found < Some(fail),
            "finding {found:?}, first failure {fail}"
        );
    }
    eprintln!("{failed} connects failed");
    assert!(
        findings(&events, "connection_leak").is_empty(),
        "{:?}",
        kinds(&events)
    );
    assert!(
        report["findings"]
            .as_array()
            .is_some_and(|all| all.iter().any(|f| f["kind"] == "time_wait_churn")),
        "{}",
        report["findings"]
    );
    assert!(report["held_by_state"]["time_wait"].as_u64() > Some(100));
}

#[test]
fn a_connection_leak_is_named_with_its_process() {
    if skip_unless_root("a_connection_leak_is_named_with_its_process") {
        return;
    }
    let netns = small_netns(40_000, 40_599);
    let tracer = start(&netns);
    let (held, _keep) = netns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener");
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
        let mut held = Vec::new();
        let started = Instant::now();
        // One every 20 ms, never closed, for 4.5 s: ~225 held.
        while started.elapsed() < Duration::from_millis(4_500) {
            let client = TcpStream::connect(target).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            held.push((client, accepted));
            thread::sleep(Duration::from_millis(20));
        }
        (held.len(), (held, listener))
    });
    thread::sleep(Duration::from_millis(1_200));
    let (events, _) = tracer.stop();
    let leak = findings(&events, "connection_leak");
    assert!(
        !leak.is_empty(),
        "no leak finding ({held} held): {:?}",
        kinds(&events)
    );
    let first = leak[0];
    assert_eq!(
        first["who"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{first}"
    );
    assert_eq!(first["rport"].as_u64(), Some(5000), "{first}");
    assert!(first["evidence"]["held"].as_u64() >= Some(50), "{first}");
    assert!(
        first["evidence"]["slope_per_s"].as_f64() > Some(20.0),
        "{first}"
    );
    assert!(
        findings(&events, "time_wait_churn").is_empty(),
        "{:?}",
        kinds(&events)
    );
}

#[test]
fn a_listener_inside_the_range_gets_the_reserved_ports_to_set() {
    if skip_unless_root("a_listener_inside_the_range_gets_the_reserved_ports_to_set") {
        return;
    }
    let netns = small_netns(40_000, 40_999);
    netns.sysctl("net/ipv4/ip_local_reserved_ports", "40900");
    let tracer = start(&netns);
    let _keep = netns.run(|| {
        (
            TcpListener::bind((Ipv4Addr::LOCALHOST, 40_100)).expect("inside"),
            TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("outside"),
            TcpListener::bind((Ipv4Addr::LOCALHOST, 40_900)).expect("reserved"),
        )
    });
    thread::sleep(Duration::from_millis(2_500));
    let (events, _) = tracer.stop();
    let found = findings(&events, "listener_in_range");
    assert_eq!(found.len(), 1, "{:?}", kinds(&events));
    let f = found[0];
    assert_eq!(f["evidence"]["port"].as_u64(), Some(40_100), "{f}");
    assert_eq!(
        f["who"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{f}"
    );
    let remedy = f["remedy"].as_str().unwrap_or_default();
    assert!(
        remedy.contains("`sysctl -w net.ipv4.ip_local_reserved_ports=40100,40900`"),
        "{remedy}"
    );
}

#[test]
fn the_preferred_half_used_up_is_named_before_connects_fail() {
    if skip_unless_root("the_preferred_half_used_up_is_named_before_connects_fail") {
        return;
    }
    // 2000 ports: connect() tries the 1000 at even offsets from 40000 first.
    let netns = small_netns(40_000, 41_999);
    netns.sysctl("net/ipv4/tcp_tw_reuse", "0");
    let tracer = start(&netns);
    netns.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let _ = stream.read_to_end(&mut Vec::new());
            }
        });
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
        // Closed here first: each port waits in TIME_WAIT, the even ones first.
        for _ in 0..1300 {
            drop(TcpStream::connect(target).expect("a port is left"));
        }
    });
    thread::sleep(Duration::from_millis(1_500));
    let (events, _) = tracer.stop();
    let found = findings(&events, "parity_half_full");
    assert!(!found.is_empty(), "{:?}", kinds(&events));
    let f = found[0];
    assert_eq!(f["rport"].as_u64(), Some(5000), "{f}");
    assert_eq!(f["evidence"]["half_capacity"].as_u64(), Some(1000), "{f}");
    assert_eq!(f["evidence"]["preferred"], "even", "{f}");
    assert!(
        f["evidence"]["half_used"].as_u64() >= Some(1000),
        "raised when the half is full: {f}"
    );
    assert!(
        events.iter().all(|e| e["type"] != "fail"),
        "no connect failed"
    );
}

#[test]
fn connects_nobody_answers_are_named_as_a_syn_sent_pile_up() {
    if skip_unless_root("connects_nobody_answers_are_named_as_a_syn_sent_pile_up") {
        return;
    }
    let netns = small_netns(40_000, 40_999);
    // A peer that does not answer: its accept queue is full and, without SYN cookies, the
    // kernel drops every SYN to it (the clients retransmit, in SYN_SENT, for ~2 minutes).
    netns.sysctl("net/ipv4/tcp_syncookies", "0");
    let tracer = start(&netns);
    let _pending = netns.run(|| {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener.bind(&peer.into()).expect("bind");
        listener.listen(1).expect("listen");
        let clients = (0..152)
            .map(|_| {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .expect("socket");
                socket.set_nonblocking(true).expect("nonblocking");
                // EINPROGRESS: the SYN is out; past the first two, no answer comes.
                let _ = socket.connect(&peer.into());
                socket
            })
            .collect::<Vec<_>>();
        (listener, clients)
    });
    // A look each interval (1 s), then the judgement.
    thread::sleep(Duration::from_millis(2_500));
    let (events, _) = tracer.stop();
    let found = findings(&events, "syn_sent_pileup");
    assert!(!found.is_empty(), "{:?}", kinds(&events));
    let f = found[0];
    assert_eq!(f["rport"].as_u64(), Some(5000), "{f}");
    // All but those the full queue took.
    let syn_sent = f["evidence"]["syn_sent"].as_u64().unwrap_or(0);
    assert!((140..=150).contains(&syn_sent), "{f}");
    assert_eq!(
        f["who"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{f}"
    );
    assert!(
        f["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("tcp_syn_retries")),
        "{f}"
    );
    // The capture has the counts a replay judges on.
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "syn_sent" && e["count"].as_u64() == Some(syn_sent)),
        "a syn_sent record"
    );
}
