//! `cargo xtask image`: port-trace's container image, built offline. The release binary
//! (`build`), a root of the binary, its shared libraries and the loader
//! (`rootfs::assemble`, under target/image/), and `docker build` with deploy/Containerfile,
//! which starts FROM scratch: no registry is reached.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{build, peers, rootfs};

/// The tag deploy/kubernetes/daemonset.yaml runs.
pub const DEFAULT_TAG: &str = "port-trace:latest";
const CONTEXT: &str = "target/image";

pub fn image(tag: &str) -> Result<()> {
    build()?;
    // An engine to build with: the running one, or one started for this build and stopped
    // after (the image stays in its store).
    let _dockerd = peers::Dockerd::ensure()?;
    rootfs::build_image(
        Path::new("."),
        Path::new("target/release/port-trace"),
        Path::new(CONTEXT),
        tag,
    )
    .context("building the image")?;
    let size = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Size}}", tag])
        .output()
        .context("docker image inspect")?;
    let bytes: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    eprintln!(
        "xtask: built image {tag} ({:.1} MiB); on a node: docker save {tag} | ctr -n k8s.io \
         images import -   (or push it to your registry and name it in \
         deploy/kubernetes/daemonset.yaml)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
