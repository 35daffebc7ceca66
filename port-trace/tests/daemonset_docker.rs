//! The DaemonSet run for real, under Docker: the image assembled the way `cargo xtask image`
//! does it (xtask/src/rootfs.rs and deploy/Containerfile) from the binary under test, started
//! with exactly what deploy/kubernetes/daemonset.yaml gives its container (its args, the
//! capabilities it adds after dropping all, its read-only host mounts, host PID and network
//! namespaces, a read-only root, its memory and CPU limits), must answer its probe and trace
//! a TCP connect made inside another container in a network namespace of its own (and read
//! that namespace's own ephemeral range, which takes setns through the host's /proc), staying
//! well inside its memory limit and ending with 0 on SIGTERM; without one of its
//! capabilities it must refuse to start.
//!
//! Skips, saying why, without a Docker engine; `cargo xtask test` starts one and sets
//! PORT_TRACE_REQUIRE_DOCKER, and then a missing engine fails.

mod common;
// The image's root is assembled by the one function xtask uses.
#[allow(dead_code)]
#[path = "../../xtask/src/rootfs.rs"]
mod rootfs;

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Container, Docker, binary, docker, docker_cmd, http_get, repo_root};
use serde_json::Value;

const IMAGE: &str = "port-trace-test/port-trace:dev";

/// Capability numbers (linux/capability.h) of the names a spec may add.
const CAPABILITIES: [(&str, u32); 8] = [
    ("DAC_READ_SEARCH", 2),
    ("NET_ADMIN", 12),
    ("SYS_PTRACE", 19),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

fn capability_bit(name: &str) -> u64 {
    let (_, bit) = CAPABILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("capability {name}: add its number here"));
    1 << bit
}

/// `pid`'s effective capabilities, from /proc/PID/status.
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff")
}

/// The DaemonSet's pod and container, as far as running it goes.
struct Spec {
    host_pid: bool,
    host_network: bool,
    drop: Vec<String>,
    add: Vec<String>,
    read_only_root: bool,
    seccomp: Option<String>,
    apparmor: Option<String>,
    /// (host path, path in the container, read-only)
    mounts: Vec<(String, String, bool)>,
    args: Vec<String>,
    memory_request: u64,
    memory_limit: u64,
    cpu_limit: String,
    port: u16,
    health_path: String,
    /// How long the startup probe gives it (period x failure threshold).
    startup: Duration,
}

/// A Kubernetes memory quantity in bytes (`64Mi`, `1Gi`, `500000`).
fn bytes(quantity: &str) -> u64 {
    let (number, unit) = quantity
        .find(|c: char| !c.is_ascii_digit())
        .map_or((quantity, ""), |i| quantity.split_at(i));
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("quantity {quantity}"));
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            _ => panic!("unit {unit} of {quantity}: add it here"),
        }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn spec() -> Spec {
    let path = repo_root().join("deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("the DaemonSet");
    let daemonset: Value = serde_yaml_ng::from_str(&text).expect("the DaemonSet is YAML");
    let pod = &daemonset["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container is run here");
    let container = &containers[0];
    let security = &container["securityContext"];
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|mount| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("no volume for {mount}"));
            let host = volume["hostPath"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("only hostPath volumes are run here: {volume}"));
            (
                host.to_string(),
                mount["mountPath"].as_str().expect("mountPath").to_string(),
                mount["readOnly"] == true,
            )
        })
        .collect();
    let port = &container["ports"][0];
    let probe = &container["startupProbe"];
    assert_eq!(
        probe["httpGet"]["port"], port["name"],
        "the probe is on the metrics port"
    );
    let startup = probe["periodSeconds"].as_u64().unwrap_or(10)
        * probe["failureThreshold"].as_u64().unwrap_or(3);
    let limits = &container["resources"]["limits"];
    Spec {
        host_pid: pod["hostPID"] == true,
        host_network: pod["hostNetwork"] == true,
        drop: strings(&security["capabilities"]["drop"]),
        add: strings(&security["capabilities"]["add"]),
        read_only_root: security["readOnlyRootFilesystem"] == true,
        seccomp: security["seccompProfile"]["type"]
            .as_str()
            .map(String::from),
        apparmor: security["appArmorProfile"]["type"]
            .as_str()
            .map(String::from),
        mounts,
        args: strings(&container["args"]),
        memory_request: bytes(
            container["resources"]["requests"]["memory"]
                .as_str()
                .expect("a memory request"),
        ),
        memory_limit: bytes(limits["memory"].as_str().expect("a memory limit")),
        cpu_limit: limits["cpu"].as_str().expect("a CPU limit").to_string(),
        port: port["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("containerPort"),
        health_path: probe["httpGet"]["path"]
            .as_str()
            .expect("the probe's path")
            .to_string(),
        startup: Duration::from_secs(startup),
    }
}

/// Builds IMAGE from the binary under test, as `cargo xtask image` builds the release one;
/// once per test binary.
fn build_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let context = std::env::temp_dir().join(format!("port-trace-image-{}", std::process::id()));
        let built = rootfs::build_image(&repo_root(), Path::new(binary()), &context, IMAGE);
        let _ = std::fs::remove_dir_all(&context);
        built.unwrap_or_else(|e| panic!("building {IMAGE}: {e}"));
    });
}

/// port-trace running as the DaemonSet's container, under Docker.
struct Deployed {
    container: Container,
    spec: Spec,
    /// Empty directories standing in for host paths this host lacks (no kubelet here:
    /// /var/log/pods): Docker would otherwise create them on the host.
    stand_ins: PathBuf,
    /// The capabilities passed to Docker (the spec's, less those the engine does not know).
    cap_added: Vec<String>,
}

impl Deployed {
    /// Starts it with the spec's args and `extra` after them; `host_paths` replace host
    /// paths of the spec's mounts (fixtures: e.g. a /var/log/pods of the test's own).
    fn start(docker: &Docker, extra: &[&str], host_paths: &[(&str, &Path)]) -> Deployed {
        Deployed::start_edited(docker, extra, host_paths, |_| {})
    }

    /// `start`, with the spec changed by `edit` first (for the negative controls).
    fn start_edited(
        docker: &Docker,
        extra: &[&str],
        host_paths: &[(&str, &Path)],
        edit: impl FnOnce(&mut Spec),
    ) -> Deployed {
        let mut spec = spec();
        edit(&mut spec);
        let mut options: Vec<String> = Vec::new();
        if spec.host_pid {
            options.extend(["--pid".into(), "host".into()]);
        }
        assert!(
            spec.host_network,
            "the metrics port is reached on the host's network; a pod network needs more here"
        );
        options.extend(["--network".into(), "host".into()]);
        for cap in &spec.drop {
            options.extend(["--cap-drop".into(), cap.clone()]);
        }
        let mut cap_added = Vec::new();
        for cap in &spec.add {
            if docker.knows_capability(cap) {
                options.extend(["--cap-add".into(), cap.clone()]);
                cap_added.push(cap.clone());
            } else {
                // Debian's Docker 20.10 predates CAP_BPF and CAP_PERFMON. The kernel grants
                // what they allow (bpf_capable(), perfmon_capable()) to CAP_SYS_ADMIN as well,
                // which the spec adds: the container runs with fewer capabilities than the
                // spec, never more, so what runs here runs with the spec's.
                assert!(
                    ["BPF", "PERFMON"].contains(&cap.as_str())
                        && spec.add.iter().any(|c| c == "SYS_ADMIN"),
                    "Docker {} does not know capability {cap}",
                    docker.version
                );
                eprintln!(
                    "note: Docker {} does not know CAP_{cap}: run without it (CAP_SYS_ADMIN, \
                     also in the spec, covers it in the kernel)",
                    docker.version
                );
            }
        }
        if spec.read_only_root {
            options.push("--read-only".into());
        }
        match spec.seccomp.as_deref() {
            // Docker's default profile is its runtime default.
            Some("RuntimeDefault") | None => {}
            Some("Unconfined") => {
                options.extend(["--security-opt".into(), "seccomp=unconfined".into()])
            }
            Some(other) => panic!("seccomp profile {other}: map it here"),
        }
        match spec.apparmor.as_deref() {
            Some("RuntimeDefault") | None => {}
            Some("Unconfined") => {
                options.extend(["--security-opt".into(), "apparmor=unconfined".into()])
            }
            Some(other) => panic!("AppArmor profile {other}: map it here"),
        }
        let stand_ins =
            std::env::temp_dir().join(format!("port-trace-hostpaths-{}", std::process::id()));
        for (host, inside, read_only) in &spec.mounts {
            let source = match host_paths.iter().find(|(path, _)| path == host) {
                Some((_, replacement)) => replacement.to_path_buf(),
                None if Path::new(host).exists() => PathBuf::from(host),
                None => {
                    let stand_in = stand_ins.join(host.trim_start_matches('/').replace('/', "_"));
                    std::fs::create_dir_all(&stand_in).expect("a stand-in directory");
                    eprintln!("note: this host has no {host}: an empty directory stands in");
                    stand_in
                }
            };
            // --mount, not -v: a missing source is an error, never created on the host.
            let mut mount = format!("type=bind,source={},target={inside}", source.display());
            if *read_only {
                mount.push_str(",readonly");
            }
            options.extend(["--mount".into(), mount]);
        }
        options.extend([
            "--memory".into(),
            spec.memory_limit.to_string(),
            "--cpus".into(),
            spec.cpu_limit.clone(),
        ]);
        // The DaemonSet's port on the host: taken, port-trace would exit 5 (cannot serve).
        if let Err(err) = TcpListener::bind((Ipv4Addr::UNSPECIFIED, spec.port)) {
            panic!(
                "port {} (the DaemonSet's) is not free on this host ({err}): stop what holds it",
                spec.port
            );
        }
        let mut args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        eprintln!(
            "docker run {} {IMAGE} {}",
            options.join(" "),
            args.join(" ")
        );
        let name = format!("port-trace-test-daemonset-{}", std::process::id());
        let container = docker.run(&name, &options, IMAGE, &args);
        Deployed {
            container,
            spec,
            stand_ins,
            cap_added,
        }
    }

    /// The capability set it was started with, as a CapEff mask.
    fn given_capabilities(&self) -> u64 {
        assert_eq!(self.spec.drop, ["ALL"], "only drop-all specs are run here");
        self.cap_added
            .iter()
            .fold(0, |mask, c| mask | capability_bit(c))
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.spec.port)
    }

    /// Waits, as long as the startup probe would, for the probe's path to answer 200.
    fn wait_healthy(&self) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok((200, body)) = http_get(&self.addr(), &self.spec.health_path) {
                assert_eq!(body, "ok\n");
                return started.elapsed();
            }
            if !self.container.running() || started.elapsed() > self.spec.startup {
                let (stdout, stderr) = self.container.logs();
                panic!(
                    "no answer at {} within {:?} (running: {}, exit code {})\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    self.spec.health_path,
                    self.spec.startup,
                    self.container.running(),
                    self.container.inspect("{{.State.ExitCode}}")
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Every JSON record it has printed on stdout so far (`--events json`), in order.
    fn records(&self) -> Vec<Value> {
        let (stdout, _) = self.container.logs();
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// The first record that `wanted` accepts, waiting up to 30 s for it.
    fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = self.records();
            if let Some(found) = records.iter().find(|r| wanted(r)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                let (_, stderr) = self.container.logs();
                panic!(
                    "no record of {what} within 30 s; {} records:\n{}\nstderr:\n{stderr}",
                    records.len(),
                    records
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// The container's memory use (cgroup, kernel memory such as the eBPF maps included,
    /// page cache not), from `docker stats`.
    fn memory_used(&self) -> u64 {
        let usage = docker_cmd(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            &self.container.id,
        ])
        .expect("docker stats");
        let used = usage.split('/').next().unwrap_or("").trim();
        let (number, unit) = used.split_at(
            used.find(|c: char| c.is_ascii_alphabetic())
                .unwrap_or(used.len()),
        );
        let number: f64 = number.parse().unwrap_or_else(|_| panic!("{usage}"));
        let unit = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => panic!("memory unit in {usage}"),
        };
        (number * unit) as u64
    }

    /// Its exit code once it has ended by itself (within 60 s).
    fn exit_code(&self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.container.running() {
            assert!(Instant::now() < deadline, "still running after 60 s");
            sleep(Duration::from_millis(200));
        }
        self.container
            .inspect("{{.State.ExitCode}}")
            .parse()
            .expect("an exit code")
    }

    /// SIGTERM, as the kubelet stops it: the exit code, within the grace period.
    fn stop(&self) -> i32 {
        docker_cmd(&["stop", "--time", "30", &self.container.id]).expect("docker stop");
        self.container
            .inspect("{{.State.ExitCode}}")
            .parse()
            .expect("an exit code")
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.stand_ins);
    }
}

/// The peer's ephemeral range: ten ports, its own (a network namespace's sysctl).
const PEER_RANGE: (u16, u16) = (40000, 40009);

/// A busybox container in a network namespace of its own with a 10-port range, holding one
/// TCP connection to its own listener on 7000 (the client's port is ephemeral).
fn peer_holding_a_connection(docker: &Docker) -> Container {
    let range = format!(
        "net.ipv4.ip_local_port_range={} {}",
        PEER_RANGE.0, PEER_RANGE.1
    );
    docker.run(
        &format!("port-trace-test-peer-{}", std::process::id()),
        &["--network", "none", "--sysctl", &range],
        docker.busybox_image(),
        &[
            "sh",
            "-c",
            // The client once the listener is up; both hold their ends (stdin never ends).
            "sleep 600 | nc -l -p 7000 >/dev/null & \
             until netstat -ltn | grep -q ':7000 '; do sleep 0.1; done; \
             sleep 600 | nc 127.0.0.1 7000",
        ],
    )
}

#[test]
fn the_daemonset_runs_under_docker_and_traces_other_containers() {
    let Some(docker) = docker("the_daemonset_runs_under_docker_and_traces_other_containers") else {
        return;
    };
    build_image();
    let deployed = Deployed::start(&docker, &["--events", "json"], &[]);
    let took = deployed.wait_healthy();
    eprintln!("healthy after {took:?}");
    // Exactly the capabilities it was given: the kernel's view of the running process.
    let effective = effective_capabilities(deployed.container.pid());
    let given = deployed.given_capabilities();
    assert_eq!(
        effective, given,
        "CapEff {effective:#x}, given {given:#x} ({:?})",
        deployed.spec.add
    );
    let (status, page) = http_get(&deployed.addr(), "/metrics").expect("a scrape");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("port_trace_build_info{"), "{page}");

    let peer = peer_holding_a_connection(&docker);
    let netns = peer.netns();
    assert_ne!(
        Some(netns),
        std::fs::metadata("/proc/self/ns/net")
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m)),
        "--network none gives the peer a namespace of its own"
    );
    let alloc = deployed.wait_for("the peer's connect", |r| {
        r["type"] == "alloc"
            && r["kind"] == "connect"
            && r["proto"] == "tcp"
            && r["netns"].as_u64() == Some(netns)
    });
    eprintln!("traced: {alloc}");
    assert_eq!(alloc["comm"], "nc", "{alloc}");
    // Attributed from inside the DaemonSet's container: the peer's cgroup read through the
    // read-only /sys/fs/cgroup mount names its container. (No Docker socket is mounted, as
    // on a Kubernetes node: the id and runtime, not Docker's name.)
    assert_eq!(alloc["container"]["id"], peer.id.as_str(), "{alloc}");
    assert_eq!(alloc["container"]["runtime"], "docker", "{alloc}");
    let short_id = &peer.id[..12];
    assert_eq!(alloc["laddr"], "127.0.0.1", "{alloc}");
    let port = alloc["port"].as_u64().expect("a port");
    assert!(
        (u64::from(PEER_RANGE.0)..=u64::from(PEER_RANGE.1)).contains(&port),
        "{alloc}"
    );
    // The peer's range was read inside its namespace (setns through /proc/PID/ns/net: host
    // PID namespace, CAP_SYS_ADMIN, CAP_SYS_PTRACE): its scope holds 1 of 10 ports.
    let scope = format!(
        "{{container=\"{short_id}\",destination=\"\",namespace=\"\",netns=\"{netns}\",pod=\"\",proto=\"tcp\",scope=\"namespace\"}}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = http_get(&deployed.addr(), "/metrics").expect("a scrape");
        let capacity = page.contains(&format!("port_trace_scope_ports_capacity{scope} 10\n"));
        let used = page.contains(&format!("port_trace_scope_ports_used{scope} 1\n"));
        if capacity && used {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 1-of-10 scope for the peer's namespace: {}",
            page.lines()
                .filter(|l| l.contains(&netns.to_string()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        sleep(Duration::from_millis(500));
    }

    // Sized right: well inside its limit, the eBPF maps included (a request is what it
    // uses at rest: ~33 MiB on a quiet host, more while this busy host's other tests churn,
    // so only the limit, past which it would be killed, is a hard bound).
    let used = deployed.memory_used();
    eprintln!(
        "memory: {:.1} MiB used, {} MiB requested, {} MiB limit",
        used as f64 / (1 << 20) as f64,
        deployed.spec.memory_request >> 20,
        deployed.spec.memory_limit >> 20
    );
    assert!(
        used < deployed.spec.memory_limit / 2,
        "uses {used} bytes, more than half its limit of {}",
        deployed.spec.memory_limit
    );

    // Stopped as the kubelet stops it: detaches and exits 0.
    drop(peer);
    let code = deployed.stop();
    let (_, stderr) = deployed.container.logs();
    assert_eq!(code, 0, "exit code {code}; stderr:\n{stderr}");
}

/// The negative control: the run above is not indifferent to the capabilities. Without
/// CAP_NET_ADMIN (one of the spec's) port-trace refuses before attaching anything, with exit
/// code 3 (not permitted) and the capability named.
#[test]
fn without_one_of_its_capabilities_it_refuses_to_start() {
    let Some(docker) = docker("without_one_of_its_capabilities_it_refuses_to_start") else {
        return;
    };
    build_image();
    let deployed = Deployed::start_edited(&docker, &[], &[], |spec| {
        assert!(spec.add.iter().any(|c| c == "NET_ADMIN"), "{:?}", spec.add);
        spec.add.retain(|c| c != "NET_ADMIN");
    });
    let code = deployed.exit_code();
    let (_, stderr) = deployed.container.logs();
    assert_eq!(code, 3, "stderr:\n{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");
}
