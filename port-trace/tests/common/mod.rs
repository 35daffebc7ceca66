//! Runs the real port-trace binary against the real kernel for integration tests.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::Duration,
};

use serde_json::Value;

/// Integration tests load eBPF programs: they need root, which CI has. Elsewhere they say
/// why they skip.
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {test}: needs root to load eBPF programs (run `sudo cargo xtask test`)");
        return true;
    }
    false
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_port-trace")
}

/// A running `port-trace --events json`, with its stdout collected line by line.
pub struct Tracer {
    child: Child,
    /// The `ready` record: backend and the programs attached.
    pub ready: Value,
    lines: Receiver<String>,
    /// Lines taken off `lines` early (`wait_until_quiet`), kept for `stop`.
    received: Vec<String>,
    pub report: PathBuf,
}

impl Tracer {
    /// Starts port-trace and waits for its `ready` record (every program attached).
    pub fn start(extra_args: &[&str]) -> Tracer {
        Tracer::start_with_stderr(extra_args, Stdio::inherit())
    }

    /// `start`, with port-trace's stderr (its log) going to `stderr`.
    pub fn start_with_stderr(extra_args: &[&str], stderr: Stdio) -> Tracer {
        let report = std::env::temp_dir().join(format!(
            "port-trace-report-{}-{}.json",
            std::process::id(),
            thread_id()
        ));
        // Summaries only at exit, unless the test wants them (and the checks they bring).
        let interval: &[&str] = if extra_args.contains(&"--interval") {
            &[]
        } else {
            &["--interval", "1h"]
        };
        let mut child = Command::new(binary())
            .args(["--events", "json", "--report"])
            .arg(&report)
            .args(interval)
            .args(backend_args())
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("port-trace starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // A deadline against hangs, not a timing: under emulation (the VM matrix) loading
        // and attaching take seconds.
        let ready = lines
            .recv_timeout(Duration::from_secs(120))
            .expect("port-trace prints its ready record");
        let ready: Value = serde_json::from_str(&ready).expect("ready is JSON");
        assert_eq!(ready["type"], "ready", "first record: {ready}");
        Tracer {
            child,
            ready,
            lines,
            received: Vec::new(),
            report,
        }
    }

    /// Waits until port-trace has printed nothing for `quiet` (it has caught up with the
    /// kernel's events), or `limit` passed. Under emulation (the VM matrix) the debug build
    /// drains a burst of tens of thousands of events for tens of seconds after the burst
    /// ends; what it does after catching up (reconciliation) is timed from here.
    pub fn wait_until_quiet(&mut self, quiet: Duration, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            match self.lines.recv_timeout(quiet) {
                Ok(line) => self.received.push(line),
                Err(_) => return,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops port-trace with SIGINT; returns every event record and the report.
    pub fn stop(mut self) -> (Vec<Value>, Value) {
        self.stop_with(libc::SIGINT)
    }

    /// Stops port-trace with `signal`; returns every event record and the report.
    pub fn stop_with(&mut self, signal: i32) -> (Vec<Value>, Value) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("port-trace exits");
        assert!(status.success(), "port-trace exited with {status}");
        let events: Vec<Value> = std::mem::take(&mut self.received)
            .into_iter()
            .chain(self.lines.try_iter())
            .map(|line| {
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
            })
            .collect();
        let report = std::fs::read_to_string(&self.report).expect("report written");
        let _ = std::fs::remove_file(&self.report);
        (
            events,
            serde_json::from_str(&report).expect("report is JSON"),
        )
    }
}

/// A test that fails before `stop` must not leave port-trace (and its programs) behind.
impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs port-trace with `args` as an unprivileged user: as root (CI) it drops to nobody with
/// util-linux's setpriv; as anyone else it just runs. None when setpriv is missing.
pub fn run_unprivileged(args: &[&str]) -> Option<std::process::Output> {
    // SAFETY: geteuid has no preconditions.
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(binary());
        setpriv
    } else {
        Command::new(binary())
    };
    match command.args(args).output() {
        Ok(output) => Some(output),
        Err(err) => {
            eprintln!("skipped: setpriv (util-linux) is not available: {err}");
            None
        }
    }
}

/// Whether the suite runs in the VM matrix (emulated: everything is several times slower).
pub fn in_vm() -> bool {
    std::env::var("PORT_TRACE_TEST_BACKEND").is_ok_and(|b| !b.is_empty())
}

/// `--backend X` when the suite runs for one backend (the VM matrix sets
/// PORT_TRACE_TEST_BACKEND), else nothing: port-trace's own choice.
pub fn backend_args() -> Vec<String> {
    match std::env::var("PORT_TRACE_TEST_BACKEND") {
        Ok(backend) if !backend.is_empty() => vec!["--backend".into(), backend],
        _ => Vec::new(),
    }
}

fn thread_id() -> String {
    format!("{:?}", thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// The records of one type made by this test process.
pub fn ours<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let pid = u64::from(std::process::id());
    events
        .iter()
        .filter(|e| e["type"] == kind && e["pid"].as_u64() == Some(pid))
        .collect()
}

/// Moves the calling thread into a new network namespace with loopback up and the
/// ephemeral range `low..=high`; returns the namespace's inode. Only this thread (and the
/// processes it spawns) is in it: network namespaces are per thread.
pub fn enter_tiny_netns(low: u16, high: u16) -> u64 {
    // SAFETY: unshare affects only the calling thread's namespaces.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip (iproute2) runs");
    assert!(status.success(), "ip link set lo up");
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{low} {high}"),
    )
    .expect("set ip_local_port_range");
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/task/{}/ns/net", gettid()))
        .expect("our netns")
        .ino()
}

pub fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// GET `path` from `addr` over plain HTTP/1.0 (no chunking, the server closes): the status
/// code and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// `text` percent-encoded for a URL's query string.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `name` as the shell would find it on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The repository's root (for deploy/ and the like).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A network namespace of the test's own, with loopback up: made by a thread that unshares
/// (no `ip netns`, which busybox in the VM matrix lacks) and stays in it until this is
/// dropped, since port-trace finds a namespace by the threads in it (or a /run/netns name);
/// entered by any thread that needs it.
pub struct Netns {
    fd: std::fs::File,
    inode: u64,
    /// Dropped to let the anchor thread go.
    _anchor: std::sync::mpsc::Sender<()>,
}

impl Netns {
    pub fn new() -> Self {
        let (made_tx, made_rx) = channel();
        let (anchor, release) = channel::<()>();
        thread::spawn(move || {
            // SAFETY: unshare affects only this thread's namespaces.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
            let status = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip runs");
            assert!(status.success(), "ip link set lo up");
            let fd = std::fs::File::open(format!("/proc/self/task/{}/ns/net", gettid()))
                .expect("our netns");
            use std::os::unix::fs::MetadataExt;
            let inode = fd.metadata().expect("netns inode").ino();
            made_tx.send((fd, inode)).expect("the test waits");
            // In the namespace until the test lets go.
            let _ = release.recv();
        });
        let (fd, inode) = made_rx.recv().expect("netns made");
        Self {
            fd,
            inode,
            _anchor: anchor,
        }
    }

    /// Its inode number, as `--netns` takes it.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Moves the calling thread into it.
    pub fn enter(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: setns for this thread only, on a namespace fd we hold.
        let entered = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Runs `work` in a thread inside it.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    work()
                })
                .join()
                .expect("thread in the netns")
        })
    }

    /// Sets a sysctl of its own (`net/ipv4/tcp_tw_reuse`, `1`).
    pub fn sysctl(&self, path: &str, value: &str) {
        self.run(|| std::fs::write(format!("/proc/sys/{path}"), value))
            .unwrap_or_else(|e| panic!("setting {path}: {e}"));
    }

    /// The local ports within `range` that its TCP and UDP sockets hold, every state
    /// (TIME_WAIT included), as `ss` lists them.
    pub fn ss_ports(&self, range: std::ops::RangeInclusive<u16>) -> Vec<u16> {
        let out = self.run(|| {
            Command::new("ss")
                .arg("-tuanH")
                .output()
                .expect("ss (iproute2) runs")
        });
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let local = line.split_whitespace().nth(4)?;
                local.rsplit(':').next()?.parse::<u16>().ok()
            })
            .filter(|port| range.contains(port))
            .collect()
    }
}

/// Set by `cargo xtask test` where it installed and started Docker: then a missing engine
/// fails the container tests instead of skipping them.
pub const REQUIRE_DOCKER: &str = "PORT_TRACE_REQUIRE_DOCKER";
/// The image the container tests run their peers in: busybox-static's one binary.
pub const BUSYBOX_IMAGE: &str = "port-trace-test/busybox";
const BUSYBOX: &str = "/bin/busybox";

/// A Docker engine for the container tests (Debian's docker.io: `cargo xtask test` installs
/// and starts it). None, with the reason printed, where there is none to use, unless
/// PORT_TRACE_REQUIRE_DOCKER is set: then that is a failure.
pub fn docker(test: &str) -> Option<Docker> {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "needs root (Docker's socket, eBPF)".to_string()
    } else {
        match docker_cmd(&["version", "--format", "{{.Server.Version}}"]) {
            Ok(version) => {
                return Some(Docker {
                    version: version.trim().to_string(),
                });
            }
            Err(err) => format!(
                "no Docker engine answers ({err}); `cargo xtask test` installs docker.io and \
                 starts `dockerd --iptables=false --bridge=none`"
            ),
        }
    };
    if std::env::var_os(REQUIRE_DOCKER).is_some() {
        panic!("{test}: {why}, and {REQUIRE_DOCKER} is set");
    }
    eprintln!("skipped {test}: {why}");
    None
}

/// Runs `docker ARGS`: its stdout, or an error with its stderr.
pub fn docker_cmd(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A reachable Docker engine.
pub struct Docker {
    /// The engine's version, for messages.
    pub version: String,
}

impl Docker {
    /// BUSYBOX_IMAGE, built once from busybox-static's binary (FROM scratch, every applet
    /// linked in /bin): nothing is pulled. Panics if busybox is missing or not static, as
    /// `cargo xtask test` installs busybox-static with docker.io.
    pub fn busybox_image(&self) -> &'static str {
        static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        BUILT.get_or_init(|| {
            if docker_cmd(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE]).is_ok() {
                return;
            }
            let context =
                std::env::temp_dir().join(format!("port-trace-busybox-{}", std::process::id()));
            let bin = context.join("rootfs/bin");
            std::fs::create_dir_all(&bin).expect("image context");
            std::fs::copy(BUSYBOX, bin.join("busybox"))
                .unwrap_or_else(|e| panic!("{BUSYBOX} (busybox-static): {e}"));
            let list = Command::new(BUSYBOX)
                .arg("--list")
                .output()
                .expect("busybox --list");
            for applet in String::from_utf8_lossy(&list.stdout).lines() {
                if applet != "busybox" {
                    let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
                }
            }
            std::fs::write(
                context.join("Containerfile"),
                "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\"]\n",
            )
            .expect("Containerfile");
            let context_arg = context.to_string_lossy().into_owned();
            let containerfile = context.join("Containerfile");
            let built = docker_cmd(&[
                "build",
                "--quiet",
                "--tag",
                BUSYBOX_IMAGE,
                "--file",
                &containerfile.to_string_lossy(),
                &context_arg,
            ]);
            let _ = std::fs::remove_dir_all(&context);
            built.expect("the busybox image builds");
            // A dynamically linked busybox would build and then fail to start.
            docker_cmd(&["run", "--rm", "--network", "none", BUSYBOX_IMAGE, "true"])
                .expect("the busybox image runs (is /bin/busybox busybox-static's?)");
        });
        BUSYBOX_IMAGE
    }

    /// Starts container `name` (any old one of that name removed first) from `image` with
    /// `docker run -d OPTIONS IMAGE ARGS`; removed when dropped.
    pub fn run(&self, name: &str, options: &[&str], image: &str, args: &[&str]) -> Container {
        let _ = docker_cmd(&["rm", "--force", name]);
        let mut command = vec!["run", "--detach", "--name", name];
        command.extend_from_slice(options);
        command.push(image);
        command.extend_from_slice(args);
        let id = docker_cmd(&command)
            .unwrap_or_else(|e| panic!("starting container {name}: {e}"))
            .trim()
            .to_string();
        Container {
            name: name.to_string(),
            id,
        }
    }

    /// A busybox container `name` in a network namespace of its own (`--network none`: only
    /// loopback), running `command` with sh.
    pub fn run_isolated(&self, name: &str, command: &str) -> Container {
        let image = self.busybox_image();
        self.run(name, &["--network", "none"], image, &["sh", "-c", command])
    }

    /// Whether this engine knows capability `cap` (Debian's 20.10 predates CAP_BPF and
    /// CAP_PERFMON and refuses them by name).
    pub fn knows_capability(&self, cap: &str) -> bool {
        let image = self.busybox_image();
        let name = format!("port-trace-test-cap-{}", std::process::id());
        let created = docker_cmd(&[
            "create",
            "--name",
            &name,
            "--cap-drop",
            "ALL",
            "--cap-add",
            cap,
            image,
            "true",
        ]);
        let _ = docker_cmd(&["rm", "--force", &name]);
        match created {
            Ok(_) => true,
            Err(err) if err.contains("unknown capability") => false,
            Err(err) => panic!("docker create with --cap-add {cap}: {err}"),
        }
    }
}

/// A container the test started; removed (`docker rm --force`) when dropped.
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// `docker inspect --format FORMAT`, trimmed.
    pub fn inspect(&self, format: &str) -> String {
        docker_cmd(&["inspect", "--format", format, &self.id])
            .unwrap_or_else(|e| panic!("inspecting {}: {e}", self.name))
            .trim()
            .to_string()
    }

    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// Its first process's pid on the host.
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .ok()
            .filter(|&p| p != 0)
            .unwrap_or_else(|| panic!("{} has no process (pid {pid:?}): not running", self.name))
    }

    /// Its network namespace's inode, as port-trace's records name it.
    pub fn netns(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .expect("/proc/PID/ns/net of the container's process")
            .ino()
    }

    /// `docker exec` of `command` with sh: its stdout, or the error.
    pub fn exec(&self, command: &str) -> Result<String, String> {
        docker_cmd(&["exec", &self.id, "sh", "-c", command])
    }

    /// What it wrote so far: (stdout, stderr), kept apart by the json-file log driver.
    pub fn logs(&self) -> (String, String) {
        let out = Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .expect("docker logs runs");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker_cmd(&["rm", "--force", &self.id]);
    }
}

/// The findings (kind and state) that name this test process: a test whose workload causes
/// none asserts this is empty (other tests' namespaces may raise their own range lints).
pub fn our_findings(events: &[Value]) -> Vec<String> {
    findings_naming_us(events, |_| true)
}

/// The findings (kind and state) that name this test process, of those `keep` keeps.
fn findings_naming_us(events: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let pid = u64::from(std::process::id());
    events
        .iter()
        .filter(|e| e["type"] == "finding" && e["who"]["pid"].as_u64() == Some(pid))
        .filter(|e| keep(e))
        .map(|e| format!("{} {}", e["kind"], e["state"]))
        .collect()
}

/// Held by the tests of one binary that watch every namespace for findings naming this pid
/// while one of them holds a listener inside the host's range on purpose: they run one at a
/// time (the tests of a binary run at once, in one process, so one's listener names the
/// others' pid). A test that panicked leaves the lock usable.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `our_findings` in namespace `netns` alone: the tests of one binary run at once in one
/// process, so another test's namespace may hold ports that name this pid too (its
/// listeners inside the same tiny range, say).
pub fn our_findings_in(events: &[Value], netns: u64) -> Vec<String> {
    findings_naming_us(events, |e| e["netns"].as_u64() == Some(netns))
}

/// The local port the kernel gave `socket` (getsockname: the ground truth).
pub fn local_port(socket: &socket2::Socket) -> u16 {
    socket
        .local_addr()
        .expect("getsockname")
        .as_socket()
        .expect("inet")
        .port()
}

/// Closes with RST (SO_LINGER 0): the port is free at once, no TIME_WAIT.
pub fn rst_close(socket: socket2::Socket) {
    socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(socket);
}
