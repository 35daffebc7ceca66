//! bind() to port 0: `bind4_request`/`bind6_request` (cgroup sock_addr) see the requested port
//! before the kernel acts; `post_bind4`/`post_bind6` (cgroup sock) see the port it chose.
//! Explicit ports are not ephemeral allocations and are left alone.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use port_trace_common::{AF_INET, AF_INET6, KIND_BIND};

use crate::{kernel, track};

/// Return value that lets the bind() go ahead.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(bind4)]
pub fn bind4_request(ctx: SockAddrContext) -> i32 {
    try_bind_request(&ctx);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn bind6_request(ctx: SockAddrContext) -> i32 {
    try_bind_request(&ctx);
    ALLOW
}

fn try_bind_request(ctx: &SockAddrContext) {
    let addr = unsafe { &*ctx.sock_addr };
    if addr.user_port != 0 {
        return;
    }
    let mut event = kernel::current_event(KIND_BIND, addr.protocol as u8);
    event.family = addr.user_family as u8;
    event.netns = kernel::current_netns(&kernel::offsets());
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    track::begin(cookie, &event);
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    try_post_bind(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    try_post_bind(&ctx, AF_INET6);
    ALLOW
}

fn try_post_bind(ctx: &SockContext, family: u8) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return;
    };
    let sock = unsafe { &*ctx.sock };
    if sock.src_port == 0 {
        // IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(), which tcp_state tracks.
        track::forget(cookie);
        return;
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
}
