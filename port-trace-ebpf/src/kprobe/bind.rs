//! bind(): `kp_bind`/`kr_bind` on `inet_bind` and `inet6_bind`. Port 0 asked at entry is a
//! request; the return settles it (the chosen port, or EADDRINUSE). An explicit port is
//! tracked flagged `FLAG_EXPLICIT`, for occupancy only.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{EADDRINUSE, FLAG_EXPLICIT, KIND_BIND};

use super::{SIN_ADDR, SIN_PORT, SIN6_ADDR, request, settle};
use crate::{kernel, track};

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
