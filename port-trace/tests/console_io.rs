//! stdout and stderr cannot stop the trace, and every way out writes the report: stderr a
//! broken pipe, stdout's reader stalled under churn, stdout's reader gone (with and without
//! anything to write), SIGHUP. Real processes, real pipes, real kernel events.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, UdpSocket},
    path::PathBuf,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{backend_args, binary, skip_unless_root};
use serde_json::Value;

/// Ample for an orderly exit (the grace for a stalled stdout is one second); a tracer that
/// does not notice its signal or its reader waits forever, far beyond this.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// A port-trace started with `--events json --report FILE`, `ready` read from its stdout.
struct Run {
    child: Child,
    /// stdout, past the `ready` line (None once the test dropped it).
    stdout: Option<BufReader<ChildStdout>>,
    report: PathBuf,
    /// The `ready` record.
    ready: Value,
}

impl Run {
    fn start(name: &str, stderr: Stdio, extra_args: &[&str]) -> Run {
        let report = std::env::temp_dir().join(format!(
            "port-trace-console-io-{name}-{}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&report);
        let mut child = Command::new(binary())
            .args(["--events", "json", "--report"])
            .arg(&report)
            .args(backend_args())
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("port-trace starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut ready = String::new();
        stdout.read_line(&mut ready).expect("reads stdout");
        let ready: Value = serde_json::from_str(&ready)
            .unwrap_or_else(|e| panic!("ready is JSON ({e}): {ready:?}"));
        assert_eq!(ready["type"], "ready", "first record: {ready}");
        Run {
            child,
            stdout: Some(stdout),
            report,
            ready,
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// The exit status, if port-trace exits within `limit`.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waits") {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for a clean exit (0) within `EXIT_WITHIN`; returns the report and how long.
    fn expect_clean_exit(&mut self, what: &str) -> (Value, Duration) {
        let started = Instant::now();
        let status = self
            .wait_within(EXIT_WITHIN)
            .unwrap_or_else(|| panic!("{what}: port-trace still running after {EXIT_WITHIN:?}"));
        let took = started.elapsed();
        assert!(status.success(), "{what}: port-trace exited with {status}");
        let report = std::fs::read_to_string(&self.report)
            .unwrap_or_else(|e| panic!("{what}: no report ({e})"));
        let _ = std::fs::remove_file(&self.report);
        let report = serde_json::from_str(&report).expect("report is JSON");
        (report, took)
    }

    /// Reads (and drops) stdout to its end in a thread, as a reader that keeps up.
    fn keep_reading(&mut self) {
        let mut stdout = self.stdout.take().expect("stdout not taken yet");
        thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.report);
    }
}

/// `n` UDP ports taken with bind(0) and given back: two event lines each.
fn churn(n: usize) {
    for _ in 0..n {
        drop(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind(0)"));
    }
}

#[test]
fn a_broken_stderr_is_ignored_and_the_trace_runs_to_its_end() {
    if skip_unless_root("a_broken_stderr_is_ignored_and_the_trace_runs_to_its_end") {
        return;
    }
    // Summaries every 200ms go to stderr (stdout carries the JSON events).
    let mut run = Run::start(
        "stderr",
        Stdio::piped(),
        &["--interval", "200ms", "--duration", "2s"],
    );
    run.keep_reading();
    // stderr's reader goes away: every summary from now on meets a broken pipe.
    drop(run.child.stderr.take());
    churn(100);
    let (report, _) = run.expect_clean_exit("stderr closed");
    assert!(
        report["totals"]["alloc"].as_u64() >= Some(100),
        "the trace went on counting: {}",
        report["totals"]
    );
}

#[test]
fn a_broken_stderr_does_not_stop_the_logs_or_the_last_summary() {
    if skip_unless_root("a_broken_stderr_does_not_stop_the_logs_or_the_last_summary") {
        return;
    }
    // -v: the end of stdout's reader is logged (debug), and the last summary, with stdout
    // gone, goes to stderr: both meet the broken pipe.
    let mut run = Run::start("stderr-log", Stdio::piped(), &["-v", "--interval", "1h"]);
    drop(run.child.stderr.take());
    drop(run.stdout.take());
    churn(10);
    run.expect_clean_exit("stderr and stdout closed");
}

#[test]
fn a_stalled_stdout_reader_neither_blocks_the_trace_nor_its_signals() {
    if skip_unless_root("a_stalled_stdout_reader_neither_blocks_the_trace_nor_its_signals") {
        return;
    }
    let mut run = Run::start(
        "stalled",
        Stdio::inherit(),
        &["--interval", "1h", "--prometheus", "127.0.0.1:0"],
    );
    // Nobody reads stdout from here on, but the pipe stays open: a pipe holds 64 KiB, the
    // queue about 4 MiB, and 40,000 ports make some 80,000 lines of ~300 bytes.
    const PORTS: usize = 40_000;
    churn(PORTS);
    // Scrapes are answered all the same, and show the dropped lines.
    let exporter = run.ready["prometheus"].as_str().expect("metrics address");
    let (status, body) = common::http_get(exporter, "/metrics").expect("scrape answered");
    assert_eq!(status, 200);
    let dropped = body
        .lines()
        .find_map(|l| l.strip_prefix("port_trace_output_lines_dropped_total "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(dropped.is_some_and(|n| n > 0.0), "{body}");
    // The daemon is not stuck in write(): it hears SIGTERM and ends, report and all.
    run.signal(libc::SIGTERM);
    let (report, took) = run.expect_clean_exit("SIGTERM with stdout stalled");
    eprintln!("exited {took:?} after SIGTERM with stdout stalled");
    let totals = &report["totals"];
    let dropped = totals["output_lines_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "lines that did not fit are counted: {totals}");
    // The events were counted all the same: dropping lines is not losing events. (On a
    // busy machine the ring buffer may still overflow, counted as lost; that is not ours.)
    let alloc = totals["alloc"].as_u64().unwrap_or(0);
    let lost = report["lost"]["ring_buffer_full"].as_u64().unwrap_or(0);
    assert!(
        alloc + lost >= PORTS as u64,
        "every allocation counted or counted lost: {totals}"
    );
    drop(run.stdout.take());
}

#[test]
fn stdout_reader_gone_ends_the_trace_cleanly_with_its_report() {
    if skip_unless_root("stdout_reader_gone_ends_the_trace_cleanly_with_its_report") {
        return;
    }
    // As `port-trace --events json | head -1`: the reader took one line and left.
    let mut run = Run::start("gone", Stdio::inherit(), &["--interval", "1h"]);
    drop(run.stdout.take());
    // The next event line meets EPIPE.
    churn(100);
    let (report, took) = run.expect_clean_exit("stdout's reader gone");
    eprintln!("exited {took:?} after the churn, stdout's reader gone");
    assert!(report["totals"]["alloc"].as_u64() >= Some(1), "{report}");
}

#[test]
fn stdout_reader_gone_ends_the_trace_even_with_nothing_to_write() {
    if skip_unless_root("stdout_reader_gone_ends_the_trace_even_with_nothing_to_write") {
        return;
    }
    // `port-trace --events json --comm nomatch | head -1`: no event line will ever be
    // written to meet the broken pipe, so only watching stdout can notice.
    let mut run = Run::start(
        "nothing",
        Stdio::inherit(),
        &["--interval", "1h", "--comm", "nomatch"],
    );
    drop(run.stdout.take());
    churn(100);
    let (report, took) = run.expect_clean_exit("stdout's reader gone, nothing matched");
    eprintln!("exited {took:?} after stdout's reader left, nothing to write");
    assert_eq!(report["totals"]["alloc"], 0, "{report}");
}

#[test]
fn sighup_ends_the_trace_with_its_summary_and_report() {
    if skip_unless_root("sighup_ends_the_trace_with_its_summary_and_report") {
        return;
    }
    let mut run = Run::start("sighup", Stdio::piped(), &["--interval", "1h"]);
    run.keep_reading();
    let mut stderr = run.child.stderr.take().expect("stderr is piped");
    let summary = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    churn(10);
    // A dropped ssh session.
    run.signal(libc::SIGHUP);
    let (report, _) = run.expect_clean_exit("SIGHUP");
    assert!(report["totals"]["alloc"].as_u64() >= Some(10), "{report}");
    let summary = summary.join().expect("stderr read");
    assert!(
        summary.contains("port-trace after") && summary.contains("allocated"),
        "the final summary on stderr: {summary}"
    );
}

#[test]
fn a_quiet_trace_without_event_lines_outlives_its_stdout() {
    if skip_unless_root("a_quiet_trace_without_event_lines_outlives_its_stdout") {
        return;
    }
    // The service: `--quiet`, no event lines, stdout a journal stream that may hang up. It
    // writes nothing there, so stdout going away is no reason to stop.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let started = std::time::Instant::now();
    let output = std::process::Command::new(binary())
        .args(["--quiet", "--duration", "3s"])
        .args(backend_args())
        .stdout(writer)
        .output()
        .expect("port-trace runs");
    let took = started.elapsed();
    assert!(output.status.success(), "{output:?}");
    assert!(
        took >= Duration::from_secs(3),
        "ended after {took:?}, before its --duration, with nothing to write"
    );
}
