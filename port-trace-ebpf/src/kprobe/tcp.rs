//! TCP: `__inet_hash_connect` (connect() picks its port), `inet_csk_get_port` (listen()
//! without bind), `inet_put_port` (the port is given up), and TIME_WAIT: the port moves to a
//! TIME_WAIT socket in `inet_twsk_hashdance[_schedule]` and is free at `inet_twsk_kill`.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use port_trace_common::{
    EADDRINUSE, EADDRNOTAVAIL, FLAG_TIME_WAIT, KIND_CONNECT, KIND_LISTEN, PROBE_KP_CSK_GET_PORT,
    PROBE_KP_HASH_CONNECT, PROBE_KP_PUT_PORT, PROBE_KP_TW_HASHDANCE, PROBE_KP_TWSK_KILL,
    PROBE_KR_CSK_GET_PORT, PROBE_KR_HASH_CONNECT,
};

use super::{autobind, released, request, settle};
use crate::{
    errors::{self, NO_ARG, Outcome},
    kernel, track,
};

#[kprobe]
pub fn kp_hash_connect(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_HASH_CONNECT, try_kp_hash_connect(&ctx));
    0
}

fn try_kp_hash_connect(ctx: &ProbeContext) -> Outcome {
    let sk: *const u8 = ctx.arg(1).ok_or(NO_ARG)?;
    if kernel::sk_num(sk, &kernel::offsets()) == 0 {
        request(sk, KIND_CONNECT);
    }
    Ok(())
}

#[kretprobe]
pub fn kr_hash_connect(ctx: RetProbeContext) -> u32 {
    errors::count(PROBE_KR_HASH_CONNECT, try_kr_hash_connect(&ctx));
    0
}

fn try_kr_hash_connect(ctx: &RetProbeContext) -> Outcome {
    settle(KIND_CONNECT, i64::from(ctx.ret::<i32>()), EADDRNOTAVAIL);
    Ok(())
}

#[kprobe]
pub fn kp_csk_get_port(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_CSK_GET_PORT, try_kp_csk_get_port(&ctx));
    0
}

fn try_kp_csk_get_port(ctx: &ProbeContext) -> Outcome {
    // Port 0 outside a bind() (which has its own request in flight) is listen()'s autobind.
    autobind(ctx, KIND_LISTEN)
}

#[kretprobe]
pub fn kr_csk_get_port(ctx: RetProbeContext) -> u32 {
    errors::count(PROBE_KR_CSK_GET_PORT, try_kr_csk_get_port(&ctx));
    0
}

fn try_kr_csk_get_port(ctx: &RetProbeContext) -> Outcome {
    // Kernels before 6.3 return 1, not -EADDRINUSE, when no port is left.
    let ret = ctx.ret::<i32>();
    let ret = if ret > 0 {
        -(EADDRINUSE as i64)
    } else {
        i64::from(ret)
    };
    settle(KIND_LISTEN, ret, EADDRINUSE);
    Ok(())
}

#[kprobe]
pub fn kp_put_port(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_PUT_PORT, released(&ctx, 0));
    0
}

#[kprobe]
pub fn kp_tw_hashdance(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_TW_HASHDANCE, try_kp_tw_hashdance(&ctx));
    0
}

fn try_kp_tw_hashdance(ctx: &ProbeContext) -> Outcome {
    let tw: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    let sk: *const u8 = ctx.arg(1).ok_or(NO_ARG)?;
    track::moved_to_time_wait(kernel::socket_id(sk), kernel::socket_id(tw), FLAG_TIME_WAIT);
    Ok(())
}

#[kprobe]
pub fn kp_twsk_kill(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_TWSK_KILL, try_kp_twsk_kill(&ctx));
    0
}

fn try_kp_twsk_kill(ctx: &ProbeContext) -> Outcome {
    let tw: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    track::time_wait_end(kernel::socket_id(tw));
    Ok(())
}
