//! UDP ports the kernel picks without a bind(): on connect() (`inet_autobind` before the
//! protocol connect) and on the first sendto()/sendmsg() of an unbound socket.
//!
//! No hook sees either choice directly here, so: `udp_create` marks every new UDP socket
//! FRESH; `udp_connect4/6` runs before connect() autobinds and notes the request, which
//! `syscalls::connect_exit` settles; `udp_sendmsg4/6` runs after a send autobound the socket,
//! and a FRESH socket that now has a port got it from this send. Sockets that existed before
//! port-trace started were never marked FRESH, so they are never misreported.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use port_trace_common::{
    AF_INET, AF_INET6, IPPROTO_UDP, KIND_CONNECT, KIND_SENDMSG, PROBE_UDP_CONNECT4,
    PROBE_UDP_CONNECT6, PROBE_UDP_CREATE, PROBE_UDP_SENDMSG4, PROBE_UDP_SENDMSG6, PortEvent,
};

use crate::{
    errors::{self, Outcome},
    kernel, track,
};

const ALLOW: i32 = 1;

#[cgroup_sock(sock_create)]
pub fn udp_create(ctx: SockContext) -> i32 {
    errors::count(PROBE_UDP_CREATE, try_udp_create(&ctx));
    ALLOW
}

fn try_udp_create(ctx: &SockContext) -> Outcome {
    let sock = unsafe { &*ctx.sock };
    if sock.protocol != u32::from(IPPROTO_UDP) {
        return Ok(());
    }
    // Only the namespace is kept: whoever connects or sends first is the one reported, and
    // fills in the rest then.
    let netns = kernel::current_netns(&kernel::offsets());
    let mut event = MaybeUninit::<PortEvent>::uninit();
    // SAFETY: write_socket_only initializes all of `event`.
    let event = unsafe {
        let family = sock.family as u8;
        kernel::write_socket_only(event.as_mut_ptr(), KIND_SENDMSG, IPPROTO_UDP, family, netns);
        event.assume_init_ref()
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    track::begin(cookie, event, track::FRESH);
    Ok(())
}

#[cgroup_sock_addr(connect4)]
pub fn udp_connect4(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_UDP_CONNECT4, try_udp_connect::<false>(&ctx));
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn udp_connect6(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_UDP_CONNECT6, try_udp_connect::<true>(&ctx));
    ALLOW
}

/// The destination of a connect()/sendmsg() as the program sees it. `V6` is fixed per
/// program: the verifier refuses `user_ip6` in a v4 program (and `user_ip4` in a v6 one)
/// even on a path never taken.
#[inline(always)]
fn set_destination<const V6: bool>(event: &mut PortEvent, ctx: &SockAddrContext) {
    let addr = unsafe { &*ctx.sock_addr };
    event.family = if V6 { AF_INET6 } else { AF_INET };
    event.rport = u16::from_be(addr.user_port as u16);
    if !V6 {
        event.raddr[..4].copy_from_slice(&addr.user_ip4.to_ne_bytes());
    } else {
        for (i, word) in addr.user_ip6.iter().enumerate() {
            event.raddr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
}

#[inline(always)]
fn try_udp_connect<const V6: bool>(ctx: &SockAddrContext) -> Outcome {
    let addr = unsafe { &*ctx.sock_addr };
    if addr.protocol != u32::from(IPPROTO_UDP) {
        // TCP connect() is tcp_state's and tcp_port_chosen's.
        return Ok(());
    }
    let sk = unsafe { addr.__bindgen_anon_1.sk };
    if unsafe { (*sk).src_port } != 0 {
        return Ok(());
    }
    let mut event = kernel::current_event(KIND_CONNECT, IPPROTO_UDP);
    set_destination::<V6>(&mut event, ctx);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    match track::lookup(cookie) {
        // The usual case: udp_create saw the socket. Rewriting its entry in place costs the
        // table nothing; a new insert would allocate an entry and free the old one.
        Some(entry) => {
            event.netns = unsafe { (*entry).event.netns };
            track::restart(entry, cookie, &event, track::PENDING);
        }
        None => {
            event.netns = kernel::current_netns(&kernel::offsets());
            track::begin(cookie, &event, track::PENDING);
        }
    }
    track::in_flight(cookie, sk as u64, KIND_CONNECT);
    Ok(())
}

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_UDP_SENDMSG4, try_udp_sendmsg::<false>(&ctx));
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    errors::count(PROBE_UDP_SENDMSG6, try_udp_sendmsg::<true>(&ctx));
    ALLOW
}

#[inline(always)]
fn try_udp_sendmsg<const V6: bool>(ctx: &SockAddrContext) -> Outcome {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return Ok(());
    };
    if unsafe { (*entry).state } != track::FRESH {
        return Ok(());
    }
    let addr = unsafe { &*ctx.sock_addr };
    let sk = unsafe { addr.__bindgen_anon_1.sk };
    let port = unsafe { (*sk).src_port } as u16;
    if port == 0 {
        return Ok(());
    }
    // The sender now, not the creator: a socket may have been passed to another process.
    let mut event = kernel::current_event(KIND_SENDMSG, IPPROTO_UDP);
    event.netns = unsafe { (*entry).event.netns };
    event.cookie = cookie;
    set_destination::<V6>(&mut event, ctx);
    unsafe { (*entry).event = event };
    track::allocated(entry, port);
    Ok(())
}
