//! Failed allocations, driven for real in a network namespace with a 10-port ephemeral range:
//! TCP connect() EADDRNOTAVAIL, bind(0) and listen() without bind EADDRINUSE, UDP autobind
//! EAGAIN. Each names who
//! failed and, for connect, where to.

mod common;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use common::{Tracer, enter_tiny_netns, ours, skip_unless_root};

const LOW: u16 = 40_000;
const HIGH: u16 = 40_009;

#[test]
fn exhaustion_failures_are_reported_with_who_and_where() {
    if skip_unless_root("exhaustion_failures_are_reported_with_who_and_where") {
        return;
    }
    let tracer = Tracer::start(&[]);
    // Everything happens in one thread that alone lives in the tiny namespace.
    let (netns, listen_port) = thread::spawn(|| {
        let netns = enter_tiny_netns(LOW, HIGH);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener");
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
        // Ten held connects to one destination use up the range for it; the eleventh fails.
        let mut held = Vec::new();
        let err = loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(stream) => held.push(stream),
                Err(err) => break err,
            }
            assert!(held.len() <= 10, "the range should be exhausted by now");
        };
        assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{err}");
        assert_eq!(held.len(), 10);
        // All ten ports are in use, so a bind(0) finds none either.
        let err = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect_err("bind(0) fails");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        // Nor does listen() on a socket never bound.
        let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("tcp socket");
        let err = unbound.listen(8).expect_err("listen without bind fails");
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        drop(held);
        drop(listener);
        // UDP: ten bound sockets fill the range; an autobinding connect() gets EAGAIN.
        let udp: Vec<UdpSocket> = (LOW..=HIGH)
            .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind(0)"))
            .collect();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("udp socket");
        let err = socket
            .connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, 9)).into())
            .expect_err("autobind fails");
        assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
        drop(udp);
        (netns, 5000)
    })
    .join()
    .expect("netns thread");
    thread::sleep(Duration::from_millis(200));
    let (events, report) = tracer.stop();

    let fails = ours(&events, "fail");
    let in_netns: Vec<_> = fails
        .iter()
        .filter(|f| f["netns"].as_u64() == Some(netns))
        .collect();
    let find = |proto: &str, kind: &str, error: &str| {
        in_netns
            .iter()
            .filter(|f| f["proto"] == proto && f["kind"] == kind && f["error"] == error)
            .count()
    };
    assert_eq!(find("tcp", "connect", "EADDRNOTAVAIL"), 1, "{fails:?}");
    assert_eq!(find("tcp", "bind", "EADDRINUSE"), 1, "{fails:?}");
    assert_eq!(find("tcp", "listen", "EADDRINUSE"), 1, "{fails:?}");
    assert_eq!(find("udp", "connect", "EAGAIN"), 1, "{fails:?}");
    let connect = in_netns
        .iter()
        .find(|f| f["error"] == "EADDRNOTAVAIL")
        .expect("connect failure");
    assert_eq!(connect["errno"], 99);
    assert_eq!(connect["raddr"], "127.0.0.1");
    assert_eq!(connect["rport"], listen_port);
    assert!(connect["comm"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(report["totals"]["fail"].as_u64(), Some(fails.len() as u64));
    assert_eq!(report["fail_by_error"]["EADDRNOTAVAIL"].as_u64(), Some(1));
    // The ten successful connects in the namespace were allocations from the range.
    let allocs: Vec<_> = ours(&events, "alloc")
        .into_iter()
        .filter(|a| a["netns"].as_u64() == Some(netns) && a["kind"] == "connect")
        .filter(|a| a["proto"] == "tcp")
        .collect();
    assert_eq!(allocs.len(), 10);
    assert!(
        allocs
            .iter()
            .all(|a| (u64::from(LOW)..=u64::from(HIGH)).contains(&a["port"].as_u64().unwrap_or(0)))
    );
}
