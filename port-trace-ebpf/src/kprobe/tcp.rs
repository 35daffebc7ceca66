//! TCP: `__inet_hash_connect` (connect() picks its port), `inet_csk_get_port` (listen()
//! without bind), `inet_put_port` (the port is given up), and TIME_WAIT: the port moves to a
//! TIME_WAIT socket in `inet_twsk_hashdance[_schedule]` and is free at `inet_twsk_kill`.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{EADDRINUSE, EADDRNOTAVAIL, FLAG_TIME_WAIT, KIND_CONNECT, KIND_LISTEN};

use super::{released, request, settle};
use crate::{kernel, track};

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
pub fn kp_put_port(ctx: ProbeContext) -> u32 {
    released(&ctx, 0);
    0
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
