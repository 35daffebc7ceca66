//! Warnings before exhaustion, for real: in a network namespace with a 10-port range, held
//! connects to one destination raise a warning (80%) and a critical one (95%) before the
//! connect that fails with EADDRNOTAVAIL, and the failure raises its own; bind(0) the same
//! for the namespace scope. Warnings name the namespace, scope, used/capacity and holders.
//! Sockets that exist before port-trace starts count from the first second.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{Tracer, enter_tiny_netns, skip_unless_root};
use serde_json::Value;

/// Index of the first record in `events` matching `pred`.
fn position(events: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

fn warning_in(netns: u64, scope: &'static str, level: &'static str) -> impl Fn(&Value) -> bool {
    move |e| {
        e["type"] == "warning"
            && e["netns"].as_u64() == Some(netns)
            && e["scope"] == scope
            && e["level"] == level
    }
}

/// A thread alone in a namespace with the 10-port range 40000-40009. `setup` runs there; what
/// it keeps (sockets) lives on with the namespace until the `TinyNetns` is dropped, since
/// port-trace reads a namespace's range when its first event arrives. Returns the
/// namespace's inode and what `setup` reports.
fn tiny_netns<R: Send + 'static, K: Send + 'static>(
    setup: impl FnOnce() -> (R, K) + Send + 'static,
) -> (u64, R, TinyNetns) {
    let (done, wait) = mpsc::channel::<()>();
    let (ready, started) = mpsc::channel();
    let worker = thread::spawn(move || {
        let netns = enter_tiny_netns(40_000, 40_009);
        let (report, keep) = setup();
        let _ = ready.send((netns, report));
        let _ = wait.recv();
        drop(keep);
    });
    let (netns, report) = started.recv().expect("netns thread ran");
    let guard = TinyNetns {
        done: Some(done),
        worker: Some(worker),
    };
    (netns, report, guard)
}

struct TinyNetns {
    done: Option<mpsc::Sender<()>>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Drop for TinyNetns {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Connects to a listener on port 5000 until the range runs out; keeps every socket.
fn connect_until_exhausted() -> (usize, (Vec<TcpStream>, TcpListener)) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5000)).expect("listener");
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, 5000));
    let mut held = Vec::new();
    while let Ok(stream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        held.push(stream);
        assert!(held.len() <= 10);
    }
    (held.len(), (held, listener))
}

/// Finds the `warn` and `critical` warnings of a scope and the failure with `error` in
/// `netns`, asserts they came in that order, and returns the warning.
fn warned_in_order<'a>(
    events: &'a [Value],
    netns: u64,
    scope: &'static str,
    error: &str,
) -> (&'a Value, usize) {
    let fail = position(events, |e| {
        e["type"] == "fail" && e["netns"].as_u64() == Some(netns) && e["error"] == error
    })
    .unwrap_or_else(|| panic!("no {error} failure in netns {netns}: {events:?}"));
    let warn = position(events, warning_in(netns, scope, "warn")).expect("warning");
    let critical = position(events, warning_in(netns, scope, "critical")).expect("critical");
    assert!(
        warn < critical && critical < fail,
        "warn {warn}, critical {critical}, fail {fail}"
    );
    let w = &events[warn];
    assert_eq!(
        (w["used"].as_u64(), w["capacity"].as_u64()),
        (Some(8), Some(10)),
        "{w}"
    );
    (w, fail)
}

#[test]
fn connect_exhaustion_is_warned_before_it_fails() {
    if skip_unless_root("connect_exhaustion_is_warned_before_it_fails") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let (netns, connected, held) = tiny_netns(connect_until_exhausted);
    assert_eq!(connected, 10);
    thread::sleep(Duration::from_millis(300));
    let (events, _) = tracer.stop();
    assert_eq!(
        common::our_findings_in(&events, netns),
        Vec::<String>::new(),
        "no finding names this workload"
    );
    drop(held);

    let (w, fail) = warned_in_order(&events, netns, "destination", "EADDRNOTAVAIL");
    assert_eq!(w["raddr"], "127.0.0.1");
    assert_eq!(w["rport"], 5000);
    assert_eq!(w["reason"], "threshold");
    assert_eq!(
        w["top"][0]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{w}"
    );
    assert_eq!(w["top"][0]["count"], 8);
    assert!(w.get("forecast_s").is_some(), "{w}");
    let critical = events
        .iter()
        .find(|e| warning_in(netns, "destination", "critical")(e))
        .expect("critical");
    assert_eq!(critical["used"], 10);

    // The failure itself is a critical warning too, after the fail record, naming who failed.
    let after = &events[fail + 1..];
    let failure = after
        .iter()
        .find(|e| e["type"] == "warning" && e["reason"] == "failure")
        .expect("failure warning");
    assert_eq!(failure["level"], "critical");
    assert_eq!(failure["scope"], "destination");
    assert_eq!(
        events[fail]["pid"].as_u64(),
        Some(u64::from(std::process::id()))
    );
    assert_eq!(events[fail]["rport"], 5000);
}

#[test]
fn bind_exhaustion_is_warned_before_it_fails() {
    if skip_unless_root("bind_exhaustion_is_warned_before_it_fails") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let (netns, (), held) = tiny_netns(|| {
        let mut held = Vec::new();
        while let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            held.push(listener);
            assert!(held.len() <= 10);
        }
        assert_eq!(held.len(), 10);
        ((), held)
    });
    thread::sleep(Duration::from_millis(300));
    let (events, _) = tracer.stop();
    assert_eq!(
        common::our_findings_in(&events, netns),
        Vec::<String>::new(),
        "no finding names this workload"
    );
    drop(held);

    let (w, _) = warned_in_order(&events, netns, "namespace", "EADDRINUSE");
    assert!(w.get("raddr").is_none(), "{w}");
}

#[test]
fn sockets_from_before_the_start_count_until_they_close() {
    if skip_unless_root("sockets_from_before_the_start_count_until_they_close") {
        return;
    }
    // Nine ports of ten taken before port-trace starts.
    let (close_some, wait) = mpsc::channel::<()>();
    let (done, finish) = mpsc::channel::<()>();
    let (ready, started) = mpsc::channel();
    let (closed, closed_some) = mpsc::channel();
    let worker = thread::spawn(move || {
        let netns = enter_tiny_netns(40_000, 40_009);
        let mut held: Vec<TcpListener> = (0..9)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind(0)"))
            .collect();
        let _ = ready.send(netns);
        let _ = wait.recv();
        held.truncate(4);
        let _ = closed.send(());
        let _ = finish.recv();
    });
    let netns = started.recv().expect("netns thread ran");
    let tracer = Tracer::start(&["--interval", "1s"]);
    // Counted from the start: 9 of 10 is past the warning line at once.
    thread::sleep(Duration::from_millis(300));
    let _ = close_some.send(());
    closed_some.recv().expect("closed five");
    // The next interval's snapshot sees five gone.
    thread::sleep(Duration::from_millis(2_500));
    let (events, report) = tracer.stop();
    // The snapshot cannot tell a port chosen by bind(0) from one asked for by number: its
    // listeners inside the range are named as such (truly: a connect() could have taken
    // them first), and nothing else.
    let ours = common::our_findings_in(&events, netns);
    assert!(
        ours.iter()
            .all(|f| f == "\"listener_in_range\" \"appeared\""),
        "{ours:?}"
    );
    drop(done);
    worker.join().expect("netns thread");

    let warning = events
        .iter()
        .find(|e| warning_in(netns, "namespace", "warn")(e))
        .unwrap_or_else(|| panic!("no warning for netns {netns}: {events:?}"));
    assert_eq!(
        (warning["used"].as_u64(), warning["capacity"].as_u64()),
        (Some(9), Some(10))
    );
    assert_eq!(
        warning["top"][0]["pid"].as_u64(),
        Some(u64::from(std::process::id()))
    );
    // No allocation of ours was traced: the nine came from the snapshot.
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "alloc" && e["netns"].as_u64() == Some(netns))
    );
    let scope = report["scopes"]
        .as_array()
        .and_then(|scopes| {
            scopes
                .iter()
                .find(|s| s["netns"].as_u64() == Some(netns) && s["scope"] == "namespace")
        })
        .unwrap_or_else(|| panic!("netns {netns} missing from {report}"));
    assert_eq!(scope["used"], 4, "{scope}");
    assert_eq!(scope["capacity"], 10, "{scope}");
}

#[test]
fn explicit_binds_inside_the_range_shrink_what_connect_can_use() {
    if skip_unless_root("explicit_binds_inside_the_range_shrink_what_connect_can_use") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let (netns, connected, held) = tiny_netns(|| {
        // Two ports of the range asked for by number, after port-trace started.
        let explicit: Vec<TcpListener> = [40_008, 40_009]
            .iter()
            .map(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("explicit bind"))
            .collect();
        let (connected, keep) = connect_until_exhausted();
        (connected, (keep, explicit))
    });
    thread::sleep(Duration::from_millis(300));
    let (events, _) = tracer.stop();
    // The two ports asked for inside the range are named, each with its remedy; nothing
    // else names us.
    let mut listeners: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "finding" && e["kind"] == "listener_in_range")
        .filter(|e| e["netns"].as_u64() == Some(netns))
        .filter(|e| e["who"]["pid"].as_u64() == Some(u64::from(std::process::id())))
        .filter_map(|e| e["evidence"]["port"].as_u64())
        .collect();
    listeners.sort_unstable();
    assert_eq!(listeners, [40_008, 40_009]);
    assert_eq!(
        common::our_findings_in(&events, netns).len(),
        2,
        "{events:?}"
    );
    drop(held);

    // The kernel left the two explicit ports out of connect()'s choice, and so does the model.
    assert_eq!(connected, 8);
    let critical = events
        .iter()
        .find(|e| warning_in(netns, "destination", "critical")(e))
        .unwrap_or_else(|| panic!("no critical warning: {events:?}"));
    assert_eq!(
        (critical["used"].as_u64(), critical["capacity"].as_u64()),
        (Some(8), Some(8))
    );
    // Explicit ports are still not allocations.
    assert!(!events.iter().any(|e| e["type"] == "alloc"
        && e["netns"].as_u64() == Some(netns)
        && matches!(e["port"].as_u64(), Some(40_008 | 40_009))));
}
