//! SIGINT and SIGTERM detach every program: nothing of port-trace stays in the kernel.

mod common;

use std::{
    sync::{Mutex, PoisonError},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, skip_unless_root};

/// The ids of the eBPF programs process `pid` holds open (from its fds' fdinfo).
fn program_ids_held_by(pid: u32) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .filter_map(|fd| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

fn still_loaded(ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .filter(|id| ids.contains(id))
        .collect()
}

/// The tests here start tracers of their own; one at a time keeps them independent.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn signals_detach_every_program() {
    if skip_unless_root("signals_detach_every_program") {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut tracer = Tracer::start(&[]);
        let ids = program_ids_held_by(tracer.pid());
        let attached = tracer.ready["programs"].as_array().map_or(0, Vec::len);
        assert!(attached > 0, "{}", tracer.ready);
        assert_eq!(
            ids.len(),
            attached,
            "one loaded program per attached one: {ids:?}"
        );
        assert_eq!(still_loaded(&ids).len(), attached);
        let (_, report) = tracer.stop_with(signal);
        assert_eq!(report["totals"]["lost"], 0);
        // The kernel frees detached programs asynchronously (after an RCU grace period), so
        // give it a moment; a program still loaded after that is a leak.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !still_loaded(&ids).is_empty() && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        assert_eq!(
            still_loaded(&ids),
            Vec::<u32>::new(),
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
    // It must end by itself; the deadline only keeps a hang from stalling the suite (it is
    // generous because attaching kprobes under emulation in the VM matrix takes seconds).
    let child = std::process::Command::new(common::binary())
        .args(["--duration", "1s", "--events", "text"])
        .args(common::backend_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("port-trace runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("port-trace output"),
        Err(_) => {
            // SAFETY: killing our own child, which did not stop by itself.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("--duration 1s did not end the trace within 120 s");
        }
    };
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("EVENT") && header.contains("LIFETIME"),
        "{stdout}"
    );
    // The final summary goes to stderr when events own stdout.
    assert!(String::from_utf8_lossy(&output.stderr).contains("allocated"));
}

#[test]
fn quiet_prints_no_summary() {
    if skip_unless_root("quiet_prints_no_summary") {
        return;
    }
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let output = std::process::Command::new(common::binary())
        .args(["--duration", "1s", "--quiet"])
        .args(common::backend_args())
        .output()
        .expect("port-trace runs");
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("allocated") && !stderr.contains("tracing with"),
        "{stderr}"
    );
}
