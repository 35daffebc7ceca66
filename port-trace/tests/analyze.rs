//! `port-trace analyze`: a live trace's `--events json` capture, replayed, gives the live
//! run's totals, lifetimes, scopes, warnings, findings and held ports; on stdin too; a bad line is
//! exit 2 naming it.

mod common;

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{Netns, Tracer, binary, skip_unless_root};
use serde_json::Value;
use socket2::Socket;

/// A 10-port range: TIME_WAIT, take-overs, warnings and failures all show in a few
/// connections.
const RANGE: (u16, u16) = (40_000, 40_009);

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("port-trace-analyze-{}-{name}", std::process::id()))
}

/// In the namespace: sockets bound to port 0 then connected (bind before connect), RST-closed
/// connections (lifetimes, no TIME_WAIT), actively closed ones
/// (TIME_WAIT; after a second `tcp_tw_reuse` takes some over: releases with
/// `time_wait_ns`), UDP sends, open connections at the end and connects that find the range
/// full. Returns what must stay alive until the trace stops.
fn workload() -> (Vec<TcpStream>, TcpListener) {
    // A port asked for by number, inside the range: occupancy counts it, no allocation.
    let explicit = TcpListener::bind((Ipv4Addr::LOCALHOST, RANGE.1)).expect("explicit bind");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5_000)).expect("listener");
    let target = listener.local_addr().expect("addr");
    // Bound to port 0 before connecting (bind before connect), reset at once.
    for _ in 0..3 {
        let socket =
            Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind(0)");
        socket.connect(&target.into()).expect("connect");
        drop(listener.accept().expect("accept"));
        socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    }
    let mut accepted = Vec::new();
    let connect = |accepted: &mut Vec<TcpStream>| -> Option<TcpStream> {
        let client = TcpStream::connect(target).ok()?;
        accepted.push(listener.accept().expect("accept").0);
        Some(client)
    };
    for _ in 0..3 {
        let client = connect(&mut accepted).expect("connect");
        sleep(Duration::from_millis(20));
        let socket = Socket::from(client);
        socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        drop(socket);
    }
    // Closed here first, then by the peer: TIME_WAIT on this side.
    for _ in 0..6 {
        drop(connect(&mut accepted).expect("connect"));
        sleep(Duration::from_millis(5));
        drop(accepted.pop());
    }
    let udp_peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 5_001)).expect("udp peer");
    for _ in 0..3 {
        let udp = UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("udp");
        udp.send_to(b"x", udp_peer.local_addr().expect("addr"))
            .expect("send");
        sleep(Duration::from_millis(10));
    }
    // TIME_WAIT older than a second may be taken over (tcp_tw_reuse).
    sleep(Duration::from_millis(1_200));
    for _ in 0..3 {
        if let Some(client) = connect(&mut accepted) {
            drop(client);
            sleep(Duration::from_millis(5));
            drop(accepted.pop());
        }
    }
    // Held at the end, until the range is full: the rest fail.
    let mut open = Vec::new();
    for _ in 0..12 {
        if let Some(client) = connect(&mut accepted) {
            open.push(client);
        }
    }
    open.extend(accepted);
    (open, explicit)
}

fn analyze(args: &[&str], stdin: Option<&Path>) -> std::process::Output {
    let mut command = Command::new(binary());
    command
        .arg("analyze")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = stdin {
        command.stdin(std::fs::File::open(path).expect("capture"));
    }
    command.output().expect("port-trace analyze runs")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}

#[test]
fn a_capture_replays_to_the_live_runs_report() {
    if skip_unless_root("a_capture_replays_to_the_live_runs_report") {
        return;
    }
    let netns = Netns::new();
    netns.sysctl("net/ipv4/tcp_tw_reuse", "1");
    netns.sysctl(
        "net/ipv4/ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    let tracer = Tracer::start(&["--netns", &netns.inode().to_string()]);
    let held = netns.run(workload);
    sleep(Duration::from_millis(300));
    let ready = tracer.ready.clone();
    let (records, live) = tracer.stop();
    drop(held);

    let capture = temp("capture.jsonl");
    let mut file = std::fs::File::create(&capture).expect("capture file");
    for record in std::iter::once(&ready).chain(&records) {
        writeln!(file, "{record}").expect("write capture");
    }
    drop(file);
    let kinds = |kind: &str| records.iter().filter(|r| r["type"] == kind).count();
    assert!(
        kinds("range") >= 1,
        "the capture records the namespace's range"
    );
    assert!(kinds("end") == 1, "and how long the trace ran");
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "explicit_alloc" && r["port"] == RANGE.1),
        "the port asked for by number: {records:?}"
    );
    assert!(
        kinds("time_wait") >= 6,
        "and every active close's TIME_WAIT: {records:?}"
    );
    let live_warnings = kinds("warning");
    assert!(live_warnings > 0, "the workload fills the range");
    assert!(
        live["totals"]["fail"].as_u64() > Some(0),
        "and fails: {live}"
    );
    assert!(
        records.iter().any(|r| r["time_wait_ns"].as_u64() > Some(0)),
        "a TIME_WAIT connection was taken over"
    );

    let replayed = temp("replayed.json");
    let out = analyze(
        &[
            capture.to_str().expect("utf-8"),
            "--report",
            replayed.to_str().expect("utf-8"),
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "analyze: {stderr}");
    let replay = read_json(&replayed);
    for field in [
        "backend",
        "totals",
        "held_at_exit",
        "lifetime_ns",
        "scopes",
        "alloc_by_process",
    ] {
        assert_eq!(live[field], replay[field], "{field}: live vs replay");
    }
    assert_eq!(live["duration_ns"], replay["duration_ns"]);
    assert!(
        live["held_at_exit"].as_u64() > Some(4),
        "TIME_WAIT and open connections held at the end: {live}"
    );
    let replay_warnings = stderr
        .lines()
        .filter(|l| l.starts_with("WARNING") || l.starts_with("CRITICAL"))
        .count();
    assert_eq!(live_warnings, replay_warnings, "warnings: {stderr}");
    // The same findings, in force at the end and as said along the way.
    let in_force = |report: &Value| {
        let mut kinds: Vec<String> = report["findings"]
            .as_array()
            .map(|all| all.iter().map(|f| f["kind"].to_string()).collect())
            .unwrap_or_default();
        kinds.sort();
        kinds
    };
    assert!(
        in_force(&live).contains(&"\"bind_before_connect\"".to_string()),
        "{}",
        live["findings"]
    );
    assert_eq!(
        live["findings"], replay["findings"],
        "findings: live vs replay"
    );
    let said_live = records.iter().filter(|r| r["type"] == "finding").count();
    let said_replay = stderr.lines().filter(|l| l.starts_with("FINDING")).count();
    assert_eq!(said_live, said_replay, "findings said: {stderr}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(!summary.is_empty(), "the summary on stdout");

    // The same capture on stdin, with a record of a type from the future; the metrics text.
    let future = temp("future.jsonl");
    let mut text = std::fs::read_to_string(&capture).expect("capture");
    text.push_str("{\"type\":\"from_the_future\",\"kind\":\"new\"}\n");
    std::fs::write(&future, text).expect("write");
    let out = analyze(&["-", "--metrics"], Some(&future));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped records of types this version does not replay: 1 from_the_future"),
        "{stderr}"
    );
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.contains("port_trace_allocations_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("fullest ephemeral ranges"),
        "no summary: {metrics}"
    );

    // A line cut short: exit 2, naming it.
    let text = std::fs::read_to_string(&capture).expect("capture");
    let lines: Vec<&str> = text.lines().collect();
    let cut = temp("cut.jsonl");
    let mut broken: Vec<String> = lines.iter().map(ToString::to_string).collect();
    broken[2] = broken[2][..broken[2].len() / 2].to_string();
    std::fs::write(&cut, broken.join("\n")).expect("write");
    let out = analyze(&[cut.to_str().expect("utf-8")], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3:"), "{stderr}");
    for path in [capture, replayed, cut, future] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn an_empty_capture_makes_a_page_that_does_not_claim_a_date() {
    let capture = temp("empty.jsonl");
    let page = temp("empty.html");
    std::fs::write(&capture, "").expect("capture");
    let output = analyze(
        &[
            capture.to_str().expect("utf-8"),
            "--html",
            page.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.contains("id=\"totals\""), "{html}");
    assert!(!html.contains("1970"), "no epoch-zero dates: {html}");
    let _ = std::fs::remove_file(capture);
    let _ = std::fs::remove_file(page);
}
