//! `port-trace check` tells the truth about this kernel: the tracepoint backend attaches on
//! every kernel we support, the kprobe backend exactly where there is a kprobe PMU.

mod common;

use std::{path::Path, process::Command};

use common::{binary, skip_unless_root};

#[test]
fn check_says_which_backends_attach_here() {
    if skip_unless_root("check_says_which_backends_attach_here") {
        return;
    }
    let output = Command::new(binary()).arg("check").output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("will work:"))
        .unwrap_or_else(|| panic!("no verdict in {stdout}"));
    if kprobes {
        assert_eq!(
            verdict,
            "will work: backends kprobe, tracepoint; auto uses kprobe"
        );
    } else {
        assert_eq!(
            verdict,
            "will work: backends tracepoint; auto uses tracepoint"
        );
        assert!(stdout.contains("no kprobe PMU"), "{stdout}");
        // Every kprobe program fails for that one reason: it is said once, not per program.
        let section = stdout
            .split("kprobe backend:")
            .nth(1)
            .and_then(|rest| rest.split("tracepoint backend:").next())
            .unwrap_or_else(|| panic!("no kprobe section in {stdout}"));
        assert!(
            section.lines().any(|l| l.trim_start().starts_with("all ")
                && l.contains(" programs ")
                && l.contains(" no ")),
            "{stdout}"
        );
        assert_eq!(section.matches("kprobe/type").count(), 1, "{stdout}");
    }
    if kprobes {
        assert!(stdout.contains("kp_bind"), "{stdout}");
    }
    for needed in ["BTF", "cgroup v2", "tracefs", "tcp_state", "ring buffer"] {
        assert!(stdout.contains(needed), "{needed} missing from {stdout}");
    }
    // Every hook was detached again: a second check sees the same.
    let again = Command::new(binary()).arg("check").output().expect("runs");
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
}
