//! bind(): `kp_bind`/`kr_bind` on `inet_bind` and `inet6_bind`. Port 0 asked at entry is a
//! request; the return settles it (the chosen port, or EADDRINUSE). An explicit port is
//! tracked flagged `FLAG_EXPLICIT`, for occupancy only.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{
    AF_INET, EADDRINUSE, FLAG_EXPLICIT, KIND_BIND, PROBE_KP_BIND, PROBE_KR_BIND,
};

use super::{SIN_ADDR, SIN_PORT, SIN6_ADDR, request, settle};
use crate::{
    errors::{self, NO_ARG, Outcome},
    kernel, track,
};

#[kprobe]
pub fn kp_bind(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_BIND, try_kp_bind(&ctx));
    0
}

fn try_kp_bind(ctx: &ProbeContext) -> Outcome {
    let sock: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    let uaddr: *const u8 = ctx.arg(1).ok_or(NO_ARG)?;
    let port: u16 = unsafe { kernel::read(uaddr, SIN_PORT as u32) }?;
    let off = kernel::offsets();
    let sk: *const u8 = unsafe { kernel::read(sock, off.socket_sk) }?;
    if kernel::sk_num(sk, &off) != 0 {
        // Bound already: this bind() fails (EINVAL) and the port stays as it is.
        return Ok(());
    }
    let id = request(sk, KIND_BIND);
    // The address asked for: a failure reports it. No entry: the socket is not traced.
    if let Some(entry) = track::lookup(id) {
        if port != 0 {
            // An explicit port: tracked for occupancy only.
            unsafe { (*entry).event.flags = FLAG_EXPLICIT };
        }
        let family: u16 = unsafe { kernel::read(uaddr, 0) }?;
        let laddr = unsafe { &mut (*entry).event.laddr };
        if family == u16::from(AF_INET) {
            unsafe { bpf_probe_read_kernel_buf(uaddr.add(SIN_ADDR), &mut laddr[..4]) }?;
        } else {
            unsafe { bpf_probe_read_kernel_buf(uaddr.add(SIN6_ADDR), laddr) }?;
        }
    }
    Ok(())
}

#[kretprobe]
pub fn kr_bind(ctx: RetProbeContext) -> u32 {
    errors::count(PROBE_KR_BIND, try_kr_bind(&ctx));
    0
}

fn try_kr_bind(ctx: &RetProbeContext) -> Outcome {
    settle(KIND_BIND, i64::from(ctx.ret::<i32>()), EADDRINUSE);
    Ok(())
}
