//! Events name their workload: Kubernetes-style cgroups made for real in the v2 hierarchy
//! (the kubelet's cgroupfs and systemd naming), a node's /var/log/pods and
//! /var/log/containers in a host root passed as --host-root, and a helper process moved
//! into each cgroup that connects; every allocation names its pod and container. And a
//! cgroup removed while its sockets are held: named by id when it was gone before it could
//! be resolved (never by the new cgroup that took its path), by its own path when it was
//! resolved before.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{Tracer, skip_unless_root};
use port_trace::sys::cgroups::CgroupRoot;
use serde_json::Value;

/// Set in the helper's environment to the address it connects to.
const HELPER_ENV: &str = "PORT_TRACE_WORKLOAD_HELPER";
const HELPER_TEST: &str = "helper_connects_when_told";

const UID_CGROUPFS: &str = "0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
const UID_SYSTEMD: &str = "7a1d2e3f-4b5c-4d6e-9f01-b2c3d4e5f6a7";
const ID_CGROUPFS: &str = "3f2a9c1b7d0e44b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4";
const ID_SYSTEMD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ID_GONE: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
const ID_HELD: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// The cgroup v2 hierarchy, where we may make cgroups; None (said why) where not.
fn hierarchy(test: &str) -> Option<CgroupRoot> {
    if skip_unless_root(test) {
        return None;
    }
    let Some(root) = CgroupRoot::find(Path::new("/")) else {
        eprintln!("skipped {test}: no cgroup v2 hierarchy is mounted");
        return None;
    };
    Some(root)
}

/// Cgroups made under one directory of the test's own, removed (deepest first) on drop.
struct Cgroups {
    mount: PathBuf,
    base: String,
    made: Vec<PathBuf>,
}

impl Cgroups {
    fn new(root: &CgroupRoot, test: &str) -> Option<Self> {
        let base = format!("port-trace-{test}-{}", std::process::id());
        let dir = root.mount().join(&base);
        if let Err(err) = std::fs::create_dir(&dir) {
            eprintln!(
                "skipped {test}: cannot make a cgroup under {}: {err}",
                root.mount().display()
            );
            return None;
        }
        Some(Self {
            mount: root.mount().to_path_buf(),
            base,
            made: vec![dir],
        })
    }

    /// Makes `relative` (under the test's directory) and its parents; its directory.
    fn make(&mut self, relative: &str) -> PathBuf {
        let mut at = self.mount.join(&self.base);
        for part in relative.split('/') {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
                self.made.push(at.clone());
            }
        }
        at
    }

    /// The cgroup path of `relative`, as events name it.
    fn path(&self, relative: &str) -> String {
        format!("/{}/{relative}", self.base)
    }

    fn top(&self) -> PathBuf {
        self.mount.join(&self.base)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            remove_cgroup(dir);
        }
    }
}

/// rmdir, retried: the kernel may take a moment to let go of an exited process's cgroup.
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove the test cgroup {}", dir.display());
}

fn id_of(dir: &Path) -> u64 {
    std::fs::metadata(dir).expect("cgroup dir").ino()
}

/// A node's log directories for pods, under a temporary host root.
struct HostRoot(PathBuf);

impl HostRoot {
    fn new(test: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("port-trace-host-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("var/log/containers")).expect("mkdir");
        Self(root)
    }

    /// A pod's log directory and its container's log link, as the kubelet makes them.
    fn pod(&self, namespace: &str, pod: &str, uid: &str, container: &str, id: &str) {
        let dir = self
            .0
            .join(format!("var/log/pods/{namespace}_{pod}_{uid}/{container}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("0.log"), "").expect("log");
        std::os::unix::fs::symlink(
            dir.join("0.log"),
            self.0.join(format!(
                "var/log/containers/{pod}_{namespace}_{container}-{id}.log"
            )),
        )
        .expect("symlink");
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp dir")
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The helper process: connects to the test's listener each time it is told to.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    fn start(target: std::net::SocketAddr) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                HELPER_TEST,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, target.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("helper starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    /// Moves the helper (all its threads) into cgroup `dir`.
    fn move_to(&self, dir: &Path) {
        std::fs::write(dir.join("cgroup.procs"), self.pid().to_string())
            .unwrap_or_else(|e| panic!("moving the helper into {}: {e}", dir.display()));
    }

    /// Tells the helper `command`; its answer line (`port N` for a connect).
    fn tell(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("helper's stdin");
        self.stdin.flush().expect("helper's stdin");
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).expect("helper's stdout") > 0,
                "the helper ended before answering {command}"
            );
            if let Some(answer) = line.trim().strip_prefix("helper: ") {
                return answer.to_string();
            }
        }
    }

    /// Connects from the helper; the local port it got.
    fn connect(&mut self) -> u64 {
        let answer = self.tell("connect");
        answer
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("helper answered {answer}"))
    }

    fn finish(mut self) {
        self.tell("exit");
        let status = self.child.wait().expect("helper exits");
        assert!(status.success(), "helper: {status}");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The helper's one record of `kind` for local port `port`.
fn record<'a>(events: &'a [Value], helper: u64, kind: &str, port: u64) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == kind && e["pid"].as_u64() == Some(helper))
        .filter(|e| e["port"].as_u64() == Some(port) && e["proto"] == "tcp")
        .collect();
    assert_eq!(found.len(), 1, "one {kind} of port {port}: {found:?}");
    found[0]
}

#[test]
fn pods_are_named_on_both_cgroup_drivers() {
    const TEST: &str = "pods_are_named_on_both_cgroup_drivers";
    let Some(root) = hierarchy(TEST) else { return };
    let Some(mut cgroups) = Cgroups::new(&root, TEST) else {
        return;
    };
    let cgroupfs = format!("kubepods/burstable/pod{UID_CGROUPFS}/{ID_CGROUPFS}");
    let systemd = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID_SYSTEMD}.scope",
        UID_SYSTEMD.replace('-', "_")
    );
    let cgroupfs_dir = cgroups.make(&cgroupfs);
    let systemd_dir = cgroups.make(&systemd);
    let host = HostRoot::new(TEST);
    host.pod("shop", "api-7d9f", UID_CGROUPFS, "server", ID_CGROUPFS);
    host.pod("billing", "ledger-0", UID_SYSTEMD, "db-proxy", ID_SYSTEMD);

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let tracer = Tracer::start(&["--host-root", host.arg()]);
    let mut helper = Helper::start(listener.local_addr().expect("address"));
    helper.move_to(&cgroupfs_dir);
    let cgroupfs_port = helper.connect();
    helper.move_to(&systemd_dir);
    let systemd_port = helper.connect();
    let pid = helper.pid();
    helper.finish();
    sleep(Duration::from_millis(500));
    let (events, _report) = tracer.stop();

    let alloc = record(&events, pid, "alloc", cgroupfs_port);
    assert_eq!(alloc["cgroup"], cgroups.path(&cgroupfs).as_str(), "{alloc}");
    assert_eq!(
        alloc["pod"],
        serde_json::json!({"namespace": "shop", "name": "api-7d9f", "uid": UID_CGROUPFS}),
        "{alloc}"
    );
    assert_eq!(
        alloc["container"],
        serde_json::json!({"id": ID_CGROUPFS, "name": "server", "runtime": "containerd"}),
        "{alloc}"
    );

    let alloc = record(&events, pid, "alloc", systemd_port);
    assert_eq!(alloc["cgroup"], cgroups.path(&systemd).as_str(), "{alloc}");
    assert_eq!(
        alloc["pod"],
        serde_json::json!({"namespace": "billing", "name": "ledger-0", "uid": UID_SYSTEMD}),
        "systemd's underscores are dashes again: {alloc}"
    );
    assert_eq!(
        alloc["container"],
        serde_json::json!({"id": ID_SYSTEMD, "name": "db-proxy", "runtime": "containerd"}),
        "{alloc}"
    );
    drop(listener);
}

/// SIGCONTs port-trace however the test ends: a stopped tracer would never stop.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn a_cgroup_removed_while_its_sockets_are_held() {
    const TEST: &str = "a_cgroup_removed_while_its_sockets_are_held";
    let Some(root) = hierarchy(TEST) else { return };
    let Some(mut cgroups) = Cgroups::new(&root, TEST) else {
        return;
    };
    let gone = format!("docker/{ID_GONE}");
    let held = format!("docker/{ID_HELD}");
    let host = HostRoot::new(TEST);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let tracer = Tracer::start(&["--host-root", host.arg()]);
    let mut helper = Helper::start(listener.local_addr().expect("address"));

    // Resolved while it existed, then removed with the socket still open.
    let held_dir = cgroups.make(&held);
    let held_id = id_of(&held_dir);
    helper.move_to(&held_dir);
    let held_port = helper.connect();
    sleep(Duration::from_millis(500)); // drained and named
    helper.move_to(&cgroups.top());
    remove_cgroup(&held_dir);

    // Removed before port-trace could look at it, and made again at the same path: the
    // new cgroup has a new id, and must not lend its name to the old one.
    let stopped = Stopped::new(tracer.pid());
    let gone_dir = cgroups.make(&gone);
    let gone_id = id_of(&gone_dir);
    helper.move_to(&gone_dir);
    let gone_port = helper.connect();
    helper.move_to(&cgroups.top());
    remove_cgroup(&gone_dir);
    let again_dir = cgroups.make(&gone);
    let again_id = id_of(&again_dir);
    assert_ne!(gone_id, again_id, "a new cgroup, a new id");
    helper.move_to(&again_dir);
    let again_port = helper.connect();
    drop(stopped);

    // The sockets of the removed cgroups close now.
    helper.tell("close");
    let pid = helper.pid();
    helper.finish();
    sleep(Duration::from_millis(500));
    let (events, _report) = tracer.stop();

    let alloc = record(&events, pid, "alloc", gone_port);
    assert_eq!(
        alloc["cgroup"].as_u64(),
        Some(gone_id),
        "by id only: {alloc}"
    );
    assert!(
        alloc.get("container").is_none() && alloc.get("pod").is_none(),
        "not named after the cgroup that took its path: {alloc}"
    );
    let release = record(&events, pid, "release", gone_port);
    assert_eq!(release["cgroup"].as_u64(), Some(gone_id), "{release}");
    assert!(release.get("container").is_none(), "{release}");

    let alloc = record(&events, pid, "alloc", again_port);
    assert_eq!(alloc["cgroup"], cgroups.path(&gone).as_str(), "{alloc}");
    assert_eq!(
        alloc["container"],
        serde_json::json!({"id": ID_GONE, "runtime": "docker"}),
        "the new cgroup is named: {alloc}"
    );

    let alloc = record(&events, pid, "alloc", held_port);
    assert_eq!(alloc["cgroup"], cgroups.path(&held).as_str(), "{alloc}");
    let release = record(&events, pid, "release", held_port);
    assert_eq!(
        release["cgroup"],
        cgroups.path(&held).as_str(),
        "released after its cgroup {held_id} was removed, named as it was: {release}"
    );
    assert_eq!(release["container"]["id"], ID_HELD, "{release}");
    drop(listener);
}

/// The helper process: on `connect`, connects to the address in its environment and
/// answers with the local port; on `close`, closes its connections with RST (no
/// TIME_WAIT); on `exit`, ends.
#[test]
#[ignore = "run by the tests above, moved between cgroups"]
fn helper_connects_when_told() {
    let target = std::env::var(HELPER_ENV).expect("only the workload tests run this");
    let target: std::net::SocketAddr = target.parse().expect("an address");
    let mut out = std::io::stdout().lock();
    let mut held: Vec<TcpStream> = Vec::new();
    for line in std::io::stdin().lines() {
        let line = line.expect("stdin");
        // On a line of its own: libtest may have printed `test NAME ... ` without a newline.
        match line.trim() {
            "connect" => {
                let stream = TcpStream::connect(target).expect("connect");
                let port = stream.local_addr().expect("local address").port();
                held.push(stream);
                writeln!(out, "\nhelper: port {port}").expect("stdout");
            }
            "close" => {
                for stream in held.drain(..) {
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .expect("SO_LINGER");
                }
                writeln!(out, "\nhelper: closed").expect("stdout");
            }
            "exit" => {
                writeln!(out, "\nhelper: bye").expect("stdout");
                break;
            }
            other => panic!("unknown command {other}"),
        }
        out.flush().expect("stdout");
    }
    out.flush().expect("stdout");
}
