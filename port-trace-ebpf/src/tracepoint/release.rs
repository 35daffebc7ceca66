//! `sock_release` (cgroup sock): close() of a UDP socket, or of a TCP socket whose port is held
//! but that never left CLOSE (bound, never connected or listening): no state change marks
//! that release.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};
use port_trace_common::{IPPROTO_TCP, PROBE_SOCK_RELEASE, TCP_CLOSE};

use crate::{
    errors::{self, Outcome},
    track,
};

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    errors::count(PROBE_SOCK_RELEASE, try_sock_release(&ctx));
    1
}

fn try_sock_release(ctx: &SockContext) -> Outcome {
    let sock = unsafe { &*ctx.sock };
    // Decided from the socket before any lookup: every TCP socket on the host passes here.
    // One that is not in CLOSE keeps its port until the state machine takes it there (FIN
    // handshake, TIME_WAIT), and that release is reported when it does (tcp_port_chosen
    // for a connected socket, tcp_state for a listener); one in CLOSE with a peer was
    // connected, and its port was reported free when it reached CLOSE. That leaves TCP
    // sockets that were bound and never connected or listening.
    if sock.protocol == u32::from(IPPROTO_TCP)
        && (sock.state != u32::from(TCP_CLOSE) || sock.dst_port != 0)
    {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return Ok(());
    };
    if unsafe { (*entry).state } != track::HELD {
        track::forget(cookie);
        return Ok(());
    }
    track::end(cookie, entry, 0);
    Ok(())
}
