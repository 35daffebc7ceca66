//! UDP: `inet_dgram_connect` (connect() autobinds inside, EAGAIN at return when no port is
//! left), `udp_lib_get_port` with port 0 outside bind()/connect() (a first sendmsg()'s
//! autobind), and `udp_lib_unhash` (the port is given up).

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{EAGAIN, IPPROTO_UDP, KIND_CONNECT, KIND_SENDMSG};

use super::{SIN_ADDR, SIN_PORT, SIN6_ADDR, released, request, settle};
use crate::{kernel, track};

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
pub fn kp_udp_unhash(ctx: ProbeContext) -> u32 {
    released(&ctx, 0);
    0
}
