//! `bind_exit` and `connect_exit` (tracepoints `syscalls:sys_exit_bind/connect`): settle a
//! bind(0) or UDP connect() noted in flight by this thread. Failure for want of a port:
//! bind(0) gets EADDRINUSE, UDP autobind EAGAIN. Otherwise the UDP connect's port is read from
//! the socket (a bind(0) that found a port was reported by post_bind already).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use port_trace_common::{
    EADDRINUSE, EAGAIN, FLAG_EXPLICIT, IPPROTO_UDP, KIND_BIND, KIND_CONNECT, PROBE_BIND_EXIT,
    PROBE_CONNECT_EXIT,
};

use crate::{
    errors::{self, Outcome},
    kernel, track,
};

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn bind_exit(ctx: TracePointContext) -> u32 {
    errors::count(PROBE_BIND_EXIT, try_settle(&ctx));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    errors::count(PROBE_CONNECT_EXIT, try_settle(&ctx));
    0
}

fn try_settle(ctx: &TracePointContext) -> Outcome {
    let Some(request) = track::take_in_flight() else {
        return Ok(());
    };
    let Some(entry) = track::lookup(request.cookie) else {
        return Ok(());
    };
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let (state, kind, proto, flags) = unsafe {
        let entry = &*entry;
        (
            entry.state,
            entry.event.kind,
            entry.event.proto,
            entry.event.flags,
        )
    };
    if state != track::PENDING {
        // post_bind already reported it.
        return Ok(());
    }
    let off = kernel::offsets();
    // A return value that cannot be read settles as a success (0), as it always has, and is
    // counted as a failure of this run.
    let read = unsafe { ctx.read_at::<i64>(off.syscall_exit_ret as usize) };
    let ret = read.unwrap_or(0);
    let errno = (-ret) as u32;
    // An explicit port that is taken is the application's conflict, not a shortage.
    let port_shortage = ret != 0
        && flags & FLAG_EXPLICIT == 0
        && match kind {
            KIND_BIND => errno == EADDRINUSE,
            KIND_CONNECT => proto == IPPROTO_UDP && errno == EAGAIN,
            _ => false,
        };
    if port_shortage {
        track::failed(request.cookie, entry, errno);
    } else {
        // A UDP connect() holds the port it autobound even when it then fails (no route).
        let port = kernel::sk_num(request.sk as *const u8, &off);
        if kind == KIND_CONNECT && proto == IPPROTO_UDP && port != 0 {
            track::allocated(entry, port);
        } else {
            track::forget(request.cookie);
        }
    }
    read.map(|_| ()).map_err(i64::from)
}
