//! UDP ports the kernel chooses: bind(0), connect() autobind, first sendto() autobind; IPv4
//! and IPv6; with lifetimes from the real kernel.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, ours, skip_unless_root};
use serde_json::Value;

const TOLERANCE: Duration = Duration::from_millis(50);

struct Case {
    socket: UdpSocket,
    kind: &'static str,
    family: &'static str,
    started: Instant,
}

fn loopback(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

fn unbound(v6: bool) -> UdpSocket {
    let domain = if v6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    socket2::Socket::new(domain, socket2::Type::DGRAM, None)
        .expect("udp socket")
        .into()
}

#[test]
fn kernel_chosen_udp_ports_are_reported_with_their_lifetimes() {
    if skip_unless_root("kernel_chosen_udp_ports_are_reported_with_their_lifetimes") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let sink = UdpSocket::bind(loopback(false, 0)).expect("v4 sink");
    let sink6 = UdpSocket::bind(loopback(true, 0)).expect("v6 sink");
    let sink_port = sink.local_addr().expect("sink").port();
    let sink6_port = sink6.local_addr().expect("sink6").port();
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        let target = if v6 {
            sink6.local_addr()
        } else {
            sink.local_addr()
        }
        .expect("sink address");

        let started = Instant::now();
        let socket = UdpSocket::bind(loopback(v6, 0)).expect("bind(0)");
        cases.push(Case {
            socket,
            kind: "bind",
            family,
            started,
        });

        let started = Instant::now();
        let socket = unbound(v6);
        socket.connect(target).expect("connect autobinds");
        cases.push(Case {
            socket,
            kind: "connect",
            family,
            started,
        });

        let started = Instant::now();
        let socket = unbound(v6);
        socket.send_to(b"hello", target).expect("sendto autobinds");
        socket.send_to(b"again", target).expect("second send");
        cases.push(Case {
            socket,
            kind: "sendmsg",
            family,
            started,
        });
    }
    sleep(Duration::from_millis(150));
    let mut expected = Vec::new();
    for case in cases {
        let port = case.socket.local_addr().expect("getsockname").port();
        drop(case.socket);
        expected.push((port, case.kind, case.family, case.started.elapsed()));
    }
    sleep(Duration::from_millis(100));
    let (events, report) = tracer.stop();
    assert_eq!(
        common::our_findings(&events),
        Vec::<String>::new(),
        "no finding names this workload"
    );

    let allocs = ours(&events, "alloc");
    let releases = ours(&events, "release");
    let on_port = |records: &[&Value], port: u16| -> Vec<Value> {
        records
            .iter()
            .filter(|e| e["proto"] == "udp" && e["port"].as_u64() == Some(u64::from(port)))
            .map(|e| (*e).clone())
            .collect()
    };
    for (port, kind, family, held) in expected {
        let alloc = on_port(&allocs, port);
        assert_eq!(alloc.len(), 1, "{kind}/{family} port {port}: {alloc:?}");
        assert_eq!(alloc[0]["kind"], kind, "{}", alloc[0]);
        assert_eq!(alloc[0]["family"], family, "{}", alloc[0]);
        if kind == "connect" {
            let sink_port = if family == "ipv6" {
                sink6_port
            } else {
                sink_port
            };
            assert_eq!(
                alloc[0]["rport"].as_u64(),
                Some(u64::from(sink_port)),
                "{}",
                alloc[0]
            );
            let loopback = if family == "ipv6" { "::1" } else { "127.0.0.1" };
            assert_eq!(alloc[0]["raddr"], loopback, "{}", alloc[0]);
        } else {
            assert!(alloc[0].get("rport").is_none(), "{}", alloc[0]);
        }
        let release = on_port(&releases, port);
        assert_eq!(release.len(), 1, "{kind}/{family} release: {release:?}");
        let lifetime = Duration::from_nanos(release[0]["lifetime_ns"].as_u64().expect("ns"));
        assert!(
            lifetime.abs_diff(held) <= TOLERANCE,
            "{kind}/{family}: lifetime {lifetime:?}, held {held:?}"
        );
    }
    assert!(report["lifetime_ns"]["by_proto"]["udp"]["count"].as_u64() >= Some(6));
    assert_eq!(report["totals"]["lost"], 0);
}

#[test]
fn filters_narrow_what_is_reported() {
    if skip_unless_root("filters_narrow_what_is_reported") {
        return;
    }
    let pid = std::process::id().to_string();
    let tracer = Tracer::start(&["--proto", "udp", "--family", "ipv4", "--pid", &pid]);
    let udp4 = UdpSocket::bind(loopback(false, 0)).expect("udp v4");
    let udp6 = UdpSocket::bind(loopback(true, 0)).expect("udp v6");
    let tcp4 = std::net::TcpListener::bind(loopback(false, 0)).expect("tcp v4");
    let ports = [&udp4.local_addr(), &udp6.local_addr(), &tcp4.local_addr()]
        .map(|a| u64::from(a.as_ref().expect("addr").port()));
    drop((udp4, udp6, tcp4));
    sleep(Duration::from_millis(200));
    let (events, report) = tracer.stop();
    assert_eq!(
        common::our_findings(&events),
        Vec::<String>::new(),
        "no finding names this workload"
    );
    let reported: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "alloc")
        .filter_map(|e| e["port"].as_u64())
        .collect();
    assert!(
        reported.contains(&ports[0]),
        "udp v4 is reported: {events:?}"
    );
    assert!(!reported.contains(&ports[1]), "udp v6 is filtered out");
    assert!(!reported.contains(&ports[2]), "tcp is filtered out");
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "alloc")
            .all(|e| e["proto"] == "udp"
                && e["family"] == "ipv4"
                && e["pid"].as_u64() == Some(u64::from(std::process::id())))
    );
    assert_eq!(
        report["totals"]["alloc"].as_u64(),
        Some(reported.len() as u64)
    );
}

/// `--proto` filters in the kernel: sockets of the other protocol take no table entry. With
/// the smallest socket table, 1100 UDP sockets held at once overflow it when UDP is traced,
/// and leave it untouched under `--proto tcp`, where a TCP connect is still reported.
#[test]
fn proto_filter_runs_in_the_kernel() {
    if skip_unless_root("proto_filter_runs_in_the_kernel") {
        return;
    }
    // 1100 sockets at once: more than the 1024 files a process may open by default (root
    // may raise the hard limit too).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_max = limit.rlim_max.max(4_096);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    if limit.rlim_cur < 1_200 {
        eprintln!(
            "skipped proto_filter_runs_in_the_kernel: needs 1200 open files, the limit is {} \
             and this root may not raise it (no CAP_SYS_RESOURCE)",
            limit.rlim_cur
        );
        return;
    }
    let held_udp = || -> Vec<UdpSocket> {
        (0..1_100)
            .map(|_| UdpSocket::bind(loopback(false, 0)).expect("udp bind(0)"))
            .collect()
    };
    let lost_with = |args: &[&str]| {
        let tracer = Tracer::start(args);
        let listener = std::net::TcpListener::bind(loopback(false, 0)).expect("listener");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let port = u64::from(client.local_addr().expect("addr").port());
        let sockets = held_udp();
        drop((sockets, client, listener));
        sleep(Duration::from_millis(300));
        let (events, report) = tracer.stop();
        assert_eq!(
            common::our_findings(&events),
            Vec::<String>::new(),
            "no finding names this workload"
        );
        let connect_seen = ours(&events, "alloc")
            .iter()
            .any(|e| e["port"].as_u64() == Some(port) && e["kind"] == "connect");
        (
            report["lost"]["socket_table_full"].as_u64(),
            connect_seen,
            events,
        )
    };
    let (lost, connect_seen, _) = lost_with(&["--max-sockets", "1024"]);
    assert!(
        lost > Some(0),
        "1100 UDP sockets overflow a 1024-entry table"
    );
    assert!(connect_seen);
    let (lost, connect_seen, events) = lost_with(&["--max-sockets", "1024", "--proto", "tcp"]);
    assert_eq!(lost, Some(0), "the kernel never tracked the UDP sockets");
    assert!(connect_seen, "TCP is still traced");
    assert!(events.iter().all(|e| e["proto"] != "udp"));
}
