//! `port-trace explain PORT`: the IANA facts, this host's ephemeral range, and who holds the
//! port now, checked against sockets the test itself opens.

mod common;

use std::{
    net::{Ipv4Addr, TcpListener},
    process::{Command, Output},
};

use common::binary;
use serde_json::Value;

fn explain(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("explain")
        .args(args)
        .output()
        .expect("port-trace runs")
}

fn text(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// This host's ephemeral range, as the kernel says.
fn host_range() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("range");
    let mut parts = range.split_whitespace().map(|p| p.parse().expect("number"));
    (parts.next().expect("low"), parts.next().expect("high"))
}

#[test]
fn port_60068_is_dynamic_unassigned_and_judged_against_this_hosts_range() {
    let out = text(&explain(&["60068"]));
    assert!(
        out.contains("dynamic (private) ports, 49152-65535"),
        "{out}"
    );
    assert!(out.contains("IANA:         not assigned"), "{out}");
    let (low, high) = host_range();
    let expected = if (low..=high).contains(&60068) {
        format!("yes, inside {low}-{high}")
    } else {
        format!("no, outside {low}-{high}")
    };
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains("held by:"), "{out}");
}

#[test]
fn port_443_is_https() {
    let out = text(&explain(&["443"]));
    assert!(out.contains("system (well-known) ports, 0-1023"), "{out}");
    assert!(
        out.contains("https/tcp: http protocol over TLS/SSL"),
        "{out}"
    );
}

#[test]
fn names_who_holds_a_port_now() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let port = listener.local_addr().expect("addr").port().to_string();
    let output = explain(&[&port, "--json"]);
    let value: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let holders = value["holders"].as_array().expect("holders");
    let ours = holders
        .iter()
        .find(|h| h["state"] == "LISTEN" && h["proto"] == "tcp")
        .unwrap_or_else(|| panic!("our listener is missing: {value}"));
    assert_eq!(
        ours["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{ours}"
    );
    assert_eq!(ours["laddr"], "127.0.0.1");
    assert_eq!(
        value["port"].as_u64().map(|p| p.to_string()),
        Some(port.clone())
    );
    // --proto udp leaves the TCP listener out.
    let udp = explain(&[&port, "--json", "--proto", "udp"]);
    let udp: Value = serde_json::from_slice(&udp.stdout).expect("JSON");
    assert!(
        udp["holders"].as_array().is_some_and(Vec::is_empty),
        "{udp}"
    );
}

#[test]
fn without_root_it_says_what_it_could_not_see() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let out = text(&explain(&["443"]));
        assert!(out.contains("port 443"), "{out}");
        return;
    }
    // As root: hold a port, then ask about it as nobody.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let port = listener.local_addr().expect("addr").port().to_string();
    let Some(output) = common::run_unprivileged(&["explain", &port]) else {
        return;
    };
    let out = text(&output);
    // The socket is seen (sock_diag answers anyone), its owner is root's to know.
    assert!(out.contains("LISTEN"), "{out}");
    assert!(out.contains("held by:      ? tcp"), "{out}");
    assert!(out.contains("visible to root only"), "{out}");
}

#[test]
fn bad_ports_are_usage_errors() {
    for bad in ["65536", "-1", "http"] {
        let output = explain(&[bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}
