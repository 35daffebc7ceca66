//! Real peers the integration tests run beside port-trace, installed and started by the
//! project itself: a Docker engine (Debian's docker.io, started for the tests when none is
//! running and stopped after) and kubernetes-validate (PyPI, in a venv under target/).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{run, setup};

/// The engine and the busybox the tests' containers run (its static binary is their image).
pub const DOCKER_PACKAGES: [&str; 2] = ["docker.io", "busybox-static"];
/// Where dockerd's log goes when we start it.
const DOCKERD_LOG: &str = "target/docker/dockerd.log";
/// Starting takes a second or two here; a deadline against hangs, not a timing.
const DOCKERD_START: Duration = Duration::from_secs(60);
const DOCKERD_STOP: Duration = Duration::from_secs(30);

/// kubernetes-validate checks manifests against Kubernetes' own JSON schemas (its 1.37.0
/// release knows 1.25 to 1.37). Pinned, so a new release cannot change what passes.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Its venv: under target/, so nothing outside the checkout changes.
pub const KUBERNETES_VALIDATE_VENV: &str = "target/kubernetes-validate";

/// Whether a Docker engine answers on the default socket.
pub fn docker_reachable() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A dockerd we started: stopped (SIGTERM, then waited for) when dropped, so the machine is
/// left as it was found.
pub struct Dockerd {
    child: Child,
}

impl Dockerd {
    /// Starts dockerd unless an engine is running already (then None: not ours to stop).
    /// No iptables rules and no bridge: the tests' containers use `--network none` or the
    /// host's network, and the host's firewall stays untouched.
    pub fn ensure() -> Result<Option<Dockerd>> {
        if docker_reachable() {
            return Ok(None);
        }
        if !setup::is_root() {
            bail!("no Docker engine is running, and starting one needs root");
        }
        let log_path = Path::new(DOCKERD_LOG);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = File::create(log_path).with_context(|| format!("creating {DOCKERD_LOG}"))?;
        eprintln!("xtask: starting dockerd (log: {DOCKERD_LOG})");
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd (Debian's docker.io)")?;
        let mut dockerd = Dockerd { child };
        let started = Instant::now();
        while !docker_reachable() {
            if let Some(status) = dockerd.child.try_wait()? {
                bail!("dockerd exited with {status} at start; see {DOCKERD_LOG}");
            }
            if started.elapsed() > DOCKERD_START {
                bail!("dockerd did not answer within {DOCKERD_START:?}; see {DOCKERD_LOG}");
            }
            sleep(Duration::from_millis(200));
        }
        eprintln!("xtask: dockerd is up ({:.1?})", started.elapsed());
        Ok(Some(dockerd))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling the child we started. dockerd stops its containerd with it.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + DOCKERD_STOP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                eprintln!("xtask: dockerd stopped");
                return;
            }
            sleep(Duration::from_millis(200));
        }
        eprintln!("xtask: dockerd did not stop within {DOCKERD_STOP:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kubernetes-validate in its venv (made once; the package installed once): the path of its
/// executable.
pub fn ensure_kubernetes_validate() -> Result<PathBuf> {
    let venv = Path::new(KUBERNETES_VALIDATE_VENV);
    let executable = venv.join("bin/kubernetes-validate");
    let pinned = KUBERNETES_VALIDATE.split("==").nth(1).unwrap_or_default();
    let installed = Command::new(&executable)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(pinned));
    if installed {
        return Ok(executable);
    }
    // Debian's python3 with its venv module: not whatever python3 comes first on PATH.
    setup::ensure_apt_packages(&["python3-venv"])?;
    eprintln!("xtask: pip install {KUBERNETES_VALIDATE} into {KUBERNETES_VALIDATE_VENV}");
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))?;
    Ok(executable)
}
