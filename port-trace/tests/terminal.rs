//! What reaches the operator's terminal is harmless: a process (any local user) that names
//! itself with escape sequences, BEL, CR and LF cannot colour, retitle, split or forge the
//! event lines, warnings or summaries; they show the name with its controls escaped. JSON
//! keeps the exact name (serde escapes it).

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{backend_args, binary, enter_tiny_netns, skip_unless_root};

/// ESC ] 0 ; title BEL (sets the window title), then CR LF to start a forged line.
const HOSTILE: &[u8] = b"\x1b]0;pwn\x07\r\nFAKE";
/// How it is shown: 15 bytes, the kernel's limit for a thread name.
const SHOWN: &str = r"\x1b]0;pwn\x07\x0d\x0aFAKE";

/// Sets the calling thread's name (its comm, which the kernel reports) to `name`.
fn name_thread(name: &[u8]) {
    let mut bytes = name.to_vec();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr()) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME)");
}

#[test]
fn hostile_process_names_are_escaped_on_the_terminal() {
    if skip_unless_root("hostile_process_names_are_escaped_on_the_terminal") {
        return;
    }
    let mut child = Command::new(binary())
        .args(["--events", "text", "--interval", "1h", "--duration", "4s"])
        .args(backend_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("port-trace starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (tx, lines) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut first = Vec::new();
        let _ = reader.read_until(b'\n', &mut first);
        let _ = tx.send(());
        out.extend_from_slice(&first);
        let _ = reader.read_to_end(&mut out);
        out
    });
    let errors = thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err);
        err
    });
    // The header line: every program is attached.
    lines
        .recv_timeout(Duration::from_secs(120))
        .expect("the text header");

    // A hostile-named thread, alone in a 4-port namespace, holds every port: an event line
    // each, and warnings that name it as the top holder.
    let worker = thread::spawn(|| {
        let netns = enter_tiny_netns(40_000, 40_003);
        name_thread(HOSTILE);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 7000)).expect("listen");
        let held: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, 7000)).expect("connect"))
            .collect();
        thread::sleep(Duration::from_millis(300));
        drop(held);
        drop(listener);
        netns
    });
    let netns = worker.join().expect("the hostile thread ran");

    let status = child.wait().expect("port-trace exits");
    assert!(status.success(), "port-trace exited with {status}");
    let out = reader.join().expect("stdout read");
    let err = errors.join().expect("stderr read");
    for (name, bytes) in [("stdout", &out), ("stderr", &err)] {
        for control in [0x1bu8, 0x07, b'\r'] {
            assert!(
                !bytes.contains(&control),
                "{name} carries a raw {control:#04x}:\n{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    let out = String::from_utf8_lossy(&out);
    let err = String::from_utf8_lossy(&err);
    let events = out.lines().filter(|l| l.contains(SHOWN)).count();
    assert!(events >= 4, "4 event lines with the escaped name:\n{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("FAKE")),
        "a forged line:\n{out}"
    );
    let warning = out
        .lines()
        .find(|l| {
            (l.starts_with("WARNING") || l.starts_with("CRITICAL"))
                && l.contains(&format!(" in netns {netns}: "))
        })
        .unwrap_or_else(|| panic!("a warning for netns {netns}:\n{out}"));
    assert!(
        warning.contains(&format!("top: {SHOWN}[")),
        "the warning names the holder, escaped: {warning}"
    );
    assert!(
        err.lines().any(|l| l.trim_start().starts_with(SHOWN)),
        "the summary's top processes name it, escaped:\n{err}"
    );
}
