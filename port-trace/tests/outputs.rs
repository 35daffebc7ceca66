//! `--report` and `--hdr-log`: checked before anything is attached, never written through a
//! planted symlink or into another user's file, and the report written on every way out.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::{MetadataExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Tracer, backend_args, binary, skip_unless_root};

/// The exit code for an output that cannot be written (README, error.rs).
const CANNOT_WRITE: i32 = 6;

/// A fresh directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("port-trace-outputs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names in the directory, sorted: no temporary file may be left behind.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("readable")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(["--events", "json", "--interval", "1h"])
        .args(backend_args())
        .args(args)
        .output()
        .expect("port-trace runs")
}

#[test]
fn unwritable_outputs_exit_6_before_anything_is_attached() {
    let dir = TempDir::new("unwritable");
    let missing = dir.join("no-such-dir/out");
    let directory = dir.join("a-dir");
    std::fs::create_dir(&directory).expect("a directory");
    let targets = [
        missing.to_str().expect("utf-8"),
        directory.to_str().expect("utf-8"),
        "/proc/version",
        "/dev/full",
    ];
    for flag in ["--report", "--hdr-log", "--html"] {
        for target in targets {
            let started = Instant::now();
            // Long enough that an error found only at exit could not pass for a fast one.
            let output = run(&[flag, target, "--duration", "20s"]);
            let took = started.elapsed();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let case = format!("{flag} {target}: {stderr}");
            assert_eq!(output.status.code(), Some(CANNOT_WRITE), "{case}");
            assert!(
                stderr.contains(target),
                "the message names the file: {case}"
            );
            assert!(stderr.contains(flag), "the message names the flag: {case}");
            assert!(
                !stdout.contains("ready"),
                "nothing attached: {case} {stdout}"
            );
            assert!(took < Duration::from_secs(10), "{case} took {took:?}");
            assert!(!stderr.contains("panicked"), "{case}");
        }
    }
    assert!(!missing.parent().expect("a parent").exists());
    assert_eq!(
        std::fs::read_dir(&directory).expect("still a dir").count(),
        0,
        "nothing left in the directory"
    );
    assert_eq!(dir.names(), ["a-dir"], "no temporary file left behind");
}

/// A short real trace writing both outputs; the report read back.
fn trace_into(report: &Path, hdr_log: &Path) -> serde_json::Value {
    let output = run(&[
        "--report",
        report.to_str().expect("utf-8"),
        "--hdr-log",
        hdr_log.to_str().expect("utf-8"),
        "--duration",
        "1s",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let meta = std::fs::symlink_metadata(report).expect("the report exists");
    assert!(meta.file_type().is_file(), "a regular file: {meta:?}");
    let meta = std::fs::symlink_metadata(hdr_log).expect("the log exists");
    assert!(meta.file_type().is_file(), "a regular file: {meta:?}");
    let log = std::fs::read_to_string(hdr_log).expect("the log is readable");
    assert!(log.contains("#[StartTime:"), "an HdrHistogram log: {log}");
    let text = std::fs::read_to_string(report).expect("the report is readable");
    serde_json::from_str(&text).expect("the report is JSON")
}

#[test]
fn a_planted_symlink_is_replaced_never_followed() {
    if skip_unless_root("a_planted_symlink_is_replaced_never_followed") {
        return;
    }
    let dir = TempDir::new("symlink");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("the victim");
    let (report, hdr_log) = (dir.join("report.json"), dir.join("log.hlog"));
    symlink(&victim, &report).expect("a symlink");
    symlink(&victim, &hdr_log).expect("a symlink");

    let report_json = trace_into(&report, &hdr_log);

    assert_eq!(
        std::fs::read_to_string(&victim).expect("the victim is there"),
        "precious\n",
        "the victim is untouched"
    );
    assert!(report_json["totals"].is_object(), "{report_json}");
    assert_eq!(dir.names(), ["log.hlog", "report.json", "victim"]);
}

#[test]
fn a_file_another_user_made_is_replaced_by_ours() {
    if skip_unless_root("a_file_another_user_made_is_replaced_by_ours") {
        return;
    }
    let dir = TempDir::new("foreign");
    let (report, hdr_log) = (dir.join("report.json"), dir.join("log.hlog"));
    for path in [&report, &hdr_log] {
        std::fs::write(path, "theirs\n").expect("a foreign file");
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown to nobody");
    }

    let report_json = trace_into(&report, &hdr_log);

    assert!(report_json["totals"].is_object(), "{report_json}");
    for path in [&report, &hdr_log] {
        let meta = std::fs::metadata(path).expect("there");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{} is ours",
            path.display()
        );
    }
    assert_eq!(dir.names(), ["log.hlog", "report.json"]);
}

#[test]
fn the_report_is_written_on_sigterm() {
    if skip_unless_root("the_report_is_written_on_sigterm") {
        return;
    }
    let mut tracer = Tracer::start(&[]);
    let (_, report) = tracer.stop_with(libc::SIGTERM);
    assert!(report["totals"].is_object(), "{report}");
}

#[test]
fn the_report_is_written_when_the_event_reader_goes_away() {
    if skip_unless_root("the_report_is_written_when_the_event_reader_goes_away") {
        return;
    }
    let dir = TempDir::new("epipe");
    let report = dir.join("report.json");
    let mut child = Command::new(binary())
        .args(["--events", "json", "--interval", "1h", "--duration", "60s"])
        .args(backend_args())
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("port-trace starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut ready = String::new();
    stdout.read_line(&mut ready).expect("the ready line");
    assert!(ready.contains("\"ready\""), "{ready}");
    // The reader goes away (`| head -1`); the next event lines meet a broken pipe.
    drop(stdout);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let target = listener.local_addr().expect("addr");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "port-trace kept running with no reader"
        );
        let _client = TcpStream::connect(target).expect("connect");
        let _ = listener.accept();
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report after the reader went ({status}): {e}"));
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    assert!(report["totals"].is_object(), "{report}");
}

#[test]
fn a_report_that_cannot_be_written_at_exit_exits_6_and_leaves_the_old_one() {
    if skip_unless_root("a_report_that_cannot_be_written_at_exit_exits_6_and_leaves_the_old_one") {
        return;
    }
    // A full filesystem of our own: a small tmpfs in a mount namespace that dies with the
    // shell, so nothing is left mounted whatever happens. The shell fills it, leaving an old
    // report there, runs port-trace, and shows what is left.
    let dir = TempDir::new("full");
    let script = r#"
        mount -t tmpfs -o size=64k,nr_inodes=64 tmpfs "$0" || exit 99
        echo old > "$0/report.json"
        # dd, not head -c 1M: the VM matrix's busybox head takes no size suffix.
        dd if=/dev/zero of="$0/fill" bs=1024 count=1024 2>/dev/null
        bin=$1; shift
        err=$("$bin" --events json --interval 1h --duration 1s --report "$0/report.json" \
            "$@" 2>&1 > /dev/null)
        echo "rc=$?"
        echo "stderr=$(echo "$err" | tail -n 3 | tr '\n' ' ')"
        echo "report=$(cat "$0/report.json")"
        echo "files=$(ls -A "$0" | tr '\n' ' ')"
    "#;
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&dir.0)
        .arg(binary())
        .args(backend_args())
        .output();
    let output = match output {
        Ok(output) if output.status.code() != Some(99) => output,
        other => {
            eprintln!("skipped: no private tmpfs (unshare, mount): {other:?}");
            return;
        }
    };
    let shown = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        shown
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {shown}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("rc"), CANNOT_WRITE.to_string(), "{shown}");
    let stderr = field("stderr");
    assert!(stderr.contains("report.json"), "names the file: {stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
    assert_eq!(field("report"), "old", "the old report is whole: {shown}");
    assert_eq!(field("files"), "fill report.json", "no temporary file left");
}

#[test]
fn the_report_is_written_when_stdout_is_closed_from_the_start() {
    if skip_unless_root("the_report_is_written_when_stdout_is_closed_from_the_start") {
        return;
    }
    let dir = TempDir::new("closed");
    let report = dir.join("report.json");
    // A pipe nobody reads: `ready` itself meets a broken pipe.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let started = Instant::now();
    let output = Command::new(binary())
        .args(["--events", "json", "--interval", "1h", "--duration", "60s"])
        .args(backend_args())
        .arg("--report")
        .arg(&report)
        .stdout(writer)
        .output()
        .expect("port-trace runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ran on with no reader: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({}): {e}: {stderr}", output.status));
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    assert!(report["totals"].is_object(), "{report}");
}
