//! Every allocation and release names the cgroup v2 id of the socket's owner: a process
//! moved into a fresh cgroup before it allocates anything gets a TCP connect, a TCP and a UDP
//! bind(0), and a UDP sendto() autobind, IPv4 and IPv6, then a bind(0) that finds no port,
//! and each of their records (alloc, release, fail) carries the inode number of that
//! cgroup's directory.

mod common;

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{Tracer, skip_unless_root};
use serde_json::Value;

/// Set in the helper process's environment: it runs `helper_allocates_in_its_cgroup`.
const HELPER_ENV: &str = "PORT_TRACE_CGROUP_ID_HELPER";
const HELPER_TEST: &str = "helper_allocates_in_its_cgroup";

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (`/sys/fs/cgroup` on a unified
/// host, `/sys/fs/cgroup/unified` on a hybrid one). Only a mount of the whole hierarchy
/// (root `/`) will do: directories made under it must be where ids say.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let fstype = fs.split(' ').next()?;
        (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

/// A cgroup made for this test, removed when dropped.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn create(mount: &Path) -> std::io::Result<Cgroup> {
        let dir = mount.join(format!("port-trace-test-cgroup-id-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Cgroup { dir })
    }

    /// The id the kernel gives this cgroup: its directory's inode number.
    fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The helper has been reaped, but the kernel may take a moment to unlink it.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove the test cgroup {}", self.dir.display());
    }
}

#[test]
fn allocations_and_releases_carry_the_owners_cgroup_id() {
    if skip_unless_root("allocations_and_releases_carry_the_owners_cgroup_id") {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        eprintln!(
            "skipped allocations_and_releases_carry_the_owners_cgroup_id: no cgroup v2 \
             hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo)"
        );
        return;
    };
    let cgroup = match Cgroup::create(&mount) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            eprintln!(
                "skipped allocations_and_releases_carry_the_owners_cgroup_id: cannot create \
                 a cgroup under {}: {err}",
                mount.display()
            );
            return;
        }
    };
    let id = cgroup.id();
    let procs = CString::new(
        cgroup
            .dir
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("path without NUL");

    let tracer = Tracer::start(&[]);
    let mut helper = Command::new(std::env::current_exe().expect("test binary"));
    helper
        .args([
            "--exact",
            HELPER_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec the closure only calls open/write/close, which are
    // async-signal-safe, on a path made before the fork. Writing "0" moves the writer: the
    // helper is in the cgroup before it runs any of its own code.
    unsafe {
        helper.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    let output = helper.output().expect("helper runs in the cgroup");
    assert!(output.status.success(), "helper failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Lines `sockets <pid>` and `<proto> <kind> <family> <port>`; libtest's own lines
    // around them have other shapes.
    let mut helper_pid = None;
    let mut expected = Vec::new();
    let mut failures = 0;
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["sockets", pid] => helper_pid = pid.parse::<u64>().ok(),
            ["failed", "udp", "bind", "ipv4"] => failures += 1,
            [proto @ ("tcp" | "udp"), kind, family, port] => expected.push((
                proto.to_string(),
                kind.to_string(),
                family.to_string(),
                port.parse::<u64>().expect("port"),
            )),
            _ => {}
        }
    }
    let helper_pid = helper_pid.unwrap_or_else(|| panic!("helper printed its pid: {stdout}"));
    assert_eq!(expected.len(), 8, "helper's sockets: {stdout}");
    assert_eq!(failures, 1, "helper's failed bind(0): {stdout}");
    // Releases of closed sockets are immediate; give the daemon time to drain (longer
    // under emulation in the VM matrix).
    sleep(Duration::from_millis(500));
    let (events, _report) = tracer.stop();

    let helpers: Vec<&Value> = events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(helper_pid))
        .collect();
    for (proto, kind, family, port) in &expected {
        let what = format!("{proto} {kind} {family} port {port}");
        let on_port = |kind_of_record: &str| -> Vec<&Value> {
            helpers
                .iter()
                .copied()
                .filter(|e| {
                    e["type"] == kind_of_record
                        && e["proto"] == proto.as_str()
                        && e["family"] == family.as_str()
                        && e["port"].as_u64() == Some(*port)
                })
                .collect()
        };
        let allocs = on_port("alloc");
        assert_eq!(allocs.len(), 1, "{what}: one alloc, got {allocs:?}");
        let alloc = allocs[0];
        assert_eq!(alloc["kind"], kind.as_str(), "{what}: {alloc}");
        assert_eq!(
            alloc["cgroup_id"].as_u64(),
            Some(id),
            "{what}: alloc names the helper's cgroup {id} ({}): {alloc}",
            cgroup.dir.display()
        );
        let releases: Vec<&Value> = on_port("release")
            .into_iter()
            .filter(|e| e["cookie"] == alloc["cookie"])
            .collect();
        assert_eq!(releases.len(), 1, "{what}: one release, got {releases:?}");
        assert_eq!(
            releases[0]["cgroup_id"].as_u64(),
            Some(id),
            "{what}: release names the alloc's cgroup {id}: {}",
            releases[0]
        );
    }
    let fails: Vec<&&Value> = helpers
        .iter()
        .filter(|e| e["type"] == "fail" && e["proto"] == "udp" && e["kind"] == "bind")
        .collect();
    assert_eq!(fails.len(), 1, "the exhausted bind(0): {fails:?}");
    assert_eq!(fails[0]["error"], "EADDRINUSE", "{}", fails[0]);
    // Nothing the helper did is named by another cgroup (the failure included).
    for record in &helpers {
        if ["alloc", "release", "fail"].contains(&record["type"].as_str().unwrap_or_default()) {
            assert_eq!(record["cgroup_id"].as_u64(), Some(id), "{record}");
        }
    }
    drop(cgroup);
}

/// The helper process (run by the test above, in its cgroup): allocates, prints what it got,
/// closes everything without TIME_WAIT, and exits.
#[test]
#[ignore = "run by allocations_and_releases_carry_the_owners_cgroup_id in a cgroup of its own"]
fn helper_allocates_in_its_cgroup() {
    assert_eq!(
        std::env::var(HELPER_ENV).as_deref(),
        Ok("1"),
        "only the cgroup_id test runs this, in the cgroup it made"
    );
    let mut out = std::io::stdout().lock();
    // On a line of its own: libtest has just printed `test NAME ... ` without a newline.
    writeln!(out, "\nsockets {}", std::process::id()).expect("stdout");
    for v6 in [false, true] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        let any_port = if v6 {
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        };
        let domain = if v6 {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };

        // TCP: bind(0) for a listener, and a connect to it, closed with RST (no TIME_WAIT).
        let listener = TcpListener::bind(any_port).expect("tcp bind(0)");
        let listen_at = listener.local_addr().expect("listener address");
        let client = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        client.connect(&listen_at.into()).expect("tcp connect");
        let (mut served, _) = listener.accept().expect("accept");
        let client_port = client
            .local_addr()
            .expect("client address")
            .as_socket()
            .expect("inet")
            .port();
        client.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        writeln!(out, "tcp bind {family} {}", listen_at.port()).expect("stdout");
        writeln!(out, "tcp connect {family} {client_port}").expect("stdout");
        drop(client);
        // The RST has arrived once the server side reads the end.
        let _ = served.read(&mut [0; 1]);
        drop(served);
        drop(listener);

        // UDP: bind(0) for a sink, and an unbound socket whose first sendto() autobinds.
        let sink = UdpSocket::bind(any_port).expect("udp bind(0)");
        let sink_at = sink.local_addr().expect("sink address");
        let sender: UdpSocket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)
            .expect("udp socket")
            .into();
        sender.send_to(b"hello", sink_at).expect("sendto autobinds");
        let sender_port = sender.local_addr().expect("sender address").port();
        writeln!(out, "udp bind {family} {}", sink_at.port()).expect("stdout");
        writeln!(out, "udp sendmsg {family} {sender_port}").expect("stdout");
        drop(sender);
        drop(sink);
    }

    // A failure: in a namespace of this thread's own with a two-port range, UDP bind(0)
    // until the range is exhausted (EADDRINUSE).
    common::enter_tiny_netns(40000, 40001);
    let mut held = Vec::new();
    let refused = loop {
        match UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))) {
            Ok(socket) => held.push(socket),
            Err(err) => break err,
        }
        assert!(
            held.len() <= 2,
            "a two-port range gave {} ports",
            held.len()
        );
    };
    assert_eq!(refused.raw_os_error(), Some(libc::EADDRINUSE), "{refused}");
    writeln!(out, "failed udp bind ipv4").expect("stdout");
    drop(held);
    out.flush().expect("stdout");
}
