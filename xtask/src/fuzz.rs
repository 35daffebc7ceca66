//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/, one for each parser that reads bytes
//! from outside the daemon (README, "Fuzzing"). `cargo xtask test` runs each briefly.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, run, setup};

/// The targets, as fuzz/Cargo.toml names them.
pub const TARGETS: [&str; 6] = [
    "ring_record",
    "sock_diag",
    "btf",
    "tracefs_format",
    "metrics_request",
    "capture_line",
];

/// How long `cargo xtask test` runs each target.
pub const CI_SECONDS: u64 = 20;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_DIR: &str = "fuzz";

/// Builds the targets, then runs each of `targets` for `seconds`; a crash fails with the path
/// of the input that caused it.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    setup::ensure_nightly_components()?;
    ensure_cargo_fuzz()?;
    let started = Instant::now();
    // The parsers are safe Rust: overflow checks and debug assertions (on in these builds)
    // catch what AddressSanitizer would, and without it the build is minutes shorter.
    run(cargo_fuzz("build").args(["--sanitizer", "none"]))?;
    eprintln!(
        "fuzz: built the targets in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for target in targets {
        run_one(target, seconds)?;
    }
    eprintln!(
        "fuzz: {} target(s), {seconds} s each, no crash ({:.0} s in all)",
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND` for fuzz/. The library is built without its eBPF object
/// (AYA_BUILD_SKIP): the targets load no programs, and building them for bpf costs minutes.
fn cargo_fuzz(subcommand: &str) -> std::process::Command {
    let mut command = cmd("cargo");
    command
        .args(["+nightly", "fuzz", subcommand, "--fuzz-dir", FUZZ_DIR])
        .env("AYA_BUILD_SKIP", "1");
    command
}

fn run_one(target: &str, seconds: u64) -> Result<()> {
    // New inputs go to a scratch corpus (kept between runs, not committed); the committed
    // seeds in fuzz/corpus/TARGET are read only.
    let scratch = Path::new(FUZZ_DIR).join("target/corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let seeds = Path::new(FUZZ_DIR).join("corpus").join(target);
    let artifacts = Path::new(FUZZ_DIR).join("artifacts").join(target);
    let since = SystemTime::now();
    eprintln!("fuzz: {target} for {seconds} s");
    let outcome = run(cargo_fuzz("run")
        .args(["--sanitizer", "none", target])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A parser that takes a second on one input is a hang waiting to happen.
        .arg("-timeout=10"));
    if let Err(err) = outcome {
        match newest_artifact(&artifacts, since) {
            Some(input) => bail!(
                "fuzz target {target} crashed on {}; reproduce with `cargo +nightly fuzz run \
                 --sanitizer none {target} {}` (with AYA_BUILD_SKIP=1, in the workspace root)",
                input.display(),
                input.display()
            ),
            // A stack overflow kills the target before libFuzzer can save the input;
            // AddressSanitizer (cargo-fuzz's default) catches it and saves it.
            None => {
                return Err(err.context(format!(
                    "fuzz target {target} failed and saved no input (a stack overflow?); \
                     `cargo +nightly fuzz run {target} fuzz/target/corpus/{target}` (with \
                     AYA_BUILD_SKIP=1) runs it with AddressSanitizer, which saves one"
                )));
            }
        }
    }
    Ok(())
}

/// The input libFuzzer saved for a crash, leak, timeout or out-of-memory since `since`.
fn newest_artifact(dir: &Path, since: SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let modified = entry.metadata().ok()?.modified().ok()?;
            (modified >= since).then(|| (modified, entry.path()))
        })
        .max()
        .map(|(_, path)| path)
}

/// cargo-fuzz, installed with cargo when it is missing (any installed version will do).
fn ensure_cargo_fuzz() -> Result<()> {
    if setup::which("cargo-fuzz").is_some() {
        return Ok(());
    }
    eprintln!("setup: cargo install cargo-fuzz {CARGO_FUZZ_VERSION} (~1 min)");
    run(cmd("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}
