//! The kprobe backend: kprobes and kretprobes where Linux chooses and frees ports, for
//! distribution kernels. Sockets are named `kernel::socket_id(sk)`; a request is noted at
//! entry (the requested port is 0) and settled at return (the chosen port, or the errno).
//!
//! | function                        | what it means here                                  |
//! | ------------------------------- | --------------------------------------------------- |
//! | inet_bind, inet6_bind           | bind(): port 0 asked at entry; chosen port or errno |
//! | __inet_hash_connect             | TCP connect() picks its port (v4 and v6)            |
//! | inet_csk_get_port               | port 0 outside a bind(): listen() without bind      |
//! | inet_dgram_connect              | UDP connect(): autobind inside, EAGAIN at return    |
//! | udp_lib_get_port                | port 0 outside bind()/connect(): first sendmsg()    |
//! | inet_put_port                   | a TCP socket gives its port up                      |
//! | inet_twsk_hashdance[_schedule]  | ... to a TIME_WAIT socket, which keeps it           |
//! | inet_twsk_kill                  | the TIME_WAIT socket dies: the port is free         |
//! | udp_lib_unhash                  | a UDP socket gives its port up                      |

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{
    EADDRINUSE, EADDRNOTAVAIL, EAGAIN, FLAG_EXPLICIT, FLAG_TIME_WAIT, IPPROTO_UDP, KIND_BIND,
    KIND_CONNECT, KIND_LISTEN, KIND_SENDMSG,
};

use crate::{kernel, track};

/// `struct sockaddr_in`/`sockaddr_in6`: the port's and addresses' places are UAPI.
const SIN_PORT: usize = 2;
const SIN_ADDR: usize = 4;
const SIN6_ADDR: usize = 8;

/// Notes a port request for `sk` by the current thread.
#[inline(always)]
fn request(sk: *const u8, kind: u8) -> u64 {
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
fn settle(kind: u8, ret: i64, shortage: u32) {
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

#[kprobe]
pub fn kp_bind(ctx: ProbeContext) -> u32 {
    let _ = try_kp_bind(&ctx);
    0
}

fn try_kp_bind(ctx: &ProbeContext) -> Result<(), i64> {
    let sock: *const u8 = ctx.arg(0).ok_or(0)?;
    let uaddr: *const u8 = ctx.arg(1).ok_or(0)?;
    let port: u16 = unsafe { kernel::read(uaddr, SIN_PORT as u32) }?;
    let off = kernel::offsets();
    let sk: *const u8 = unsafe { kernel::read(sock, off.socket_sk) }?;
    if kernel::sk_num(sk, &off) != 0 {
        // Bound already: this bind() fails (EINVAL) and the port stays as it is.
        return Ok(());
    }
    let id = request(sk, KIND_BIND);
    // The address asked for: a failure reports it.
    if let Some(entry) = track::lookup(id) {
        if port != 0 {
            // An explicit port: tracked for occupancy only.
            unsafe { (*entry).event.flags = FLAG_EXPLICIT };
        }
        let family: u16 = unsafe { kernel::read(uaddr, 0) }?;
        let laddr = unsafe { &mut (*entry).event.laddr };
        if family == u16::from(port_trace_common::AF_INET) {
            let _ = unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel_buf(uaddr.add(SIN_ADDR), &mut laddr[..4])
            };
        } else {
            let _ = unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel_buf(uaddr.add(SIN6_ADDR), laddr)
            };
        }
    }
    Ok(())
}

#[kretprobe]
pub fn kr_bind(ctx: RetProbeContext) -> u32 {
    settle(KIND_BIND, i64::from(ctx.ret::<i32>()), EADDRINUSE);
    0
}

#[kprobe]
pub fn kp_hash_connect(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(1)
        && kernel::sk_num(sk, &kernel::offsets()) == 0
    {
        request(sk, KIND_CONNECT);
    }
    0
}

#[kretprobe]
pub fn kr_hash_connect(ctx: RetProbeContext) -> u32 {
    settle(KIND_CONNECT, i64::from(ctx.ret::<i32>()), EADDRNOTAVAIL);
    0
}

#[kprobe]
pub fn kp_csk_get_port(ctx: ProbeContext) -> u32 {
    // Port 0 outside a bind() (which has its own request in flight) is listen()'s autobind.
    if ctx.arg::<u64>(1).is_some_and(|snum| snum as u16 == 0)
        && track::peek_in_flight().is_none()
        && let Some(sk) = ctx.arg::<*const u8>(0)
    {
        request(sk, KIND_LISTEN);
    }
    0
}

#[kretprobe]
pub fn kr_csk_get_port(ctx: RetProbeContext) -> u32 {
    // Kernels before 6.3 return 1, not -EADDRINUSE, when no port is left.
    let ret = ctx.ret::<i32>();
    let ret = if ret > 0 {
        -(EADDRINUSE as i64)
    } else {
        i64::from(ret)
    };
    settle(KIND_LISTEN, ret, EADDRINUSE);
    0
}

#[kprobe]
pub fn kp_dgram_connect(ctx: ProbeContext) -> u32 {
    let _ = try_kp_dgram_connect(&ctx);
    0
}

fn try_kp_dgram_connect(ctx: &ProbeContext) -> Result<(), i64> {
    let sock: *const u8 = ctx.arg(0).ok_or(0)?;
    let uaddr: *const u8 = ctx.arg(1).ok_or(0)?;
    let off = kernel::offsets();
    let sk: *const u8 = unsafe { kernel::read(sock, off.socket_sk) }?;
    let proto = unsafe { kernel::read::<u16>(sk, off.sk_protocol) }?;
    if proto != u16::from(IPPROTO_UDP) || kernel::sk_num(sk, &off) != 0 {
        return Ok(());
    }
    let id = request(sk, KIND_CONNECT);
    // The socket learns its destination only after the autobind: take it from the call.
    if let Some(entry) = track::lookup(id) {
        let event = unsafe { &mut (*entry).event };
        event.rport = u16::from_be(unsafe { kernel::read::<u16>(uaddr, SIN_PORT as u32) }?);
        let family: u16 = unsafe { kernel::read(uaddr, 0) }?;
        let (at, len) = if family == u16::from(port_trace_common::AF_INET) {
            (SIN_ADDR, 4)
        } else {
            (SIN6_ADDR, 16)
        };
        let _ = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_buf(uaddr.add(at), &mut event.raddr[..len])
        };
    }
    Ok(())
}

#[kretprobe]
pub fn kr_dgram_connect(ctx: RetProbeContext) -> u32 {
    settle(KIND_CONNECT, i64::from(ctx.ret::<i32>()), EAGAIN);
    0
}

#[kprobe]
pub fn kp_udp_get_port(ctx: ProbeContext) -> u32 {
    // Port 0 with no bind()/connect() in flight: the autobind of a first send.
    if ctx.arg::<u64>(1).is_some_and(|snum| snum as u16 == 0)
        && track::peek_in_flight().is_none()
        && let Some(sk) = ctx.arg::<*const u8>(0)
    {
        request(sk, KIND_SENDMSG);
    }
    0
}

#[kretprobe]
pub fn kr_udp_get_port(ctx: RetProbeContext) -> u32 {
    // udp_lib_get_port returns 1 or -EADDRINUSE on failure; sendmsg() then fails EAGAIN.
    let ret = ctx.ret::<i32>();
    settle(KIND_SENDMSG, if ret != 0 { -1 } else { 0 }, EAGAIN);
    0
}

#[kprobe]
pub fn kp_put_port(ctx: ProbeContext) -> u32 {
    released(&ctx, 0);
    0
}

#[kprobe]
pub fn kp_udp_unhash(ctx: ProbeContext) -> u32 {
    released(&ctx, 0);
    0
}

#[inline(always)]
fn released(ctx: &ProbeContext, arg: usize) {
    if let Some(sk) = ctx.arg::<*const u8>(arg) {
        let id = kernel::socket_id(sk);
        if let Some(entry) = track::lookup(id) {
            track::end(id, entry, 0);
        }
    }
}

#[kprobe]
pub fn kp_tw_hashdance(ctx: ProbeContext) -> u32 {
    if let (Some(tw), Some(sk)) = (ctx.arg::<*const u8>(0), ctx.arg::<*const u8>(1)) {
        track::moved_to_time_wait(kernel::socket_id(sk), kernel::socket_id(tw), FLAG_TIME_WAIT);
    }
    0
}

#[kprobe]
pub fn kp_twsk_kill(ctx: ProbeContext) -> u32 {
    if let Some(tw) = ctx.arg::<*const u8>(0) {
        track::time_wait_end(kernel::socket_id(tw));
    }
    0
}
