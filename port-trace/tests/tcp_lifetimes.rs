//! End to end on the real kernel: real TCP sockets, ground truth from getsockname(), and
//! port-trace's events and report checked against it.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    os::fd::OwnedFd,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, local_port, ours, rst_close, skip_unless_root};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// How far a reported lifetime may be from the measured hold.
const TOLERANCE: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Expected {
    port: u16,
    family: &'static str,
    kind: &'static str,
    /// A connect()'s destination, as the event must name it (and its local address); none
    /// for a bind() or listen().
    peer: Option<SocketAddr>,
    /// From just before the allocating call to just after close().
    held: Duration,
}

fn v4() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn v6() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
}

fn tcp(addr: &SocketAddr) -> Socket {
    Socket::new(Domain::for_address(*addr), Type::STREAM, None).expect("socket")
}

fn family(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// connect() to a local listener, hold, RST-close.
fn connect_and_hold(listener: &TcpListener, hold: Duration) -> Expected {
    let target = listener.local_addr().expect("listener address");
    let socket = tcp(&target);
    let start = Instant::now();
    socket.connect(&target.into()).expect("connect");
    let port = local_port(&socket);
    let (accepted, _) = listener.accept().expect("accept");
    sleep(hold);
    rst_close(socket);
    let held = start.elapsed();
    drop(accepted);
    Expected {
        port,
        family: family(&target),
        kind: "connect",
        peer: Some(target),
        held,
    }
}

/// bind() to port 0, hold, close.
fn bind_zero_and_hold(addr: SocketAddr, hold: Duration) -> Expected {
    let socket = tcp(&addr);
    let start = Instant::now();
    socket.bind(&addr.into()).expect("bind");
    let port = local_port(&socket);
    // A second bind() fails (EINVAL) and changes nothing: still one alloc, one release.
    assert!(socket.bind(&addr.into()).is_err(), "second bind");
    sleep(hold);
    drop(socket);
    Expected {
        port,
        family: family(&addr),
        kind: "bind",
        peer: None,
        held: start.elapsed(),
    }
}

/// listen() on a socket never bound: the kernel picks the port.
fn listen_unbound_and_hold(addr: SocketAddr, hold: Duration) -> Expected {
    let socket = tcp(&addr);
    let start = Instant::now();
    socket.listen(16).expect("listen");
    let port = local_port(&socket);
    sleep(hold);
    drop(socket);
    Expected {
        port,
        family: family(&addr),
        kind: "listen",
        peer: None,
        held: start.elapsed(),
    }
}

fn find<'a>(records: &[&'a Value], port: u16) -> Vec<&'a Value> {
    records
        .iter()
        .copied()
        .filter(|e| e["port"].as_u64() == Some(u64::from(port)))
        .collect()
}

fn check(expected: &Expected, allocs: &[&Value], releases: &[&Value]) {
    let alloc = find(allocs, expected.port);
    assert_eq!(alloc.len(), 1, "one alloc for {expected:?}, got {alloc:?}");
    let alloc = alloc[0];
    assert_eq!(alloc["proto"], "tcp", "{alloc}");
    assert_eq!(alloc["family"], expected.family, "{alloc}");
    assert_eq!(alloc["kind"], expected.kind, "{alloc}");
    assert!(
        alloc["comm"].as_str().is_some_and(|c| !c.is_empty()),
        "{alloc}"
    );
    assert!(alloc["netns"].as_u64().is_some_and(|n| n > 0), "{alloc}");
    match expected.peer {
        // Loopback: the local address is the destination's.
        Some(peer) => {
            assert_eq!(alloc["raddr"], peer.ip().to_string(), "{alloc}");
            assert_eq!(alloc["rport"], peer.port(), "{alloc}");
            assert_eq!(alloc["laddr"], peer.ip().to_string(), "{alloc}");
        }
        None => assert!(alloc.get("rport").is_none(), "{alloc}"),
    }
    let release: Vec<_> = find(releases, expected.port)
        .into_iter()
        .filter(|r| r["cookie"] == alloc["cookie"])
        .collect();
    assert_eq!(
        release.len(),
        1,
        "one release for {expected:?}, got {release:?}"
    );
    let lifetime = Duration::from_nanos(release[0]["lifetime_ns"].as_u64().expect("lifetime"));
    let diff = lifetime.abs_diff(expected.held);
    assert!(
        diff <= TOLERANCE,
        "{expected:?}: lifetime {lifetime:?} is {diff:?} off the hold"
    );
}

#[test]
fn kernel_chosen_tcp_ports_are_reported_with_their_lifetimes() {
    if skip_unless_root("kernel_chosen_tcp_ports_are_reported_with_their_lifetimes") {
        return;
    }
    let _alone = common::one_at_a_time();
    let tracer = Tracer::start(&[]);
    // The listeners' own ports come from bind(0): they are allocations too.
    let listener4 = TcpListener::bind(v4()).expect("listener");
    let listener6 = TcpListener::bind(v6()).expect("listener v6");
    let expected = [
        connect_and_hold(&listener4, Duration::from_millis(200)),
        connect_and_hold(&listener6, Duration::from_millis(300)),
        bind_zero_and_hold(v4(), Duration::from_millis(250)),
        bind_zero_and_hold(v6(), Duration::from_millis(150)),
        listen_unbound_and_hold(v4(), Duration::from_millis(220)),
        listen_unbound_and_hold(v6(), Duration::from_millis(120)),
    ];
    let listener_ports = [
        listener4.local_addr().expect("addr").port(),
        listener6.local_addr().expect("addr").port(),
    ];
    let start = Instant::now();
    drop(listener4);
    drop(listener6);
    let closed = start.elapsed();
    // Let the last releases reach the ring buffer before stopping.
    sleep(Duration::from_millis(200));
    let (events, report) = tracer.stop();
    assert_eq!(
        common::our_findings(&events),
        Vec::<String>::new(),
        "no finding names this workload"
    );

    let allocs = ours(&events, "alloc");
    let releases = ours(&events, "release");
    for e in &expected {
        check(e, &allocs, &releases);
    }
    for port in listener_ports {
        let alloc = find(&allocs, port);
        assert_eq!(alloc.len(), 1, "listener port {port}: {alloc:?}");
        assert_eq!(alloc[0]["kind"], "bind");
        assert_eq!(find(&releases, port).len(), 1, "listener {port} released");
    }
    assert!(closed < TOLERANCE);

    // The report agrees with the event stream, and nothing was lost.
    let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count() as u64;
    assert_eq!(report["totals"]["alloc"], count("alloc"), "{report}");
    assert_eq!(report["totals"]["release"], count("release"), "{report}");
    assert_eq!(report["totals"]["lost"], 0, "{report}");
    assert!(report["lifetime_ns"]["by_proto"]["tcp"]["count"].as_u64() >= Some(8));
    assert!(report["lifetime_ns"]["by_kind"]["listen"]["count"].as_u64() >= Some(2));
}

#[test]
fn explicitly_requested_ports_are_not_allocations() {
    if skip_unless_root("explicitly_requested_ports_are_not_allocations") {
        return;
    }
    let _alone = common::one_at_a_time();
    let tracer = Tracer::start(&[]);
    // Ports below the default ephemeral range (32768-60999): the kernel never hands these
    // out, so any alloc naming them would be a misreport.
    let base = 20_000 + (std::process::id() % 5_000) as u16;
    let listener = (base..base + 100)
        .find_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
        .expect("a free explicit port");
    let listen_port = listener.local_addr().expect("addr").port();
    let client = tcp(&v4());
    let client_port = (base + 100..base + 200)
        .find(|&port| {
            client
                .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .is_ok()
        })
        .expect("a free explicit client port");
    client
        .connect(&listener.local_addr().expect("addr").into())
        .expect("connect from an explicit port");
    let (accepted, _) = listener.accept().expect("accept");
    sleep(Duration::from_millis(50));
    rst_close(client);
    drop(accepted);
    drop(listener);
    sleep(Duration::from_millis(200));
    let (events, _) = tracer.stop();
    assert_eq!(
        common::our_findings(&events),
        Vec::<String>::new(),
        "no finding names this workload"
    );

    // No allocation line: the capture's `explicit_*` records (for replay) say they were
    // held, not allocated.
    let ours_any: Vec<_> = events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(std::process::id())))
        .filter(|e| ["alloc", "release", "fail"].contains(&e["type"].as_str().unwrap_or("")))
        .collect();
    for port in [listen_port, client_port] {
        let hits: Vec<_> = ours_any
            .iter()
            .filter(|e| e["port"].as_u64() == Some(u64::from(port)))
            .collect();
        assert!(hits.is_empty(), "explicit port {port} reported: {hits:?}");
    }
}

#[test]
fn release_is_attributed_to_the_allocating_process_from_another_context() {
    if skip_unless_root("release_is_attributed_to_the_allocating_process_from_another_context") {
        return;
    }
    let _alone = common::one_at_a_time();
    let tracer = Tracer::start(&[]);
    let listener = TcpListener::bind(v4()).expect("listener");
    let client = tcp(&v4());
    client
        .connect(&listener.local_addr().expect("addr").into())
        .expect("connect");
    let port = local_port(&client);
    let (accepted, _) = listener.accept().expect("accept");
    let accepted = Socket::from(accepted);
    // Another process holds the accepted socket (as its stdin) and resets the connection
    // when it exits. Our socket, still open, goes ESTABLISHED->CLOSE while the kernel
    // handles that RST in the other process's context, not in ours.
    accepted
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    let mut peer = Command::new("sleep")
        .arg("0.2")
        .stdin(Stdio::from(OwnedFd::from(accepted)))
        .spawn()
        .expect("spawn sleep");
    peer.wait().expect("sleep exits");
    sleep(Duration::from_millis(100));
    let (events, _) = tracer.stop();
    assert_eq!(
        common::our_findings(&events),
        Vec::<String>::new(),
        "no finding names this workload"
    );
    drop(client);

    let releases = ours(&events, "release");
    let release = find(&releases, port);
    assert_eq!(release.len(), 1, "release of {port} by our pid: {events:?}");
    // Released when the peer reset it (~200 ms), not when we closed (after tracing).
    let lifetime = release[0]["lifetime_ns"].as_u64().expect("lifetime");
    assert!(
        (150_000_000..1_000_000_000).contains(&lifetime),
        "{}",
        release[0]
    );
    assert_eq!(release[0]["kind"], "connect");
    assert_eq!(
        release[0]["pid"].as_u64(),
        Some(u64::from(std::process::id()))
    );
    assert_ne!(release[0]["comm"], "sleep", "{}", release[0]);
}
