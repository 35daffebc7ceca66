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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return Ok(());
    };
    let sock = unsafe { &*ctx.sock };
    if unsafe { (*entry).state } != track::HELD {
        track::forget(cookie);
        return Ok(());
    }
    // A TCP socket past CLOSE keeps its port until the state machine takes it to CLOSE
    // (FIN handshake, TIME_WAIT); tcp_state reports that release.
    if sock.protocol == u32::from(IPPROTO_TCP) && sock.state != u32::from(TCP_CLOSE) {
        return Ok(());
    }
    track::end(cookie, entry, 0);
    Ok(())
}
