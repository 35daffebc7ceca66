//! The root file system of port-trace's container image, and the `docker build` that makes
//! the image from it and deploy/Containerfile: the binary, the shared libraries `ldd` names
//! and the dynamic loader, nothing else. Nothing else is read at run time from the image: the
//! IANA registry is compiled in (/etc/services only supplements `explain`, and the image has
//! none), and /proc, /sys and the host directories are mounted by the runtime.
//!
//! `cargo xtask image` uses it for the release binary, and port-trace/tests/daemonset_docker.rs
//! (through `#[path]`) for the binary under test, so the image is assembled one way only.
//! Hence std only.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the binary goes in the image, as deploy/Containerfile's ENTRYPOINT names it.
pub const BINARY_IN_IMAGE: &str = "usr/bin/port-trace";
/// The Containerfile, from the repository's root.
pub const CONTAINERFILE: &str = "deploy/Containerfile";

/// The files the dynamic loader maps for `binary` (libraries and the loader itself), from
/// `ldd`; none for a static binary.
pub fn shared_objects(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(io::Error::other(format!(
            "ldd {}: {}{err}",
            binary.display(),
            text
        )));
    }
    parse_ldd(&text)
}

/// The paths in `ldd`'s output: `name => /path (0x...)` and the loader's `/path (0x...)`;
/// the vDSO (no file) is skipped, and a library `not found` is an error.
pub fn parse_ldd(text: &str) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(io::Error::other(format!("ldd: {} not found", name.trim())));
                }
                target
            }
            None => line,
        };
        // The path, without the load address.
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Makes `root` (emptied first) the image's root: the binary at BINARY_IN_IMAGE and each
/// shared object at its own path (the file itself, not a symlink to it).
pub fn assemble(binary: &Path, root: &Path) -> io::Result<()> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    let place = |from: &Path, to: &Path| -> io::Result<()> {
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(from, to)
            .map(drop)
            .map_err(|e| io::Error::new(e.kind(), format!("copying {}: {e}", from.display())))
    };
    place(binary, &root.join(BINARY_IN_IMAGE))?;
    for object in shared_objects(binary)? {
        let inside = object.strip_prefix("/").unwrap_or(&object);
        place(&object, &root.join(inside))?;
    }
    Ok(())
}

/// Builds image `tag` from `binary`: assembles `context`/rootfs and runs `docker build` with
/// the repository's Containerfile (at `repo`). Offline: the Containerfile starts FROM scratch.
pub fn build_image(repo: &Path, binary: &Path, context: &Path, tag: &str) -> io::Result<()> {
    fs::create_dir_all(context)?;
    assemble(binary, &context.join("rootfs"))?;
    let out = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag, "--file"])
        .arg(repo.join(CONTAINERFILE))
        .arg(context)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "docker build of {tag}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd2a1f5000)\n\
             \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f92d4d03000)\n\
             \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f92d453e000)\n\
             \t/lib64/ld-linux-x86-64.so.2 (0x00007f92d4d37000)\n";
        let paths = parse_ldd(text).expect("parses");
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
