//! /proc: which process holds which socket; the kernel's release.

use std::collections::HashMap;

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

/// The running kernel's release (`uname -r`), or empty if unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
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
