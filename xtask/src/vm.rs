//! `cargo xtask vm-test`: the test suite on other kernels, in VMs.
//!
//! Boots Debian's cloud kernels (5.10 of Debian 11, 6.1 and 6.12 of Debian 12, 6.12 of Debian
//! 13) under qemu (TCG: KVM is not available here) from an initramfs holding busybox, the
//! test binaries, port-trace and the shared libraries they need, runs the test binaries
//! inside once per run (a kernel, a backend, cgroup v2 mounted or not), and prints a table.
//! Each kernel comes from its own Debian suite through an apt configuration private to the
//! harness (the host's sources are not touched); packages are cached in `CACHE`.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, run, setup};

pub struct Kernel {
    /// As `--kernels` and the table name it: the version, and the Debian release that
    /// ships it where two releases ship the same version.
    pub name: &'static str,
    pub package: &'static str,
    /// The Debian archive and suite the package comes from.
    pub archive: &'static str,
    pub suite: &'static str,
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";

/// The distribution kernels the suite must pass on (KERNEL-NOTES.md), oldest first.
pub const KERNELS: [Kernel; 4] = [
    Kernel {
        name: "5.10-deb11",
        package: "linux-image-5.10.0-46-cloud-amd64",
        archive: DEBIAN_SECURITY,
        suite: "bullseye-security",
    },
    Kernel {
        name: "6.1-deb12",
        package: "linux-image-6.1.0-50-cloud-amd64",
        archive: DEBIAN,
        suite: "bookworm",
    },
    Kernel {
        name: "6.12-deb12",
        package: "linux-image-6.12.115+deb12-cloud-amd64",
        archive: DEBIAN_SECURITY,
        suite: "bookworm-security",
    },
    Kernel {
        name: "6.12-deb13",
        package: "linux-image-6.12.117+deb13-cloud-amd64",
        archive: DEBIAN,
        suite: "trixie",
    },
];

/// One VM: a kernel, the backend the suite runs with, and whether cgroup v2 is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub kernel: &'static str,
    pub backend: &'static str,
    pub cgroup2: bool,
}

impl Run {
    const fn new(kernel: &'static str, backend: &'static str) -> Self {
        Self {
            kernel,
            backend,
            cgroup2: true,
        }
    }

    /// The test binaries it runs (name prefixes); all when empty.
    fn tests(&self) -> &'static [&'static str] {
        if self.cgroup2 { &[] } else { NO_CGROUP2_TESTS }
    }

    /// As in the table.
    fn setup(&self) -> &'static str {
        if self.cgroup2 {
            "cgroup v2"
        } else {
            "no cgroup v2"
        }
    }
}

/// A host whose init mounts only cgroup v1: the kprobe backend needs no cgroup, the
/// tracepoint backend says why it cannot start. What runs there: `check` (both backends'
/// verdicts), and TCP and UDP ports end to end with the kprobe backend.
const NO_CGROUP2_TESTS: &[&str] = &["check", "tcp_lifetimes", "udp_ports"];

/// Every run `cargo xtask vm-test` can make: each kernel with each backend, and the newest
/// kernel without cgroup v2 (kprobe: the backend that can work there).
pub fn all_runs() -> Vec<Run> {
    let mut runs: Vec<Run> = KERNELS
        .iter()
        .flat_map(|k| ["tracepoint", "kprobe"].map(|backend| Run::new(k.name, backend)))
        .collect();
    runs.push(Run {
        cgroup2: false,
        ..Run::new(KERNELS[KERNELS.len() - 1].name, "kprobe")
    });
    runs
}

/// What every CI run (`cargo xtask test`) makes, to stay within its time (a full run is
/// 7-12 minutes under emulation, two at a time; CI with both backends' full runs on the
/// newest kernel too took 50 minutes): both backends on the oldest kernel, and the newest's
/// kprobe backend in the run without cgroup v2 (check, TCP and UDP end to end). The
/// tracepoint backend's full suite runs on the CI host's own kernel (6.18, newer still)
/// before the VMs. The rest is on demand: `cargo xtask vm-test` makes every run
/// (`all_runs`).
pub fn ci_runs() -> Vec<Run> {
    let (oldest, newest) = (KERNELS[0].name, KERNELS[KERNELS.len() - 1].name);
    vec![
        Run::new(oldest, "tracepoint"),
        Run::new(oldest, "kprobe"),
        Run {
            cgroup2: false,
            ..Run::new(newest, "kprobe")
        },
    ]
}

const CACHE: &str = "/var/cache/port-trace/vm";
const VM_PACKAGES: [&str; 5] = [
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "binutils",
];
/// Host programs the tests run, copied in with their libraries (busybox has no ss, and its
/// setpriv lacks the options the tests use).
const HOST_TOOLS: [&str; 4] = [
    "/usr/bin/ss",
    "/usr/bin/setpriv",
    // The check test's private mount namespace without cgroup v2.
    "/usr/bin/unshare",
    "/usr/bin/findmnt",
];
/// sock_diag for TCP and UDP: modules in Debian's kernels, which a real host loads on demand
/// and the VM's init loads by hand, in this order.
const DIAG_MODULES: [&str; 4] = [
    "net/core/sock_diag",
    "net/ipv4/inet_diag",
    "net/ipv4/tcp_diag",
    "net/ipv4/udp_diag",
];
/// One VM run: boot plus the whole suite, TIME_WAIT test included, under TCG. Debian's 6.12
/// runs take 14.5 minutes two at a time on our 2 cores (873 and 880 s; 5.10 and 6.1, 12.5):
/// 15 was too close, and a run that reached it looked like a stall.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub struct Outcome {
    pub run: Run,
    pub passed: bool,
    pub summary: String,
}

/// What to run: the runs, and optionally only some test binaries (by name prefix), for
/// working on one failure.
pub struct Selection<'a> {
    pub runs: Vec<Run>,
    pub only: Option<&'a str>,
}

/// `all_runs` narrowed to some backends and kernels (none: all); a kernel is named in full
/// (`6.12-deb13`) or by its version (`6.12`: both).
pub fn select(backends: &[String], kernels: &[String]) -> Result<Vec<Run>> {
    for name in kernels {
        if !KERNELS.iter().any(|k| kernel_matches(k.name, name)) {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            bail!("no kernel {name} (known: {})", known.join(", "));
        }
    }
    Ok(all_runs()
        .into_iter()
        .filter(|run| backends.is_empty() || backends.iter().any(|b| b == run.backend))
        .filter(|run| kernels.is_empty() || kernels.iter().any(|k| kernel_matches(run.kernel, k)))
        .collect())
}

fn kernel_matches(kernel: &str, asked: &str) -> bool {
    kernel == asked || kernel.split('-').next() == Some(asked)
}

pub fn vm_test(selection: &Selection) -> Result<Vec<Outcome>> {
    setup::ensure_apt_packages(&VM_PACKAGES)?;
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| selection.runs.iter().any(|run| run.kernel == k.name))
        .collect();
    let images: Vec<PathBuf> = kernels
        .iter()
        .map(|k| fetch_kernel(k))
        .collect::<Result<_>>()?;
    let tests = build_test_binaries()?;
    let work = Path::new("target/vm");
    fs::create_dir_all(work)?;
    let initrd = build_initramfs(&tests, &kernels, work)?;
    let mut runs: Vec<(Run, PathBuf)> = Vec::new();
    for run in &selection.runs {
        let image = kernels
            .iter()
            .zip(&images)
            .find(|(k, _)| k.name == run.kernel)
            .map(|(_, image)| image.clone())
            .with_context(|| format!("no kernel {}", run.kernel))?;
        runs.push((*run, image));
    }
    // The longest first (full suites with the kprobe backend: 10-11 min against 6-7 under
    // emulation; the few tests without cgroup v2 last), so the two lanes end together.
    runs.sort_by_key(|(run, _)| (!run.tests().is_empty(), run.backend != "kprobe"));
    // Two VMs at a time (PT_VM_JOBS): the suite spends much of its time waiting (TIME_WAIT's
    // 60 s, settling, reconciliation), when another VM can have the cores.
    let jobs = std::env::var("PT_VM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(2)
        .clamp(1, runs.len().max(1));
    let next = AtomicUsize::new(0);
    let (done, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let done = done.clone();
            scope.spawn(|| {
                let done = done; // by value: each thread owns its sender
                while let Some((run, vmlinuz)) = runs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    eprintln!(
                        "vm-test: {} kernel, {} backend, {}",
                        run.kernel,
                        run.backend,
                        run.setup()
                    );
                    let log = work.join(format!(
                        "{}-{}{}.log",
                        run.kernel,
                        run.backend,
                        if run.cgroup2 { "" } else { "-no-cgroup2" }
                    ));
                    let outcome = boot(vmlinuz, &initrd, run, selection.only, &log).map(
                        |(passed, summary)| Outcome {
                            run: *run,
                            passed,
                            summary,
                        },
                    );
                    let _ = done.send(outcome);
                }
            });
        }
    });
    drop(done);
    let mut outcomes: Vec<Outcome> = finished.into_iter().collect::<Result<_>>()?;
    // In the table, by kernel and backend, whichever finished first.
    let order = |o: &Outcome| {
        let kernel = KERNELS.iter().position(|k| k.name == o.run.kernel);
        (kernel, o.run.backend, !o.run.cgroup2)
    };
    outcomes.sort_by_key(order);
    if outcomes.len() != runs.len() {
        bail!(
            "{} of {} VM runs did not report",
            runs.len() - outcomes.len(),
            runs.len()
        );
    }
    Ok(outcomes)
}

pub fn print_table(outcomes: &[Outcome]) {
    let rows: Vec<[String; 5]> = outcomes
        .iter()
        .map(|o| {
            [
                o.run.kernel.to_string(),
                o.run.backend.to_string(),
                o.run.setup().to_string(),
                if o.passed { "pass" } else { "FAIL" }.to_string(),
                o.summary.clone(),
            ]
        })
        .collect();
    let header = ["kernel", "backend", "setup", "result", "detail"].map(String::from);
    // Every column but the last as wide as its widest cell.
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|row| row[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    println!();
    for row in [&header].into_iter().chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        line.push_str(&row[4]);
        println!("{line}");
    }
}

/// Test binaries that run on the host only, because another kernel changes nothing for
/// them: `layout` reads the source tree (which the VM lacks); the others test the daemon's
/// own userspace (output files, stdout and stderr, the metrics server, escaping on the
/// terminal) and cost the matrix minutes under emulation for nothing it could find.
///
/// `kubernetes` checks deploy/'s manifests (the source tree again, and a Python tool), and
/// `daemonset_docker` and `containers` need a Docker engine, which the VM guests do not
/// have: they run here, where `cargo xtask test` installs and starts what they need. The
/// attribution that needs no Docker (`cgroup_id`, `workload`: real cgroups) runs in the VMs.
///
/// `findings` and `analyze` test the daemon's judgement and replay of event streams whose
/// kernel side the VMs cover already (`tcp_lifetimes`, `time_wait`, `exhaustion`), and the
/// churn finding's "before the first failure" is a race under emulation, not a kernel
/// property. Bind before connect's kernel side (`bound_connect`, per backend) is in
/// `bind_connect`, which runs in the VMs.
const HOST_ONLY_TESTS: [&str; 10] = [
    "layout",
    "outputs",
    "console_io",
    "metrics_server",
    "terminal",
    "kubernetes",
    "daemonset_docker",
    "containers",
    "findings",
    "analyze",
];

/// Builds the test binaries (and port-trace, which the integration tests run) and returns
/// the test executables.
fn build_test_binaries() -> Result<Vec<PathBuf>> {
    let out = cmd("cargo")
        .args([
            "test",
            "--package",
            "port-trace",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && !HOST_ONLY_TESTS.contains(&msg["target"]["name"].as_str().unwrap_or_default())
            && let Some(exe) = msg["executable"].as_str()
        {
            tests.push(PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("cargo built no test executables");
    }
    Ok(tests)
}

/// The kernel image from the cached Debian package, downloading it once.
fn fetch_kernel(kernel: &Kernel) -> Result<PathBuf> {
    let dir = Path::new(CACHE).join(kernel.package);
    let boot = dir.join("root/boot");
    if let Some(found) = find_vmlinuz(&boot) {
        return Ok(found);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "vm-test: downloading {} from Debian {}",
        kernel.package, kernel.suite
    );
    let apt = private_apt(kernel)?;
    let mut download = Command::new("apt-get");
    download
        .args(&apt)
        .args(["download", kernel.package])
        .current_dir(&dir);
    if run(&mut download).is_err() {
        run(Command::new("apt-get").args(&apt).arg("update"))?;
        run(&mut download)?;
    }
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")))?;
    find_vmlinuz(&boot).with_context(|| format!("no vmlinuz in {}", deb.display()))
}

/// apt-get options for an apt of `kernel`'s suite alone: its own sources list, package lists
/// and cache under `CACHE`, signed by Debian's archive keys; the host's configuration and
/// package lists are not touched.
fn private_apt(kernel: &Kernel) -> Result<Vec<String>> {
    let dir = fs::canonicalize(CACHE)?.join("apt").join(kernel.suite);
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {} main\n",
            kernel.archive, kernel.suite
        ),
    )?;
    Ok(vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/nonexistent".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        // Downloads land in directories only root may write: apt's sandbox user cannot.
        "-oAPT::Sandbox::User=root".into(),
    ])
}

fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    fs::read_dir(boot)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
        })
}

/// The shared libraries `binary` loads, from ldd.
fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("ldd")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Copies `from` to the same absolute path under `root`.
fn place(root: &Path, from: &Path) -> Result<()> {
    let to = root.join(from.strip_prefix("/").unwrap_or(from));
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

fn build_initramfs(tests: &[PathBuf], kernels: &[&Kernel], work: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "proc", "sys", "dev", "tmp", "tests", "root", "run"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;

    // port-trace must be where the tests were built to find it (CARGO_BIN_EXE_port-trace).
    let port_trace = fs::canonicalize("target/debug/port-trace")?;
    let mut binaries: Vec<PathBuf> = vec![port_trace.clone()];
    binaries.extend(HOST_TOOLS.iter().map(PathBuf::from));
    let mut libraries = BTreeSet::new();
    for binary in binaries.iter().chain(tests) {
        libraries.extend(shared_libraries(binary)?);
    }
    for file in binaries.iter().chain(&libraries) {
        place(&root, file)?;
    }
    for test in tests {
        let name = test.file_name().context("test without a name")?;
        let to = root.join("tests").join(name);
        fs::copy(test, &to)?;
        // Debug info is most of a test binary's size and the VM holds it all in RAM.
        let _ = Command::new("strip").arg("--strip-debug").arg(&to).status();
    }
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(root.join(port_trace.strip_prefix("/")?))
        .status();

    for kernel in kernels {
        copy_diag_modules(kernel, &root)?;
    }

    let init = root.join("init");
    // The init runs `port-trace check` first: its verdict goes in the table.
    fs::write(
        &init,
        INIT.replace("@PORT_TRACE@", &port_trace.display().to_string()),
    )?;
    run(Command::new("chmod").arg("755").arg(&init))?;

    let initrd = work.join("initrd.cpio");
    let archive = fs::File::create(&initrd)?;
    let mut cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio --quiet -o -H newc")
        .current_dir(&root)
        .stdout(archive)
        .spawn()
        .context("cpio")?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    Ok(initrd)
}

/// Copies `DIAG_MODULES` of `kernel` into the initramfs, decompressed (busybox insmod takes
/// plain .ko files); a module built into the kernel is simply absent.
fn copy_diag_modules(kernel: &Kernel, root: &Path) -> Result<()> {
    // Debian 13's packages keep modules under usr/lib (the merged /usr), older ones under lib.
    let package = Path::new(CACHE).join(kernel.package).join("root");
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| package.join(dir))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("no lib/modules or usr/lib/modules in {}", package.display()))?;
    for version in fs::read_dir(&modules)?.filter_map(Result::ok) {
        let target = root.join("lib/modules").join(version.file_name());
        fs::create_dir_all(&target)?;
        for module in DIAG_MODULES {
            let name = module.rsplit('/').next().unwrap_or(module);
            let base = version.path().join("kernel").join(module);
            let plain = base.with_extension("ko");
            let packed = base.with_extension("ko.xz");
            let to = target.join(format!("{name}.ko"));
            if plain.exists() {
                fs::copy(&plain, &to)?;
            } else if packed.exists() {
                let out = Command::new("xz")
                    .arg("-dc")
                    .arg(&packed)
                    .output()
                    .context("xz")?;
                if !out.status.success() {
                    bail!("xz -d {} failed", packed.display());
                }
                fs::write(&to, out.stdout)?;
            }
        }
    }
    Ok(())
}

/// The VM's init: mounts what port-trace needs, runs every test binary, powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
# The host's ss and setpriv (in /usr) before busybox's applets of the same names.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# No tmpfs on /tmp: the initramfs root is writable already, and the binaries may live under
# /tmp (where the checkout is), which a mount there would hide.
only="" cgroup2=1
for word in $(cat /proc/cmdline); do
  case "$word" in
    pt_backend=*) export PORT_TRACE_TEST_BACKEND="${word#pt_backend=}";;
    pt_only=*) only="${word#pt_only=}";;
    pt_cgroup2=*) cgroup2="${word#pt_cgroup2=}";;
    pt_log=*) export PORT_TRACE_LOG="${word#pt_log=}";;
  esac
done
# Without cgroup v2 when the run says so: a host whose init mounts only cgroup v1.
[ "$cgroup2" = 1 ] && mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
for module in sock_diag inet_diag tcp_diag udp_diag; do
  [ -f "/lib/modules/$(uname -r)/$module.ko" ] && insmod "/lib/modules/$(uname -r)/$module.ko"
done
echo "=== vm kernel $(uname -r) backend $PORT_TRACE_TEST_BACKEND cgroup2 $cgroup2"
# What port-trace itself says of this machine, before any test: its verdict goes in the table.
@PORT_TRACE@ check 2>&1 | sed 's/^/=== check /'
# pt_only: test binaries by name prefix, comma-separated (none: all).
for t in /tests/*; do
  name=$(basename "$t")
  if [ -n "$only" ]; then
    wanted=0
    for prefix in $(echo "$only" | tr , ' '); do
      case "$name" in "$prefix"*) wanted=1;; esac
    done
    [ "$wanted" = 1 ] || continue
  fi
  "$t" --test-threads=1
  echo "=== exit $name $?"
done
echo "=== done"
poweroff -f
"#;

/// Boots one VM; returns whether every test binary passed and a one-line summary.
fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    run: &Run,
    only: Option<&str>,
    log: &Path,
) -> Result<(bool, String)> {
    // `--only` narrows what the run would run; a run without cgroup v2 runs its own few.
    let tests = match only {
        Some(only) => only.to_string(),
        None => run.tests().join(","),
    };
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp"])
        .arg(std::env::var("PT_VM_SMP").unwrap_or_else(|_| "2".into()))
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet pt_backend={} pt_cgroup2={} pt_only={tests}{}",
            run.backend,
            u8::from(run.cgroup2),
            // The daemon's log filter inside the VM, for working on one failure.
            std::env::var("PT_VM_LOG")
                .map(|filter| format!(" pt_log={filter}"))
                .unwrap_or_default()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = fs::File::create(log)?;
    let (mut exits, mut failed, mut done, mut results) = (0, Vec::new(), false, (0u32, 0u32));
    let mut check = String::from("no backend");
    loop {
        let left = VM_TIMEOUT.saturating_sub(started.elapsed());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        writeln!(file, "{line}")?;
        if let Some(rest) = line.strip_prefix("=== exit ") {
            exits += 1;
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(code)) = (words.next(), words.next())
                && code != "0"
            {
                failed.push(name.to_string());
            }
        } else if let Some(verdict) = line
            .strip_prefix("=== check ")
            .and_then(|l| l.strip_prefix("will work: "))
        {
            check = verdict.to_string();
        } else if line.starts_with("=== done") {
            done = true;
        } else if let Some(rest) = line.trim().strip_prefix("test result: ") {
            // "ok. 3 passed; 0 failed; ..." or "FAILED. ..."
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.split_whitespace().last()?.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            results.0 += count(" passed");
            results.1 += count(" failed");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let passed = done && failed.is_empty() && exits > 0;
    let mut summary = format!(
        "check: {check}; {} passed, {} failed in {} binaries, {:.0}s",
        results.0,
        results.1,
        exits,
        started.elapsed().as_secs_f64()
    );
    if !done {
        summary.push_str(" (did not finish: see ");
        summary.push_str(&log.display().to_string());
        summary.push(')');
    } else if !failed.is_empty() {
        summary.push_str(&format!(
            " (failing: {}; log {})",
            failed.join(", "),
            log.display()
        ));
    }
    Ok((passed, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ci_run_is_one_of_all_runs_and_covers_both_ends() {
        let all = all_runs();
        assert_eq!(all.len(), KERNELS.len() * 2 + 1);
        let same =
            |a: &Run, b: &Run| (a.kernel, a.backend, a.cgroup2) == (b.kernel, b.backend, b.cgroup2);
        let ci = ci_runs();
        assert!(
            ci.iter().all(|run| all.iter().any(|a| same(a, run))),
            "{ci:?}"
        );
        // Both backends on the oldest kernel, the kprobe backend on the newest (the
        // tracepoint backend's is the CI host's, newer still).
        let covered = |kernel: &str, backend: &str| {
            ci.iter()
                .any(|run| run.kernel == kernel && run.backend == backend)
        };
        assert!(covered(KERNELS[0].name, "tracepoint") && covered(KERNELS[0].name, "kprobe"));
        assert!(covered(KERNELS[KERNELS.len() - 1].name, "kprobe"));
        assert!(ci.iter().any(|run| !run.cgroup2 && run.backend == "kprobe"));
    }

    #[test]
    fn kernels_are_named_in_full_or_by_version() {
        let strings = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let runs = select(&strings(&["kprobe"]), &strings(&["6.12"])).expect("known");
        let kernels: BTreeSet<&str> = runs.iter().map(|run| run.kernel).collect();
        assert_eq!(kernels, BTreeSet::from(["6.12-deb12", "6.12-deb13"]));
        assert!(runs.iter().all(|run| run.backend == "kprobe"));
        let one = select(&[], &strings(&["5.10-deb11"])).expect("known");
        assert_eq!(one.len(), 2);
        assert!(select(&[], &strings(&["4.19"])).is_err());
    }
}
