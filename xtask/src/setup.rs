//! Installs what building the eBPF crate needs and a fresh Debian/Ubuntu machine lacks.
//!
//! Every step checks first and does nothing when its tool is already there, so `setup` costs
//! well under a second on a machine that has everything.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, run};

/// bpf-linker must link with the same LLVM major as nightly rustc (KERNEL-NOTES.md).
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

pub fn ensure_build_toolchain() -> Result<()> {
    ensure_nightly_components()?;
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_bpf_linker()?;
    Ok(())
}

/// Nightly builds the eBPF crate (`-Z build-std=core` needs rust-src) and lints it (clippy).
const NIGHTLY_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

pub fn ensure_nightly_components() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed to build the eBPF programs (https://rustup.rs)")?;
    if !installed.status.success() {
        eprintln!("setup: installing the nightly toolchain with rust-src and clippy");
        return run(cmd("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .args(NIGHTLY_COMPONENTS.iter().flat_map(|c| ["--component", c])));
    }
    let listed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .into_iter()
        .filter(|c| !listed.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: adding {} to nightly", missing.join(", "));
        run(cmd("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing))?;
    }
    Ok(())
}

fn apt_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Installs the missing Debian packages; installs nothing when all are present.
pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "these packages are needed and this machine has no apt-get: {}; install their \
             equivalents by hand",
            missing.join(" ")
        );
    }
    if !is_root() {
        bail!(
            "these packages are needed: {0}; run this command as root, or first: sudo apt-get \
             install -y {0}",
            missing.join(" ")
        );
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    run(cmd("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(cmd("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_bpf_linker() -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    if let Some(linker) = which("bpf-linker") {
        let out = Command::new(&linker).arg("--version").output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == wanted) {
            return Ok(());
        }
        eprintln!(
            "setup: {} is not {wanted} built for LLVM {LLVM_MAJOR}; reinstalling",
            linker.display()
        );
    }
    eprintln!("setup: cargo install bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR}, ~1 min)");
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    let path = env::var("PATH").unwrap_or_default();
    run(cmd("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .env("PATH", format!("{llvm_bin}:{path}")))
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The first executable called `name` on PATH, or in cargo's bin directory (which a fresh
/// shell may not have on PATH yet).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin"));
    env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
