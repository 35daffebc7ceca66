//! What must hold before loading anything: privileges and BTF for every backend, cgroup v2
//! for the tracepoint backend (its socket hooks attach at the cgroup v2 root; no kprobe
//! needs it). Each failure is one clear sentence and its own exit code. `Preflight::evaluate`
//! is the one place they are checked: `port-trace check` prints every check, `Probes::attach`
//! stops at the first failure that matters to its backend.

use std::path::{Path, PathBuf};

use crate::error::Fatal;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug)]
pub struct Machine {
    /// Where cgroup v2 is mounted, if it is; the tracepoint backend's cgroup hooks attach at
    /// its root to see every process.
    cgroup2: Option<PathBuf>,
}

impl Machine {
    /// The cgroup v2 root the tracepoint backend attaches at, or why it cannot start.
    pub fn cgroup2(&self) -> Result<&Path, Fatal> {
        self.cgroup2.as_deref().ok_or_else(no_cgroup2)
    }
}

/// The tracepoint backend's failure on a host without cgroup v2 (hosts whose init mounts only
/// cgroup v1).
fn no_cgroup2() -> Fatal {
    Fatal::Unsupported(
        "cgroup v2 is not mounted, and the tracepoint backend attaches its socket hooks at its \
         root; mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or use --backend kprobe"
            .to_string(),
    )
}

/// What one check found: a line of `port-trace check`, and the error tracing stops with.
#[derive(Debug)]
pub struct Check {
    /// What was checked, as `port-trace check` names it.
    pub name: &'static str,
    pub ok: bool,
    /// What was found, or what is missing (may be empty).
    pub detail: String,
    /// The error tracing fails with when the check fails; `None` when it passed.
    pub failure: Option<Fatal>,
}

/// Every check, evaluated: `port-trace check` prints them all, tracing stops at the first
/// that failed (`into_machine`).
#[derive(Debug)]
pub struct Preflight {
    pub privileges: Check,
    pub btf: Check,
    pub cgroup2: Check,
    cgroup2_mount: Option<PathBuf>,
}

impl Preflight {
    /// Checks this process and machine.
    pub fn evaluate() -> Result<Self, Fatal> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        Ok(Self::from_facts(
            &status,
            Path::new(VMLINUX_BTF).exists(),
            &mounts,
        ))
    }

    /// The checks, from a `/proc/self/status` text, whether vmlinux BTF exists, and a
    /// `/proc/self/mounts` text.
    pub fn from_facts(status: &str, btf_exists: bool, mounts: &str) -> Self {
        let missing = missing_capabilities(status);
        let privileges = Check {
            name: "privileges (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)",
            ok: missing.is_none(),
            detail: missing.clone().unwrap_or_default(),
            failure: missing.map(|missing| {
                Fatal::NotPermitted(format!(
                    "port-trace needs root to load eBPF programs (missing {missing}); run it \
                     with sudo"
                ))
            }),
        };
        let btf = Check {
            name: "BTF",
            ok: btf_exists,
            detail: VMLINUX_BTF.to_string(),
            failure: (!btf_exists).then(|| {
                Fatal::Unsupported(format!(
                    "this kernel has no BTF ({VMLINUX_BTF} is missing); port-trace needs a \
                     kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since \
                     2020)"
                ))
            }),
        };
        let cgroup2_mount = cgroup2_mount(mounts);
        let cgroup2 = Check {
            name: "cgroup v2 (tracepoint backend only)",
            ok: cgroup2_mount.is_some(),
            detail: cgroup2_mount
                .as_ref()
                .map_or("not mounted".into(), |p| p.display().to_string()),
            failure: cgroup2_mount.is_none().then(no_cgroup2),
        };
        Self {
            privileges,
            btf,
            cgroup2,
            cgroup2_mount,
        }
    }

    /// The checks in the order they are printed and enforced.
    pub fn checks(&self) -> [&Check; 3] {
        [&self.privileges, &self.btf, &self.cgroup2]
    }

    /// What attaching needs, or the first failure of a check every backend needs; cgroup v2
    /// is the tracepoint backend's to ask for (`Machine::cgroup2`).
    pub fn into_machine(self) -> Result<Machine, Fatal> {
        for check in [self.privileges, self.btf] {
            if let Some(failure) = check.failure {
                return Err(failure);
            }
        }
        Ok(Machine {
            cgroup2: self.cgroup2_mount,
        })
    }
}

/// Every check every backend needs, or the first failure.
pub fn check() -> Result<Machine, Fatal> {
    Preflight::evaluate()?.into_machine()
}

/// Names the capabilities missing from a `/proc/PID/status` text, or None if all are there.
fn missing_capabilities(status: &str) -> Option<String> {
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
fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\tx\nCapEff:\t000001ffffffffff\n";
    const USER: &str = "CapEff:\t0000000000000000\n";
    const CGROUP2: &str = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";

    #[test]
    fn every_check_passes_on_a_ready_machine() {
        let preflight = Preflight::from_facts(ROOT, true, CGROUP2);
        let lines: Vec<_> = preflight
            .checks()
            .iter()
            .map(|c| (c.name, c.ok, c.detail.clone(), c.failure.is_some()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "privileges (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)",
                    true,
                    String::new(),
                    false
                ),
                ("BTF", true, VMLINUX_BTF.to_string(), false),
                (
                    "cgroup v2 (tracepoint backend only)",
                    true,
                    "/sys/fs/cgroup".to_string(),
                    false
                ),
            ]
        );
        let machine = preflight.into_machine().expect("ready");
        assert_eq!(
            machine.cgroup2().expect("mounted"),
            Path::new("/sys/fs/cgroup")
        );
    }

    #[test]
    fn fails_with_the_first_failed_check() {
        let preflight = Preflight::from_facts(USER, false, "proc /proc proc rw 0 0\n");
        assert!(preflight.checks().iter().all(|c| !c.ok));
        assert_eq!(
            preflight.privileges.detail,
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"
        );
        assert_eq!(preflight.cgroup2.detail, "not mounted");
        match preflight.into_machine() {
            Err(Fatal::NotPermitted(text)) => assert_eq!(
                text,
                "port-trace needs root to load eBPF programs (missing CAP_BPF, CAP_PERFMON, \
                 CAP_NET_ADMIN); run it with sudo"
            ),
            other => panic!("{other:?}"),
        }
        match Preflight::from_facts(ROOT, false, "").into_machine() {
            Err(err @ Fatal::Unsupported(_)) => {
                assert!(err.to_string().starts_with("this kernel has no BTF"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// Hosts whose init mounts only cgroup v1: the kprobe backend needs no cgroup, so the
    /// machine is ready, and only the tracepoint backend's request for the root fails.
    #[test]
    fn without_cgroup_v2_only_the_tracepoint_backend_is_refused() {
        let v1_only = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        let preflight = Preflight::from_facts(ROOT, true, v1_only);
        assert!(!preflight.cgroup2.ok);
        let machine = preflight
            .into_machine()
            .expect("ready for the kprobe backend");
        match machine.cgroup2() {
            Err(err @ Fatal::Unsupported(_)) => assert!(
                err.to_string().starts_with(
                    "cgroup v2 is not mounted, and the tracepoint backend attaches its socket \
                     hooks at its root"
                ),
                "{err}"
            ),
            other => panic!("{other:?}"),
        }
    }

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
