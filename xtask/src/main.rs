//! Project tasks: `cargo xtask <setup|build|run|test|fuzz|bench|install>`.
//!
//! Every task that builds first runs `setup`, which installs what the eBPF build needs, so the
//! README's two commands work on a fresh Debian/Ubuntu machine.

mod bench;
mod fuzz;
mod image;
mod peers;
mod rootfs;
mod setup;
mod soak;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "port-trace's build, test and install tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs: nightly rust-src, LLVM 22 (apt), bpf-linker.
    Setup,
    /// Set up, then build target/release/port-trace.
    Build,
    /// Set up, build, and run port-trace as root with the given arguments.
    Run {
        /// Arguments for port-trace, after `--` (e.g. `cargo xtask run -- --duration 30s`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the whole test suite: fmt, clippy, unit and kernel integration
    /// tests here, each fuzz target briefly, then the kernel matrix in VMs (vm-test).
    Test,
    /// Run the fuzz targets in fuzz/ (installs cargo-fuzz if missing): each for --seconds,
    /// or one for longer (`cargo xtask fuzz --seconds 3600 btf`). A crash fails with the
    /// path of the input, saved under fuzz/artifacts/TARGET/.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Run the test suite in VMs on Debian's kernels (5.10-deb11, 6.1-deb12, 6.12-deb12,
    /// 6.12-deb13), once per backend, plus the newest without cgroup v2 (kprobe), and print
    /// a table. `cargo xtask test` makes fewer runs (vm::ci_runs); this makes them all.
    VmTest {
        /// Only these backends (tracepoint, kprobe); default both.
        #[arg(long, value_delimiter = ',')]
        backends: Vec<String>,
        /// Only these kernels, by name or version (6.12 is both 6.12s); default all.
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Only the test binaries whose name starts with this (e.g. `tcp_lifetimes`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Measure port-trace's overhead against no tracer and libbpf-tools' tcplife (as root):
    /// churn throughput, events counted and lost, eBPF run time, daemon CPU and memory.
    Bench {
        /// Rounds of the interleaved series (medians over these).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How long each workload runs per round, in milliseconds.
        #[arg(long, default_value_t = 3_000)]
        millis: u64,
        /// Connections the scale test holds.
        #[arg(long, default_value_t = 100_000)]
        hold: usize,
        /// A seconds-long pass that checks the bench still runs (CI): one round, short runs,
        /// a small scale test.
        #[arg(long)]
        smoke: bool,
        /// Another port-trace binary (e.g. main before a change, built in a git worktree) to
        /// run side by side with this build in the same interleaved rounds.
        #[arg(long, value_name = "BINARY")]
        baseline: Option<PathBuf>,
        /// Instead of the series: a soak of this many minutes under mixed churn and
        /// network-namespace churn, with --prometheus; prints RSS, fds and ports in use
        /// (scraped vs the kernel's) over time and fails on growth or drift. Judging growth
        /// needs at least 2 minutes (TIME_WAIT's 60 s warm-up first).
        #[arg(long, value_name = "MINUTES")]
        soak: Option<f64>,
    },
    /// Set up, build, and make port-trace's container image offline (FROM scratch:
    /// deploy/Containerfile over the binary and the libraries it loads), with the running
    /// Docker engine or one started for the build.
    Image {
        /// The image's name and tag (deploy/kubernetes/daemonset.yaml runs port-trace:latest).
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// Set up, build, copy port-trace into PREFIX/bin (default /usr/local) and its systemd
    /// unit (deploy/port-trace.service, started from there) into UNIT_DIR.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Where the systemd unit goes.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    env::set_current_dir(workspace_root()).context("entering the workspace root")?;
    match task {
        Task::Setup => setup::ensure_build_toolchain(),
        Task::Build => build(),
        Task::Run { args } => {
            build()?;
            let binary = Path::new("target/release/port-trace");
            if !setup::is_root() {
                bail!(
                    "port-trace needs root to load eBPF programs: sudo {} {}",
                    binary.display(),
                    args.join(" ")
                );
            }
            run(Command::new(binary).args(args))
        }
        Task::Test => test(),
        Task::Fuzz { seconds, target } => match target {
            Some(target) => fuzz::fuzz(&[target.as_str()], seconds),
            None => fuzz::fuzz(&fuzz::TARGETS, seconds),
        },
        Task::VmTest {
            backends,
            kernels,
            only,
        } => vm_matrix(&vm::Selection {
            runs: vm::select(&backends, &kernels)?,
            only: only.as_deref(),
        }),
        Task::Install { prefix, unit_dir } => install(&prefix, &unit_dir),
        Task::Image { tag } => image::image(&tag),
        Task::Bench {
            soak: Some(minutes),
            ..
        } => soak::soak(minutes),
        Task::Bench {
            rounds,
            millis,
            hold,
            smoke,
            baseline,
            soak: None,
        } => bench::bench(&if smoke {
            bench::Options::smoke()
        } else {
            bench::Options {
                rounds: rounds.max(1),
                millis,
                hold,
                smoke,
                baseline,
            }
        }),
    }
}

/// Where the unit in deploy/ expects the binary; install rewrites it for another prefix.
const UNIT_BINARY: &str = "/usr/local/bin/port-trace";

fn install(prefix: &Path, unit_dir: &Path) -> Result<()> {
    build()?;
    let dir = prefix.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("port-trace");
    std::fs::copy("target/release/port-trace", &binary)
        .with_context(|| format!("copying port-trace to {}", binary.display()))?;
    eprintln!("installed {}", binary.display());

    let unit = std::fs::read_to_string("deploy/port-trace.service")
        .context("reading deploy/port-trace.service")?;
    let unit = unit.replace(UNIT_BINARY, &binary.to_string_lossy());
    std::fs::create_dir_all(unit_dir)
        .with_context(|| format!("creating {}", unit_dir.display()))?;
    let unit_path = unit_dir.join("port-trace.service");
    std::fs::write(&unit_path, unit).with_context(|| format!("writing {}", unit_path.display()))?;
    eprintln!("installed {}", unit_path.display());
    // Only where systemd runs: in a container or a chroot there is nothing to reload.
    if Path::new("/run/systemd/system").is_dir() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("start it with: systemctl enable --now port-trace");
    }
    Ok(())
}

fn build() -> Result<()> {
    setup::ensure_build_toolchain()?;
    run(cmd("cargo").args(["build", "--release", "--package", "port-trace"]))
}

/// What the integration tests run besides port-trace: real peers (headless Chromium renders
/// the `--html` page, tidy checks it is valid HTML).
const TEST_PACKAGES: [&str; 5] = ["iproute2", "util-linux", "prometheus", "chromium", "tidy"];

fn test() -> Result<()> {
    setup::ensure_build_toolchain()?;
    run(cmd("cargo").args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz crate is a workspace of its own.
    run(cmd("cargo").args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    run(cmd("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the bpf target, so it gets its own lint run.
    run(cmd("cargo")
        .current_dir("port-trace-ebpf")
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"]))?;
    if !setup::is_root() {
        eprintln!(
            "xtask: not root: the kernel integration tests will skip (they load eBPF programs); \
             run `sudo cargo xtask test` for the whole suite"
        );
    }
    let mut tests = cmd("cargo");
    // Stopped (if we started it) when the tests are done, passed or not.
    let mut dockerd = None;
    if setup::is_root() {
        // The exporter's test scrapes with Debian's Prometheus, the page's test renders in
        // Debian's Chromium; with them installed, a missing one is a failure, not a skip. The
        // same for Docker (the container tests) and kubernetes-validate (the manifests' test).
        setup::ensure_apt_packages(&[&TEST_PACKAGES[..], &peers::DOCKER_PACKAGES[..]].concat())?;
        let validate = peers::ensure_kubernetes_validate()?;
        dockerd = peers::Dockerd::ensure()?;
        tests
            .env("PORT_TRACE_REQUIRE_PROMETHEUS", "1")
            .env("PORT_TRACE_REQUIRE_CHROMIUM", "1")
            .env("PORT_TRACE_REQUIRE_DOCKER", "1")
            .env("PORT_TRACE_REQUIRE_KUBE_VALIDATE", "1")
            .env(
                "PORT_TRACE_KUBERNETES_VALIDATE",
                env::current_dir()?.join(validate),
            );
    }
    // Integration tests each start a tracer; one at a time keeps their timings honest on
    // small machines.
    run(tests.args(["test", "--all-targets", "--", "--test-threads=1"]))?;
    drop(dockerd);
    // Every parser of outside bytes, briefly: a crash fails the suite.
    fuzz::fuzz(&fuzz::TARGETS, fuzz::CI_SECONDS)?;
    if !setup::is_root() {
        eprintln!("xtask: not root: skipping the VM kernel matrix (it installs qemu with apt)");
        return Ok(());
    }
    // So the benchmark cannot rot: every workload and configuration, briefly, no targets.
    bench::bench(&bench::Options::smoke())?;
    vm_matrix(&vm::Selection {
        runs: vm::ci_runs(),
        only: None,
    })
}

fn vm_matrix(selection: &vm::Selection) -> Result<()> {
    let outcomes = vm::vm_test(selection)?;
    vm::print_table(&outcomes);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if failed > 0 {
        bail!(
            "{failed} of {} kernel x backend runs failed",
            outcomes.len()
        );
    }
    Ok(())
}

/// A command with cargo's bin directory on PATH, where `cargo install` put bpf-linker.
pub fn cmd(program: &str) -> Command {
    let mut command = Command::new(program);
    if let Some(linker) = setup::which("bpf-linker")
        && let Some(dir) = linker.parent()
    {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
            if let Ok(joined) = env::join_paths(dirs) {
                command.env("PATH", joined);
            }
        }
    }
    command
}

pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("could not start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
