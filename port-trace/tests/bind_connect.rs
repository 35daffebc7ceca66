//! Bind before connect, for real and on each backend (the kernel side reports a socket whose
//! port came from bind(0) going on to connect()): a client that binds to port 0 and then
//! connects runs a 20-port range out after 20 connections over two destinations, and
//! port-trace names it, with the process and IP_BIND_ADDRESS_NO_PORT, before the first bind()
//! fails, and again, critical, when it does. The same client with IP_BIND_ADDRESS_NO_PORT
//! makes twice the connections in the same range and is named by nothing.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use common::{Netns, Tracer, skip_unless_root};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

const RANGE: (u16, u16) = (40_000, 40_019);

/// Binds a TCP socket to 127.0.0.1:0 (with IP_BIND_ADDRESS_NO_PORT if `no_port`), then
/// connects it to `to`; the error, and at which step, if one failed.
fn bind_then_connect(to: SocketAddr, no_port: bool) -> Result<Socket, String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    if no_port {
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_BIND_ADDRESS_NO_PORT");
    }
    let any_port = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    socket
        .bind(&any_port.into())
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(&to.into())
        .map_err(|e| format!("connect: {e}"))?;
    Ok(socket)
}

/// In a fresh namespace with the 20-port range, two listeners, and port-trace watching:
/// connects (bound first) alternately to both until 40 are made or one fails; returns the
/// connections made, the first error, and what port-trace printed.
fn run(no_port: bool) -> (usize, Option<String>, Vec<Value>) {
    let netns = Netns::new();
    netns.sysctl(
        "net/ipv4/ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    let inode = netns.inode().to_string();
    let tracer = Tracer::start(&["--interval", "1s", "--netns", &inode]);
    let (made, error, _keep) = netns.run(|| {
        let listeners = [
            TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener"),
            TcpListener::bind((Ipv4Addr::LOCALHOST, 5001)).expect("listener"),
        ];
        let mut held = Vec::new();
        let mut error = None;
        for i in 0..40 {
            let to = listeners[i % 2].local_addr().expect("addr");
            match bind_then_connect(to, no_port) {
                Ok(socket) => held.push(socket),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            // Paced a little: under emulation the daemon sees them as they come.
            thread::sleep(Duration::from_millis(20));
        }
        (held.len(), error, (held, listeners))
    });
    thread::sleep(Duration::from_millis(2_500));
    let (events, _) = tracer.stop();
    (made, error, events)
}

fn findings<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "finding" && e["kind"] == kind)
        .collect()
}

#[test]
fn bind_before_connect_is_named_before_bind_fails() {
    if skip_unless_root("bind_before_connect_is_named_before_bind_fails") {
        return;
    }
    let (made, error, events) = run(false);
    // The kernel's own verdict: one port per connection, whatever the destination.
    assert_eq!(made, 20, "connections before the range ran out ({error:?})");
    let error = error.unwrap_or_default();
    assert!(error.starts_with("bind:"), "{error}");
    let bound_connects = events
        .iter()
        .filter(|e| e["type"] == "bound_connect")
        .collect::<Vec<_>>();
    assert_eq!(bound_connects.len(), 20, "one bound_connect per connection");
    let first = bound_connects[0];
    assert_eq!(first["kind"], "bind", "{first}");
    assert_eq!(first["raddr"], "127.0.0.1", "{first}");
    assert_eq!(first["rport"].as_u64(), Some(5000), "{first}");

    let found = findings(&events, "bind_before_connect");
    assert!(!found.is_empty(), "no bind_before_connect finding");
    let at = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let named = at(&|e| e["type"] == "finding" && e["kind"] == "bind_before_connect");
    let failed = at(&|e| e["type"] == "fail" && e["kind"] == "bind");
    assert!(failed.is_some(), "the failed bind() is reported");
    assert!(
        named < failed,
        "named at {named:?}, bind failed at {failed:?}"
    );
    let first = found[0];
    assert_eq!(first["severity"], "warn", "{first}");
    assert_eq!(
        first["who"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{first}"
    );
    let remedy = first["remedy"].as_str().unwrap_or_default();
    assert!(remedy.contains("IP_BIND_ADDRESS_NO_PORT"), "{remedy}");
    // And critical once bind() found no port.
    let critical = found
        .iter()
        .find(|f| f["severity"] == "critical")
        .unwrap_or_else(|| panic!("no critical finding: {found:?}"));
    assert!(
        critical["evidence"]["bind_failures"].as_u64() >= Some(1),
        "{critical}"
    );
    assert_eq!(
        critical["evidence"]["destinations"].as_u64(),
        Some(2),
        "{critical}"
    );
}

#[test]
fn bind_address_no_port_takes_ports_per_destination_and_is_not_named() {
    if skip_unless_root("bind_address_no_port_takes_ports_per_destination_and_is_not_named") {
        return;
    }
    let (made, error, events) = run(true);
    // 20 ports for each of the two destinations: the remedy works.
    assert_eq!(made, 40, "{error:?}");
    assert!(
        events.iter().all(|e| e["type"] != "bound_connect"),
        "connect() chose these ports"
    );
    assert!(
        findings(&events, "bind_before_connect").is_empty(),
        "{:?}",
        findings(&events, "bind_before_connect")
    );
    let connects = events
        .iter()
        .filter(|e| e["type"] == "alloc" && e["kind"] == "connect")
        .count();
    assert_eq!(connects, 40, "each port chosen at connect()");
}
