//! Bad input gets a clear message and a documented exit code, never a panic.

mod common;

use std::process::{Command, Output};

use common::binary;

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("port-trace runs")
}

fn assert_no_panic(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_with_claps_message() {
    for (args, says) in [
        (&["--no-such-flag"][..], "unexpected argument"),
        (&["--duration", "soon"], "expected a number"),
        (&["--duration", "30"], "missing unit"),
        (&["--interval", "0s"], "longer than zero"),
        (&["--events", "xml"], "possible values: json, text"),
        (&["--max-sockets", "5"], "not in 1024..=16777216"),
        (&["--prometheus", "127.0.0.1"], "is not PORT, HOST:PORT"),
        (&["--prometheus", "99999"], "is not PORT, HOST:PORT"),
        (
            &["--warn-at", "96", "--critical-at", "90"],
            "is above --critical-at",
        ),
        (&["--comm", "a-name-longer-than-15"], "1 to 15 bytes"),
        (
            &["--prometheus", "224.0.0.1:9464"],
            "multicast or broadcast",
        ),
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_no_panic(&output);
    }
}

#[test]
fn help_teaches_the_exit_codes() {
    let output = run(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("3 not permitted"), "{help}");
    assert!(help.contains("5 the --prometheus address"), "{help}");
    assert!(
        help.contains("6 a --report, --hdr-log or --html file"),
        "{help}"
    );
    assert!(help.contains("--duration <DUR>"), "{help}");
}

#[test]
fn not_root_exits_3_with_one_sentence() {
    let Some(output) = common::run_unprivileged(&["--duration", "1s"]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_no_panic(&output);
}

#[test]
fn prometheus_address_in_use_exits_5_before_attaching() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to occupy");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = run(&["--prometheus", &addr, "--duration", "1s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot serve --prometheus on {addr}: the address is already in use"
        )),
        "{stderr}"
    );
    // Nothing was attached: the error is the only line.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_no_panic(&output);
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    if common::skip_unless_root("logs_to_a_file_carry_no_colour_codes") {
        return;
    }
    // -v logs at debug level: attaching says which backend, among other lines.
    let mut args = vec!["--duration", "300ms", "--quiet", "-v"];
    let backend = common::backend_args();
    args.extend(backend.iter().map(String::as_str));
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DEBUG"),
        "no debug log to look at: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a piped log: {stderr:?}"
    );
}

/// `port-trace explain N | head -1`: the reader leaves first, and port-trace ends quietly
/// (SIGPIPE, as any filter does), not with a panic on EPIPE.
#[test]
fn explain_and_check_end_quietly_when_their_reader_leaves() {
    use std::os::unix::process::ExitStatusExt as _;
    for args in [&["explain", "60068"][..], &["check"]] {
        let mut child = Command::new(binary())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("port-trace runs");
        // The reader is gone before the first line is written.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("port-trace exits");
        assert_no_panic(&output);
        // check may stop earlier, on a missing privilege (exit 3); when it writes, it dies of
        // SIGPIPE.
        assert!(
            output.status.signal() == Some(libc::SIGPIPE) || output.status.code() == Some(3),
            "{args:?}: {:?}",
            output.status
        );
    }
}
