//! `tcp_port_chosen`: cgroup sock_ops callbacks that run right after the kernel chose the port
//! for connect() (`TCP_CONNECT_CB`, after `inet_hash_connect`) and for listen() without bind
//! (`TCP_LISTEN_CB`, after `inet_csk_get_port`). The tracepoint cannot see either port: it
//! fires before the choice.

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB},
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};

use port_trace_common::PROBE_TCP_PORT_CHOSEN;

use crate::{
    errors::{self, Outcome},
    track,
};

#[sock_ops]
pub fn tcp_port_chosen(ctx: SockOpsContext) -> u32 {
    errors::count(PROBE_TCP_PORT_CHOSEN, try_tcp_port_chosen(&ctx));
    1
}

fn try_tcp_port_chosen(ctx: &SockOpsContext) -> Outcome {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    if let Some(entry) = track::lookup(cookie)
        && unsafe { (*entry).state } == track::PENDING
    {
        track::allocated(entry, ctx.local_port() as u16);
    }
    Ok(())
}
