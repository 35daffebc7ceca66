//! /proc: which process holds which socket, which cgroup a process is in; the kernel's release.

use std::{collections::HashMap, path::Path};

/// Socket inode -> (pid, comm) for every process, from /proc/PID/fd links `socket:[N]`.
pub fn socket_owners() -> HashMap<u32, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_string_lossy()
                    .strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .and_then(|n| n.parse().ok())
            {
                owners.entry(inode).or_insert_with(|| (pid, comm.clone()));
            }
        }
    }
    owners
}

/// The cgroup v2 path of process `pid` (`/docker/<id>`), from /proc/PID/cgroup.
pub fn cgroup_of(pid: u32) -> Option<String> {
    cgroup_in(Path::new(&format!("/proc/{pid}")))
}

/// The cgroup v2 path of the process or thread whose /proc directory is `dir`
/// (`/proc/PID` or `/proc/PID/task/TID`).
pub fn cgroup_in(dir: &Path) -> Option<String> {
    v2_cgroup(&std::fs::read_to_string(dir.join("cgroup")).ok()?)
}

/// The `0::PATH` line of a /proc/PID/cgroup text (the v2 hierarchy's; v1 controllers have
/// their own lines in a hybrid layout).
fn v2_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end().to_string())
        .filter(|path| path.starts_with('/'))
}

/// Runs of BPF program `fd` the kernel skipped because a program was already running on that
/// CPU (`recursion_misses` in its fdinfo, Linux 5.12+; 0 where it is not shown).
pub fn bpf_recursion_misses(fd: std::os::fd::RawFd) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map(|text| recursion_misses(&text))
        .unwrap_or(0)
}

fn recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether process `pid` (as this process's pid namespace numbers it) is alive.
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// The running kernel's release (`uname -r`), or empty if unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// This host's name (`uname -n`, of port-trace's UTS namespace), or empty if unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_recursion_misses_from_fdinfo() {
        let fdinfo =
            "pos:\t0\nprog_type:\t26\nrun_cnt:\t0\nrecursion_misses:\t108\nverified_insns:\t90\n";
        assert_eq!(recursion_misses(fdinfo), 108);
        assert_eq!(recursion_misses("prog_type:\t26\n"), 0, "older kernels");
    }

    #[test]
    fn reads_the_v2_line_of_a_cgroup_file() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/2b4d\n0::/docker/3f2a\n";
        assert_eq!(v2_cgroup(hybrid).as_deref(), Some("/docker/3f2a"));
        assert_eq!(v2_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(v2_cgroup("4:memory:/x\n"), None, "v1 only");
        assert!(cgroup_of(std::process::id()).is_some_and(|p| p.starts_with('/')));
    }

    #[test]
    fn finds_the_owner_of_a_socket_of_ours() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("listen");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .expect("our fd")
            .ino() as u32;
        let owners = socket_owners();
        assert_eq!(owners.get(&inode).map(|o| o.0), Some(std::process::id()));
    }
}
