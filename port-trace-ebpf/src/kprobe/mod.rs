//! The kprobe backend: kprobes and kretprobes where Linux chooses and frees ports, for
//! distribution kernels. Sockets are named `kernel::socket_id(sk)`; a request is noted at
//! entry (the requested port is 0) and settled at return (the chosen port, or the errno).
//!
//! | function                        | what it means here                                  |
//! | ------------------------------- | --------------------------------------------------- |
//! | inet_bind, inet6_bind           | bind(): port 0 asked at entry; chosen port or errno |
//! | __inet_hash_connect             | TCP connect() picks its port (v4 and v6), or keeps  |
//! |                                 | the one bind(0) chose (`EVENT_BOUND_CONNECT`)       |
//! | inet_csk_get_port               | port 0 outside a bind(): listen() without bind      |
//! | inet_dgram_connect              | UDP connect(): autobind inside, EAGAIN at return    |
//! | udp_lib_get_port                | port 0 outside bind()/connect(): first sendmsg()    |
//! | inet_put_port                   | a TCP socket gives its port up (to TIME_WAIT, if    |
//! |                                 | the hashdance's kprobe was skipped)                 |
//! | inet_twsk_hashdance[_schedule]  | ... to a TIME_WAIT socket, which keeps it           |
//! | inet_twsk_kill                  | the TIME_WAIT socket dies: the port is free         |
//! | udp_lib_unhash                  | a UDP socket gives its port up                      |
//!
//! Files: `bind.rs` (inet_bind, inet6_bind), `tcp.rs` (__inet_hash_connect,
//! inet_csk_get_port, inet_put_port, the TIME_WAIT pair), `udp.rs` (inet_dgram_connect,
//! udp_lib_get_port, udp_lib_unhash). This file has what they share.

mod bind;
mod tcp;
mod udp;

use aya_ebpf::programs::ProbeContext;
use port_trace_common::{EAGAIN, FLAG_EXPLICIT, IPPROTO_TCP, KIND_CONNECT, KIND_SENDMSG};

use crate::{
    errors::{NO_ARG, Outcome},
    kernel, track,
};

/// `struct sockaddr_in`/`sockaddr_in6`: the port's and addresses' places are UAPI.
pub(super) const SIN_PORT: usize = 2;
pub(super) const SIN_ADDR: usize = 4;
pub(super) const SIN6_ADDR: usize = 8;

/// Notes a port request for `sk` by the current thread.
#[inline(always)]
pub(super) fn request(sk: *const u8, kind: u8) -> u64 {
    let off = kernel::offsets();
    let proto = unsafe { kernel::read::<u16>(sk, off.sk_protocol) }.unwrap_or(0) as u8;
    let mut event = kernel::sock_event(sk, &off, proto, kind);
    let id = kernel::socket_id(sk);
    // The table is keyed by `id`, but the next socket often gets the same memory, and so the
    // same id, while this one's TIME_WAIT is still parked in the daemon: the name in events
    // must differ per socket.
    event.cookie = id ^ unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    track::begin(id, &event, track::PENDING);
    track::in_flight(id, sk as u64, kind);
    id
}

/// Settles a request at return: the port the socket has now, or a failure if `ret` is the
/// errno this kind of request fails with for want of a port.
#[inline(always)]
pub(super) fn settle(kind: u8, ret: i64, shortage: u32) {
    let Some(request) = track::take_in_flight_of(kind) else {
        return;
    };
    let Some(entry) = track::lookup(request.cookie) else {
        return;
    };
    if unsafe { (*entry).state } != track::PENDING {
        return;
    }
    // An explicit port that is taken is the application's conflict, not a shortage.
    let explicit = unsafe { (*entry).event.flags } & FLAG_EXPLICIT != 0;
    let port = kernel::sk_num(request.sk as *const u8, &kernel::offsets());
    let is_shortage = ret != 0
        && !explicit
        && ((-ret) as u32 == shortage || (shortage == EAGAIN && kind == KIND_SENDMSG));
    if is_shortage {
        track::failed(request.cookie, entry, shortage);
    } else if port != 0 {
        // Success, or a failure after the port was chosen (a UDP connect() that autobound
        // and then found no route): either way the socket holds the port now.
        track::allocated(entry, port);
    } else {
        track::forget(request.cookie);
    }
}

/// A `*_get_port(sk, snum)` call asking for port 0 with no bind()/connect() in flight: an
/// autobind (listen() without bind for TCP, a first send for UDP) of `kind`. The `try_*` of
/// `kp_csk_get_port` and `kp_udp_get_port`.
#[inline(always)]
pub(super) fn autobind(ctx: &ProbeContext, kind: u8) -> Outcome {
    let snum: u64 = ctx.arg(1).ok_or(NO_ARG)?;
    if snum as u16 != 0 || track::peek_in_flight().is_some() {
        return Ok(());
    }
    request(ctx.arg(0).ok_or(NO_ARG)?, kind);
    Ok(())
}

/// The table's entry for `sk` (named `id`), if it is that socket's. Ids are addresses, and
/// an entry can outlive its socket: the kernel skips every kprobe that fires while one of
/// our handlers runs on the same CPU (a softirq that interrupts it, under loopback churn),
/// so a socket's hashdance and put_port can both go unseen. The next socket at that address
/// is then a stranger with our entry (an accepted socket, which we never track, closing);
/// ending the entry for it released a port a TIME_WAIT socket still held. So the entry must
/// name the socket's own port (and, for a TCP connect, its peer's: a bound socket may
/// connect after its entry was made); a stale one is dropped unreported, and reconciliation
/// settles the port it names.
#[inline(always)]
pub(super) fn entry_of(sk: *const u8, id: u64) -> Option<*mut track::SockEntry> {
    let entry = track::lookup(id)?;
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let (state, event) = unsafe { ((*entry).state, &(*entry).event) };
    // A pending entry has no port yet: only a held one can be told from a stranger.
    if state != track::HELD {
        return Some(entry);
    }
    let off = kernel::offsets();
    let lport = kernel::sk_num(sk, &off);
    let rport = u16::from_be(unsafe { kernel::read::<u16>(sk, off.sk_dport) }.unwrap_or(0));
    let peer_known = event.proto == IPPROTO_TCP && event.kind == KIND_CONNECT;
    if lport == event.lport && (!peer_known || rport == event.rport) {
        return Some(entry);
    }
    track::forget(id);
    None
}

/// The socket in argument `arg` gives its port up: the `try_*` of `kp_udp_unhash`.
#[inline(always)]
pub(super) fn released(ctx: &ProbeContext, arg: usize) -> Outcome {
    let sk: *const u8 = ctx.arg(arg).ok_or(NO_ARG)?;
    let id = kernel::socket_id(sk);
    // No entry: a socket not traced, or one whose port was never ours to report.
    if let Some(entry) = entry_of(sk, id) {
        track::end(id, entry, 0);
    }
    Ok(())
}
