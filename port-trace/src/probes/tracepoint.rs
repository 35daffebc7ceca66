//! The tracepoint backend, for kernels without kprobes: tp_btf `inet_sock_set_state`, cgroup
//! socket hooks at the cgroup v2 root (which see every process), and the syscall exit
//! tracepoints for bind()/connect() errors.

use std::{fs::File, path::Path};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SockOps,
        TracePoint,
    },
};

use port_trace_common::EMPTY_TWINS;

use tracing::{debug, info};

use super::{Hooks, load_error, program};
use crate::error::Fatal;

/// On kernels >= 5.7 aya attaches cgroup programs as BPF links, which always coexist with
/// other programs on the cgroup and take no flags: any flag is EINVAL.
const CGROUP_LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Where a program of this backend attaches.
#[derive(Debug, Clone, Copy)]
pub(super) enum AttachPoint {
    /// tp_btf on this kernel tracepoint (it gets typed arguments).
    BtfTracePoint(&'static str),
    /// cgroup sock_ops, at the cgroup v2 root.
    SockOps,
    /// cgroup sock_addr (the hook is in the program's section: bind4, connect6, ...).
    CgroupSockAddr,
    /// cgroup sock (post_bind4, sock_release, sock_create, ...).
    CgroupSock,
    /// A tracepoint in the `syscalls` category.
    Syscall(&'static str),
}

/// Every program of this backend, in the order `attach` loads and attaches them.
pub(super) const PROGRAMS: [(&str, AttachPoint); 14] = [
    (
        "tcp_state",
        AttachPoint::BtfTracePoint("inet_sock_set_state"),
    ),
    ("tcp_port_chosen", AttachPoint::SockOps),
    ("bind4_request", AttachPoint::CgroupSockAddr),
    ("bind6_request", AttachPoint::CgroupSockAddr),
    ("udp_connect4", AttachPoint::CgroupSockAddr),
    ("udp_connect6", AttachPoint::CgroupSockAddr),
    ("udp_sendmsg4", AttachPoint::CgroupSockAddr),
    ("udp_sendmsg6", AttachPoint::CgroupSockAddr),
    ("post_bind4", AttachPoint::CgroupSock),
    ("post_bind6", AttachPoint::CgroupSock),
    ("sock_release", AttachPoint::CgroupSock),
    ("udp_create", AttachPoint::CgroupSock),
    ("bind_exit", AttachPoint::Syscall("sys_exit_bind")),
    ("connect_exit", AttachPoint::Syscall("sys_exit_connect")),
];

/// A program some kernels refuse, and the programs that take its place there. Which one a
/// kernel gets is found by trying the load, not from its version: distributions backport.
pub(super) struct Fallback {
    pub program: &'static str,
    /// Attached in this order when `program` fails to load.
    pub instead: [(&'static str, AttachPoint); 2],
}

/// tp_btf programs can call `bpf_get_socket_cookie` from Linux 5.12; on 5.10 the verifier
/// refuses `tcp_state` ("unknown func bpf_get_socket_cookie#46"). Its stand-in reads the
/// cookie the socket holds, which `tcp_cookie` makes when a TCP socket is created (attached
/// first, so no socket created after the stand-in starts lacks one).
pub(super) const FALLBACKS: [Fallback; 1] = [Fallback {
    program: "tcp_state",
    instead: [
        ("tcp_cookie", AttachPoint::CgroupSock),
        (
            "tcp_state_stored_cookie",
            AttachPoint::BtfTracePoint("inet_sock_set_state"),
        ),
    ],
}];

impl AttachPoint {
    /// As in the hook's label: `tcp_state (tp_btf/inet_sock_set_state)`.
    fn describe(self) -> String {
        match self {
            AttachPoint::BtfTracePoint(tracepoint) => format!("tp_btf/{tracepoint}"),
            AttachPoint::SockOps => "cgroup sock_ops".into(),
            AttachPoint::CgroupSockAddr => "cgroup sock_addr".into(),
            AttachPoint::CgroupSock => "cgroup sock".into(),
            AttachPoint::Syscall(tracepoint) => format!("tracepoint syscalls:{tracepoint}"),
        }
    }
}

/// The empty program at `name`'s hook (`EMPTY_TWINS`).
pub(super) fn empty_twin(name: &str) -> Option<&'static str> {
    EMPTY_TWINS
        .iter()
        .find(|(program, _)| *program == name)
        .map(|(_, twin)| *twin)
}

/// Which programs `attach` loads.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Each program's empty twin (the benchmark's floor).
    pub empty: bool,
    /// The fallbacks, as if the kernel refused every program that has one (the tests').
    pub fallbacks: bool,
}

/// Loads and attaches the backend's programs, one hook at a time, into `hooks`; a program
/// this kernel refuses is replaced by its `FALLBACKS` if they load.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cgroup2: &Path,
    variant: Variant,
    hooks: &mut Hooks,
) -> Result<(), Fatal> {
    let cgroup = File::open(cgroup2)
        .with_context(|| format!("opening cgroup v2 at {}", cgroup2.display()))?;

    for (name, point) in PROGRAMS {
        let name = match empty_twin(name) {
            Some(twin) if variant.empty => twin,
            _ => name,
        };
        let fallback = FALLBACKS.iter().find(|f| f.program == name);
        let result = if variant.fallbacks && fallback.is_some() {
            Err(Fatal::Other(anyhow::anyhow!("--fallback-programs")))
        } else {
            attach_one(ebpf, btf, &cgroup, name, point)
        };
        if let Err(refused) = &result
            && let Some(fallback) = fallback
        {
            let instead = fallback
                .instead
                .iter()
                .try_for_each(|&(other, point)| attach_one(ebpf, btf, &cgroup, other, point));
            match instead {
                Ok(()) => {
                    info!(
                        "{name} does not load here ({}); attached {} instead",
                        refused.root_cause(),
                        fallback.instead.map(|(other, _)| other).join(" and ")
                    );
                    for (other, point) in fallback.instead {
                        hooks.record(&format!("{other} ({})", point.describe()), || Ok(()))?;
                    }
                    continue;
                }
                Err(also) => debug!("{name}'s fallback does not load either: {also}"),
            }
        }
        hooks.record(&format!("{name} ({})", point.describe()), || result)?;
    }
    Ok(())
}

/// Loads the program `name` and attaches it at `point`.
fn attach_one(
    ebpf: &mut Ebpf,
    btf: &Btf,
    cgroup: &File,
    name: &str,
    point: AttachPoint,
) -> Result<(), Fatal> {
    let failed = |e: ProgramError| load_error(name, e);
    match point {
        AttachPoint::BtfTracePoint(tracepoint) => {
            let prog: &mut BtfTracePoint = program(ebpf, name)?;
            prog.load(tracepoint, btf).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        AttachPoint::SockOps => {
            let prog: &mut SockOps = program(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach(cgroup, CGROUP_LINK_MODE).map_err(failed)?;
        }
        AttachPoint::CgroupSockAddr => {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach(cgroup, CGROUP_LINK_MODE).map_err(failed)?;
        }
        AttachPoint::CgroupSock => {
            let prog: &mut CgroupSock = program(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach(cgroup, CGROUP_LINK_MODE).map_err(failed)?;
        }
        AttachPoint::Syscall(tracepoint) => {
            let prog: &mut TracePoint = program(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach("syscalls", tracepoint).map_err(failed)?;
        }
    }
    Ok(())
}
