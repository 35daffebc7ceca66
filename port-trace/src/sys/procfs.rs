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
