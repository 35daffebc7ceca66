//! What must hold before loading anything: privileges, BTF, cgroup v2. Each failure is one
//! clear sentence and its own exit code.

use std::path::{Path, PathBuf};

use crate::error::Fatal;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub struct Machine {
    /// Where cgroup v2 is mounted; the cgroup hooks attach at its root to see every process.
    pub cgroup2: PathBuf,
}

pub fn check() -> Result<Machine, Fatal> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    if let Some(missing) = missing_capabilities(&status) {
        return Err(Fatal::NotPermitted(format!(
            "port-trace needs root to load eBPF programs (missing {missing}); run it with sudo"
        )));
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Fatal::Unsupported(format!(
            "this kernel has no BTF ({VMLINUX_BTF} is missing); port-trace needs a kernel built \
             with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2020)"
        )));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let cgroup2 = cgroup2_mount(&mounts).ok_or_else(|| {
        Fatal::Unsupported(
            "cgroup v2 is not mounted; mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) \
             so port-trace can attach its socket hooks"
                .to_string(),
        )
    })?;
    Ok(Machine { cgroup2 })
}

/// Names the capabilities missing from a `/proc/PID/status` text, or None if all are there.
pub fn missing_capabilities(status: &str) -> Option<String> {
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let missing: Vec<&str> = [
        (has(CAP_BPF) || admin, "CAP_BPF"),
        (has(CAP_PERFMON) || admin, "CAP_PERFMON"),
        (has(CAP_NET_ADMIN), "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter_map(|(ok, name)| (!ok).then_some(name))
    .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The first cgroup2 mount point in a `/proc/mounts` text.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert_eq!(
            missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            None
        );
    }

    #[test]
    fn names_what_a_user_lacks() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n").as_deref(),
            Some("CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN")
        );
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(
            missing_capabilities(&format!("CapEff:\t{:016x}\n", 1u64 << 21)).as_deref(),
            Some("CAP_NET_ADMIN")
        );
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"),
            Some("/sys/fs/cgroup".into())
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
