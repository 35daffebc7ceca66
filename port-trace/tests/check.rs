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
    let cgroup2 = std::fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some("cgroup2"));
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("will work:"))
        .unwrap_or_else(|| panic!("no verdict in {stdout}"));
    if kprobes && !cgroup2 {
        // A host with cgroup v1 only (the VM run without cgroup v2).
        assert_eq!(verdict, "will work: backends kprobe; auto uses kprobe");
    } else if kprobes {
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
    for needed in ["BTF", "cgroup v2", "tracefs", "ring buffer"] {
        assert!(stdout.contains(needed), "{needed} missing from {stdout}");
    }
    // The tracepoint backend's programs are listed where it can load them.
    if cgroup2 {
        assert!(
            stdout.contains("tcp_state"),
            "tcp_state missing from {stdout}"
        );
    }
    // Every hook was detached again: a second check sees the same.
    let again = Command::new(binary()).arg("check").output().expect("runs");
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);
}

/// Runs `port-trace ARGS` in a private mount namespace where no cgroup v2 is mounted, as on
/// a host whose init mounts only cgroup v1. The host's mounts are untouched.
fn without_cgroup_v2(args: &[&str]) -> std::process::Output {
    let script = r#"findmnt -rn -t cgroup2 -o TARGET | tac | while read -r m; do
        umount -l "$(printf '%b' "$m")" || exit 99; done
    if findmnt -rn -t cgroup2 >/dev/null; then exit 98; fi
    exec "$@""#;
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(binary())
        .args(args)
        .output()
        .expect("unshare runs (util-linux)");
    assert!(
        ![Some(98), Some(99)].contains(&output.status.code()),
        "could not unmount cgroup v2 in a private mount namespace: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn without_cgroup_v2_only_the_tracepoint_backend_is_refused() {
    if skip_unless_root("without_cgroup_v2_only_the_tracepoint_backend_is_refused") {
        return;
    }
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();

    let check = without_cgroup_v2(&["check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("cgroup v2"))
        .unwrap_or_else(|| panic!("no cgroup v2 row in {stdout}"));
    assert!(
        row.contains("tracepoint backend only")
            && row.contains(" no ")
            && row.contains("not mounted"),
        "{row}"
    );
    let tracepoint = stdout
        .split("tracepoint backend:")
        .nth(1)
        .unwrap_or_else(|| panic!("no tracepoint section in {stdout}"));
    assert!(
        tracepoint.contains("cgroup v2 is not mounted"),
        "the tracepoint backend's row does not say why: {stdout}"
    );
    if kprobes {
        assert!(check.status.success(), "{stdout}");
        assert!(
            stdout.contains("will work: backends kprobe; auto uses kprobe"),
            "{stdout}"
        );
    } else {
        // Neither backend can start on this host without cgroup v2: check says so (exit 4).
        assert_eq!(check.status.code(), Some(4), "{stdout}");
    }

    // Tracing with the tracepoint backend stops before anything is attached, with the reason.
    let traced = without_cgroup_v2(&["--backend", "tracepoint", "--duration", "1s"]);
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert_eq!(traced.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("cgroup v2 is not mounted") && stderr.contains("--backend kprobe"),
        "{stderr}"
    );
    if kprobes {
        // The kprobe backend needs no cgroup: it traces.
        let traced = without_cgroup_v2(&["--backend", "kprobe", "--duration", "1s"]);
        assert!(
            traced.status.success(),
            "{}",
            String::from_utf8_lossy(&traced.stderr)
        );
    } else {
        eprintln!(
            "without_cgroup_v2: no kprobe PMU here, so the kprobe backend's run without cgroup v2 \
             is covered by the VM run (cargo xtask vm-test)"
        );
    }
}
