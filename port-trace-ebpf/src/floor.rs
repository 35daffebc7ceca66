//! The floor: a program that does nothing at each of the tracepoint backend's hooks, each
//! the empty twin of the program there (`EMPTY_TWINS` in port-trace-common). The benchmark
//! attaches these instead of the real ones (the daemon's hidden `--empty-programs`) to
//! measure what the hooks cost by themselves: the kernel's dispatch of a program, and the
//! syscall tracepoints' slow path for every syscall. What port-trace costs above that is its
//! own work.

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, sock_ops, tracepoint},
    programs::{
        BtfTracePointContext, SockAddrContext, SockContext, SockOpsContext, TracePointContext,
    },
};

/// What a cgroup hook returns to let the call go ahead.
const ALLOW: i32 = 1;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn nop_set_state(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[sock_ops]
pub fn nop_sock_ops(_ctx: SockOpsContext) -> u32 {
    1
}

#[cgroup_sock_addr(bind4)]
pub fn nop_bind4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn nop_bind6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn nop_connect4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn nop_connect6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nop_sendmsg4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nop_sendmsg6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn nop_post_bind4(_ctx: SockContext) -> i32 {
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn nop_post_bind6(_ctx: SockContext) -> i32 {
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn nop_release(_ctx: SockContext) -> i32 {
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn nop_create(_ctx: SockContext) -> i32 {
    ALLOW
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn nop_exit_bind(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn nop_exit_connect(_ctx: TracePointContext) -> u32 {
    0
}
