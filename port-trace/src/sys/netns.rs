//! Network namespaces by inode number, as the eBPF programs report them, and doing things
//! inside one: setns() changes only the calling thread, so a short-lived thread enters it.

use std::{
    collections::HashSet,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// The inode number of the namespace a `/proc/.../ns/net` path names.
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The host's network namespace: init's (with the host's /proc, as in the DaemonSet).
pub fn host() -> Option<u32> {
    inode_of(Path::new("/proc/1/ns/net"))
}

/// Our own network namespace's inode.
pub fn own() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// A path that opens namespace `inode`: some process's `/proc/PID/ns/net` that lives in it,
/// a named one in /run/netns, or failing that some thread's (a thread can setns() into a namespace its process is not
/// in, and /proc/PID/ns shows only the main thread's).
pub fn find(inode: u32) -> Option<PathBuf> {
    locate(inode).ok().flatten()
}

/// `find`, telling "no such namespace" (`Ok(None)`: /proc was searched and nothing opens
/// it) from "could not look" (out of file descriptors, say). Only the first lets a caller
/// conclude the namespace is gone and release what it held.
pub fn locate(inode: u32) -> io::Result<Option<PathBuf>> {
    let pids: Vec<PathBuf> = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path())
        .collect();
    let matches = |path: &PathBuf| inode_of(path) == Some(inode);
    // Named namespaces (`ip netns add`) may have no process in them at all.
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    Ok(pids
        .iter()
        .map(|pid| pid.join("ns/net"))
        .chain(named)
        .find(matches)
        .or_else(|| {
            pids.iter()
                .filter_map(|pid| std::fs::read_dir(pid.join("task")).ok())
                .flat_map(|tasks| tasks.filter_map(Result::ok))
                .map(|task| task.path().join("ns/net"))
                .find(matches)
        }))
}

/// Whether namespace `inode` is known to be gone: not ours, and a clean search found
/// nothing that opens it. A failed search says nothing.
pub fn is_gone(inode: u32) -> bool {
    own() != Some(inode) && matches!(locate(inode), Ok(None))
}

/// Every network namespace in use: those of all threads of all processes, and the named
/// ones in /run/netns.
pub fn all() -> HashSet<u32> {
    let tasks = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|pid| std::fs::read_dir(pid.path().join("task")).ok())
        .flat_map(|tasks| tasks.filter_map(Result::ok))
        .map(|task| task.path().join("ns/net"));
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    tasks.chain(named).filter_map(|p| inode_of(&p)).collect()
}

/// Runs `work` in a thread that has entered the namespace `netns_file` names.
pub fn run_in<T: Send>(netns_file: &Path, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = std::fs::File::open(netns_file)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a namespace fd we hold, for this thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// Runs `work` in namespace `inode`: right here if it is ours, else in a thread that enters
/// it. None when no process is left in that namespace.
pub fn run_in_inode<T: Send>(inode: u32, work: impl FnOnce() -> T + Send) -> Option<T> {
    if own() == Some(inode) {
        return Some(work());
    }
    run_in(&find(inode)?, work).ok()
}

/// The texts of `ip_local_port_range`, `ip_local_reserved_ports` and
/// `ip_unprivileged_port_start` in namespace `inode`: `/proc/sys/net` shows the reading
/// thread's own.
pub fn port_range_sysctls(inode: u32) -> Option<PortSysctls> {
    run_in_inode(inode, || {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .unwrap_or_default();
        // Since Linux 4.11; per namespace.
        let unprivileged_start =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok();
        Some(PortSysctls {
            range,
            reserved,
            unprivileged_start,
        })
    })
    .flatten()
}

/// A namespace's port sysctls, as read.
#[derive(Debug, Clone, Default)]
pub struct PortSysctls {
    /// `ip_local_port_range`.
    pub range: String,
    /// `ip_local_reserved_ports` (empty if unreadable).
    pub reserved: String,
    /// `ip_unprivileged_port_start`, where the kernel has it.
    pub unprivileged_start: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_includes_our_own() {
        assert!(all().contains(&own().expect("own netns")));
    }

    #[test]
    fn finds_our_own_namespace_and_its_range() {
        let own = own().expect("own netns");
        let path = find(own).expect("some process is in our namespace");
        assert_eq!(inode_of(&path), Some(own));
        let read = port_range_sysctls(own).expect("readable range");
        assert_eq!(read.range.split_whitespace().count(), 2, "{}", read.range);
        assert!(read.unprivileged_start.is_some(), "Linux >= 4.11");
    }
}
