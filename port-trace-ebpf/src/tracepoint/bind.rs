//! bind() to port 0: `bind4_request`/`bind6_request` (cgroup sock_addr) see the requested port
//! before the kernel acts; `post_bind4`/`post_bind6` (cgroup sock) see the port it chose.
//! Explicit ports are not ephemeral allocations: they are tracked flagged `FLAG_EXPLICIT`, for
//! occupancy only. A bind(0) that finds no port never reaches post_bind;
//! `syscalls::bind_exit` reports it (EADDRINUSE).

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use port_trace_common::{
    AF_INET, AF_INET6, FLAG_EXPLICIT, KIND_BIND, PROBE_BIND4_REQUEST, PROBE_BIND6_REQUEST,
    PROBE_POST_BIND4, PROBE_POST_BIND6,
};

use crate::{
    errors::{self, Outcome},
    kernel, track,
};

/// Return value that lets the bind() go ahead.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(bind4)]
pub fn bind4_request(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_BIND4_REQUEST, try_bind_request::<false>(&ctx));
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6_request(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_BIND6_REQUEST, try_bind_request::<true>(&ctx));
    ALLOW
}

/// `V6` is fixed per program: the verifier refuses `user_ip6` in a bind4 program.
#[inline(always)]
fn try_bind_request<const V6: bool>(ctx: &SockAddrContext) -> Outcome {
    let addr = unsafe { &*ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let sk = unsafe { addr.__bindgen_anon_1.sk };
    if unsafe { (*sk).src_port } != 0 {
        // Bound already: this bind() fails (EINVAL) and the port stays as it is.
        return Ok(());
    }
    let mut event = kernel::current_event(KIND_BIND, addr.protocol as u8);
    if addr.user_port != 0 {
        // An explicit port: tracked for occupancy only (and a fresh UDP socket is no longer
        // one that sendmsg could autobind).
        event.flags = FLAG_EXPLICIT;
    }
    // The address asked for; post_bind confirms it, a failure reports it.
    if V6 {
        event.family = AF_INET6;
        for (i, word) in addr.user_ip6.iter().enumerate() {
            event.laddr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    } else {
        event.family = AF_INET;
        event.laddr[..4].copy_from_slice(&addr.user_ip4.to_ne_bytes());
    }
    event.netns = kernel::current_netns(&kernel::offsets());
    track::begin(cookie, &event, track::PENDING);
    // Settled in post_bind if a port is found, else at the syscall's exit (bind_exit).
    track::in_flight(cookie, 0, KIND_BIND);
    Ok(())
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    errors::count(PROBE_POST_BIND4, try_post_bind(&ctx, AF_INET));
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    errors::count(PROBE_POST_BIND6, try_post_bind(&ctx, AF_INET6));
    ALLOW
}

fn try_post_bind(ctx: &SockContext, family: u8) -> Outcome {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return Ok(());
    };
    if unsafe { (*entry).state } != track::PENDING {
        return Ok(());
    }
    let sock = unsafe { &*ctx.sock };
    if sock.src_port == 0 {
        // IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(), which tcp_state tracks.
        track::forget(cookie);
        return Ok(());
    }
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let laddr = unsafe { &mut (*entry).event.laddr };
    if family == AF_INET {
        laddr[..4].copy_from_slice(&sock.src_ip4.to_ne_bytes());
    } else {
        for (i, word) in sock.src_ip6.iter().enumerate() {
            laddr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    track::allocated(entry, sock.src_port as u16);
    Ok(())
}
