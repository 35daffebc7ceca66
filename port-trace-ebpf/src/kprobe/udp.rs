//! UDP: `inet_dgram_connect` (connect() autobinds inside, EAGAIN at return when no port is
//! left), `udp_lib_get_port` with port 0 outside bind()/connect() (a first sendmsg()'s
//! autobind), and `udp_lib_unhash` (the port is given up).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{
    AF_INET, EAGAIN, IPPROTO_UDP, KIND_CONNECT, KIND_SENDMSG, PROBE_KP_DGRAM_CONNECT,
    PROBE_KP_UDP_GET_PORT, PROBE_KP_UDP_UNHASH, PROBE_KR_DGRAM_CONNECT, PROBE_KR_UDP_GET_PORT,
};

use super::{SIN_ADDR, SIN_PORT, SIN6_ADDR, autobind, released, request, settle};
use crate::{
    errors::{self, NO_ARG, Outcome},
    kernel, track,
};

#[kprobe]
pub fn kp_dgram_connect(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_DGRAM_CONNECT, try_kp_dgram_connect(&ctx));
    0
}

fn try_kp_dgram_connect(ctx: &ProbeContext) -> Outcome {
    let sock: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    let uaddr: *const u8 = ctx.arg(1).ok_or(NO_ARG)?;
    let off = kernel::offsets();
    let sk: *const u8 = unsafe { kernel::read(sock, off.socket_sk) }?;
    let proto = unsafe { kernel::read::<u16>(sk, off.sk_protocol) }?;
    if proto != u16::from(IPPROTO_UDP) || kernel::sk_num(sk, &off) != 0 {
        return Ok(());
    }
    let id = request(sk, KIND_CONNECT);
    // The socket learns its destination only after the autobind: take it from the call.
    // No entry: the socket is not traced.
    if let Some(entry) = track::lookup(id) {
        let event = unsafe { &mut (*entry).event };
        event.rport = u16::from_be(unsafe { kernel::read::<u16>(uaddr, SIN_PORT as u32) }?);
        let family: u16 = unsafe { kernel::read(uaddr, 0) }?;
        let (at, len) = if family == u16::from(AF_INET) {
            (SIN_ADDR, 4)
        } else {
            (SIN6_ADDR, 16)
        };
        unsafe { bpf_probe_read_kernel_buf(uaddr.add(at), &mut event.raddr[..len]) }?;
    }
    Ok(())
}

#[kretprobe]
pub fn kr_dgram_connect(ctx: RetProbeContext) -> u32 {
    errors::count(PROBE_KR_DGRAM_CONNECT, try_kr_dgram_connect(&ctx));
    0
}

fn try_kr_dgram_connect(ctx: &RetProbeContext) -> Outcome {
    settle(KIND_CONNECT, i64::from(ctx.ret::<i32>()), EAGAIN);
    Ok(())
}

#[kprobe]
pub fn kp_udp_get_port(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_UDP_GET_PORT, try_kp_udp_get_port(&ctx));
    0
}

fn try_kp_udp_get_port(ctx: &ProbeContext) -> Outcome {
    // Port 0 with no bind()/connect() in flight: the autobind of a first send.
    autobind(ctx, KIND_SENDMSG)
}

#[kretprobe]
pub fn kr_udp_get_port(ctx: RetProbeContext) -> u32 {
    errors::count(PROBE_KR_UDP_GET_PORT, try_kr_udp_get_port(&ctx));
    0
}

fn try_kr_udp_get_port(ctx: &RetProbeContext) -> Outcome {
    // udp_lib_get_port returns 1 or -EADDRINUSE on failure; sendmsg() then fails EAGAIN.
    let ret = ctx.ret::<i32>();
    settle(KIND_SENDMSG, if ret != 0 { -1 } else { 0 }, EAGAIN);
    Ok(())
}

#[kprobe]
pub fn kp_udp_unhash(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_UDP_UNHASH, released(&ctx, 0));
    0
}
