//! SIGINT and SIGTERM detach every program: nothing of port-trace stays in the kernel.

mod common;

use std::{
    sync::{Mutex, PoisonError},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, skip_unless_root};

/// How many programs with port-trace's program names the kernel has loaded now.
fn loaded_port_trace_programs() -> usize {
    // Kernel program names are cut to 15 bytes; these are port-trace's, unique enough.
    const NAMES: [&str; 7] = [
        "tcp_state",
        "tcp_port_chosen",
        "bind4_request",
        "bind6_request",
        "post_bind4",
        "post_bind6",
        "sock_release",
    ];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str().is_some_and(|name| NAMES.contains(&name)))
        .count()
}

/// The tests here count programs, so they must not run their tracers at the same time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn signals_detach_every_program() {
    if skip_unless_root("signals_detach_every_program") {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let before = loaded_port_trace_programs();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut tracer = Tracer::start(&[]);
        assert_eq!(
            loaded_port_trace_programs(),
            before + 7,
            "all seven attached"
        );
        let (_, report) = tracer.stop_with(signal);
        assert_eq!(report["totals"]["lost"], 0);
        // The kernel frees detached programs asynchronously (after an RCU grace period), so
        // give it a moment; a program still loaded after that is a leak.
        let deadline = Instant::now() + Duration::from_secs(5);
        while loaded_port_trace_programs() != before && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        assert_eq!(
            loaded_port_trace_programs(),
            before,
            "signal {signal} left programs loaded"
        );
    }
}

#[test]
fn duration_ends_the_trace_and_text_events_have_a_header() {
    if skip_unless_root("duration_ends_the_trace_and_text_events_have_a_header") {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let output = std::process::Command::new(common::binary())
        .args(["--duration", "1s", "--events", "text"])
        .output()
        .expect("port-trace runs");
    assert!(output.status.success(), "{output:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("EVENT") && header.contains("LIFETIME"),
        "{stdout}"
    );
    // The final summary goes to stderr when events own stdout.
    assert!(String::from_utf8_lossy(&output.stderr).contains("allocated"));
}
