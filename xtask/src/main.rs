//! Project tasks: `cargo xtask <setup|build|run|test|install>`.
//!
//! Every task that builds first runs `setup`, which installs what the eBPF build needs, so the
//! README's two commands work on a fresh Debian/Ubuntu machine.

mod setup;
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
    /// tests here, then the kernel matrix in VMs (vm-test).
    Test,
    /// Run the test suite in VMs on Debian's 6.1 and 6.12 kernels, once per backend, and
    /// print a kernel x backend table.
    VmTest {
        /// Backends to run the suite with.
        #[arg(long, value_delimiter = ',', default_value = "tracepoint,kprobe")]
        backends: Vec<String>,
        /// Only these kernels (6.1, 6.12); default all.
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Only the test binaries whose name starts with this (e.g. `tcp_lifetimes`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Set up, build, and copy port-trace into PREFIX/bin (default /usr/local).
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
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
        Task::VmTest {
            backends,
            kernels,
            only,
        } => vm_matrix(&vm::Selection {
            backends: &backends,
            kernels: &kernels,
            only: only.as_deref(),
        }),
        Task::Install { prefix } => {
            build()?;
            let dir = prefix.join("bin");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dest = dir.join("port-trace");
            std::fs::copy("target/release/port-trace", &dest)
                .with_context(|| format!("copying port-trace to {}", dest.display()))?;
            eprintln!("installed {}", dest.display());
            Ok(())
        }
    }
}

fn build() -> Result<()> {
    setup::ensure_build_toolchain()?;
    run(cmd("cargo").args(["build", "--release", "--package", "port-trace"]))
}

fn test() -> Result<()> {
    setup::ensure_build_toolchain()?;
    run(cmd("cargo").args(["fmt", "--all", "--", "--check"]))?;
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
    // Integration tests each start a tracer; one at a time keeps their timings honest on
    // small machines.
    run(cmd("cargo").args(["test", "--all-targets", "--", "--test-threads=1"]))?;
    if !setup::is_root() {
        eprintln!("xtask: not root: skipping the VM kernel matrix (it installs qemu with apt)");
        return Ok(());
    }
    vm_matrix(&vm::Selection {
        backends: &["tracepoint".to_string(), "kprobe".to_string()],
        kernels: &[],
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
