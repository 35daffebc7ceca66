//! The tracepoint backend, for kernels without kprobes: tp_btf `inet_sock_set_state`, cgroup
//! socket hooks at the cgroup v2 root (which see every process), and the syscall exit
//! tracepoints for bind()/connect() errors.

use std::{fs::File, path::Path};

use anyhow::Context as _;
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, TracePoint},
};

use super::{Hooks, load_error, program};
use crate::error::Fatal;

/// On kernels >= 5.7 aya attaches cgroup programs as BPF links, which always coexist with
/// other programs on the cgroup and take no flags: any flag is EINVAL.
const CGROUP_LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The tracepoint backend's cgroup programs: (program, what it hooks).
const CGROUP_SOCK_ADDR: [&str; 6] = [
    "bind4_request",
    "bind6_request",
    "udp_connect4",
    "udp_connect6",
    "udp_sendmsg4",
    "udp_sendmsg6",
];
const CGROUP_SOCK: [&str; 4] = ["post_bind4", "post_bind6", "sock_release", "udp_create"];
/// (program, tracepoint in the `syscalls` category).
const SYSCALL_EXITS: [(&str, &str); 2] = [
    ("bind_exit", "sys_exit_bind"),
    ("connect_exit", "sys_exit_connect"),
];

/// Loads and attaches the backend's programs, one hook at a time, into `hooks`.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf, cgroup2: &Path, hooks: &mut Hooks) -> Result<(), Fatal> {
    let cgroup = File::open(cgroup2)
        .with_context(|| format!("opening cgroup v2 at {}", cgroup2.display()))?;

    hooks.record("tcp_state (tp_btf/inet_sock_set_state)", || {
        let prog: &mut BtfTracePoint = program(ebpf, "tcp_state")?;
        prog.load("inet_sock_set_state", btf)
            .map_err(|e| load_error("tcp_state", e))?;
        prog.attach().map_err(|e| load_error("tcp_state", e))?;
        Ok(())
    })?;
    hooks.record("tcp_port_chosen (cgroup sock_ops)", || {
        let prog: &mut SockOps = program(ebpf, "tcp_port_chosen")?;
        prog.load().map_err(|e| load_error("tcp_port_chosen", e))?;
        prog.attach(&cgroup, CGROUP_LINK_MODE)
            .map_err(|e| load_error("tcp_port_chosen", e))?;
        Ok(())
    })?;
    for name in CGROUP_SOCK_ADDR {
        hooks.record(&format!("{name} (cgroup sock_addr)"), || {
            let prog: &mut CgroupSockAddr = program(ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            prog.attach(&cgroup, CGROUP_LINK_MODE)
                .map_err(|e| load_error(name, e))?;
            Ok(())
        })?;
    }
    for name in CGROUP_SOCK {
        hooks.record(&format!("{name} (cgroup sock)"), || {
            let prog: &mut CgroupSock = program(ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            prog.attach(&cgroup, CGROUP_LINK_MODE)
                .map_err(|e| load_error(name, e))?;
            Ok(())
        })?;
    }
    for (name, tracepoint) in SYSCALL_EXITS {
        hooks.record(
            &format!("{name} (tracepoint syscalls:{tracepoint})"),
            || {
                let prog: &mut TracePoint = program(ebpf, name)?;
                prog.load().map_err(|e| load_error(name, e))?;
                prog.attach("syscalls", tracepoint)
                    .map_err(|e| load_error(name, e))?;
                Ok(())
            },
        )?;
    }
    Ok(())
}
