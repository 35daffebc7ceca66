//! `tcp_state`: the TCP state machine, from the `sock:inet_sock_set_state` tracepoint (as
//! tp_btf, so it gets a typed `struct sock *` and can take the socket's cookie).
//!
//! It runs for every state change of every TCP socket on the host, six per loopback
//! connection (both ends), and most are not port-trace's: the server end of every connection
//! is never tracked. So only what can start or end a tracked port here touches the socket
//! table: a connect() or listen() starting (CLOSE to SYN_SENT or LISTEN), and a connect() or
//! listen() that ended without a port, or a listener's end (SYN_SENT or LISTEN to CLOSE).
//! Connecting sockets port-trace tracks report their own close (`tcp_port_chosen`).
//!
//! tp_btf programs can call `bpf_get_socket_cookie` from Linux 5.12. Before that (5.10 LTS)
//! the daemon loads `tcp_state_stored_cookie` instead, the same program reading the cookie
//! the socket holds, and `tcp_cookie`, which makes that cookie when a TCP socket is created.
//! A socket created before port-trace started has no cookie unless something asked for it
//! (a bind() does, through the bind hooks), so a connect() or listen() without bind() on such
//! a socket is not seen there.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{btf_tracepoint, cgroup_sock},
    programs::{BtfTracePointContext, SockContext},
};
use port_trace_common::{
    self as common, EADDRINUSE, EADDRNOTAVAIL, IPPROTO_TCP, KIND_CONNECT, KIND_LISTEN,
    PROBE_TCP_COOKIE, PROBE_TCP_STATE, PROBE_TCP_STATE_STORED_COOKIE,
};

use super::sock_ops;
use crate::{
    errors::{self, Outcome},
    kernel, track,
};

// The tracepoint gives states as int; the numbers are port-trace-common's.
const TCP_SYN_SENT: i32 = common::TCP_SYN_SENT as i32;
const TCP_CLOSE: i32 = common::TCP_CLOSE as i32;
const TCP_LISTEN: i32 = common::TCP_LISTEN as i32;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state(ctx: BtfTracePointContext) -> i32 {
    errors::count(PROBE_TCP_STATE, try_tcp_state(&ctx, cookie_by_helper));
    0
}

/// `tcp_state` for kernels whose tp_btf programs lack `bpf_get_socket_cookie` (before 5.12).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state_stored_cookie(ctx: BtfTracePointContext) -> i32 {
    errors::count(
        PROBE_TCP_STATE_STORED_COOKIE,
        try_tcp_state(&ctx, stored_cookie),
    );
    0
}

/// Gives every new TCP socket its cookie, for `tcp_state_stored_cookie` to read; loaded only
/// with it.
#[cgroup_sock(sock_create)]
pub fn tcp_cookie(ctx: SockContext) -> i32 {
    errors::count(PROBE_TCP_COOKIE, try_tcp_cookie(&ctx));
    ALLOW
}

/// What a cgroup hook returns to let the call go ahead.
const ALLOW: i32 = 1;

fn try_tcp_cookie(ctx: &SockContext) -> Outcome {
    // SAFETY: the kernel passes a valid socket for the program's run.
    if unsafe { (*ctx.sock).protocol } == u32::from(IPPROTO_TCP) {
        // The helper makes the cookie if the socket has none yet: that is all this is for.
        unsafe { bpf_get_socket_cookie(ctx.sock as *mut _) };
    }
    Ok(())
}

/// The socket's cookie from the helper (which makes one if the socket has none).
#[inline(always)]
fn cookie_by_helper(sk: *const u8) -> u64 {
    unsafe { bpf_get_socket_cookie(sk as *mut _) }
}

/// The cookie the socket holds (`skc_cookie`): 0 if it has none, which no tracked socket
/// has (every socket made while port-trace runs gets one from `tcp_cookie`).
#[inline(always)]
fn stored_cookie(sk: *const u8) -> u64 {
    unsafe { kernel::read::<u64>(sk, kernel::offsets().sk_cookie) }.unwrap_or(0)
}

#[inline(always)]
fn try_tcp_state(ctx: &BtfTracePointContext, cookie_of: impl Fn(*const u8) -> u64) -> Outcome {
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let kind = match (oldstate, newstate) {
        (TCP_CLOSE, TCP_SYN_SENT) => KIND_CONNECT,
        (TCP_CLOSE, TCP_LISTEN) => KIND_LISTEN,
        // A connect() or listen() that never got a port ends from SYN_SENT or LISTEN, and so
        // does a listener's port (listeners carry no mark). A socket with the mark reports
        // its own close (`tcp_port_chosen`); any other is not port-trace's.
        (TCP_SYN_SENT, TCP_CLOSE) | (TCP_LISTEN, TCP_CLOSE) => {
            if !sock_ops::tracked(sk) {
                closed(sk, oldstate, cookie_of(sk));
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let off = kernel::offsets();
    // MPTCP's meta socket passes here too; its subflows are plain TCP and are traced as such.
    if unsafe { kernel::read::<u16>(sk, off.sk_protocol) }? != u16::from(IPPROTO_TCP) {
        return Ok(());
    }
    // A port already chosen came from an explicit bind (not ephemeral) or from bind(0),
    // which the bind hooks track; a connect() from bind(0)'s port is reported as such.
    if kernel::sk_num(sk, &off) != 0 {
        if kind == KIND_CONNECT
            && let Some(entry) = track::lookup(cookie_of(sk))
        {
            track::bound_connect(entry, sk);
        }
        return Ok(());
    }
    // The port is chosen next, in this same syscall; sock_ops reports it (tcp_port_chosen)
    // with the endpoints, which its context gives without a kernel read. What only this
    // syscall can say is taken now: who, and the namespace (for the filter).
    let mut event = kernel::current_event(kind, IPPROTO_TCP);
    event.netns = kernel::sk_netns(sk, &off);
    let cookie = cookie_of(sk);
    if cookie == 0 {
        // A socket older than port-trace, without a cookie (stored_cookie): not seen.
        return Ok(());
    }
    track::begin(cookie, &event, track::PENDING);
    Ok(())
}

/// A connect() or listen() ended, or a listener closed: its port is free, or none was found.
///
/// Inlined into its one caller: as a function of its own, its frame on top of the program's
/// and `track`'s passes the verifier's 512-byte limit for all frames together on kernels
/// before 6.14 (which have no private stack for tracing programs).
#[inline(always)]
fn closed(sk: *const u8, oldstate: i32, cookie: u64) {
    let Some(entry) = track::lookup(cookie) else {
        return;
    };
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let (state, kind) = unsafe { ((*entry).state, (*entry).event.kind) };
    if state == track::PENDING {
        // A connect()/listen() whose port sock_ops never reported: none was found.
        // (inet_hash_connect failing is EADDRNOTAVAIL; listen's get_port, EADDRINUSE.)
        let off = kernel::offsets();
        let no_port = kernel::sk_num(sk, &off) == 0;
        let errno = match (kind, oldstate) {
            (KIND_CONNECT, TCP_SYN_SENT) if no_port => EADDRNOTAVAIL,
            (KIND_LISTEN, TCP_LISTEN) if no_port => EADDRINUSE,
            _ => {
                track::forget(cookie);
                return;
            }
        };
        // Where it failed: the endpoints are still the socket's here (the connect()'s error
        // path clears them after this transition).
        // SAFETY: `entry` points into SOCKETS, valid for this program run.
        kernel::read_endpoints(sk, &off, unsafe { &mut (*entry).event });
        track::failed(cookie, entry, errno);
        return;
    }
    track::tcp_closed(cookie, entry, oldstate as u32, None);
}
