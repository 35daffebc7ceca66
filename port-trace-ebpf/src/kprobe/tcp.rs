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
    PROBE_KR_CSK_GET_PORT, PROBE_KR_HASH_CONNECT, TCP_CLOSING, TCP_FIN_WAIT1, TCP_FIN_WAIT2,
};

use super::{autobind, entry_of, request, settle};
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
    } else if let Some(entry) = entry_of(sk, kernel::socket_id(sk)) {
        // The socket has a port already: from bind(0), it is reported as such.
        track::bound_connect(entry, sk);
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
    errors::count(PROBE_KP_PUT_PORT, try_kp_put_port(&ctx));
    0
}

fn try_kp_put_port(ctx: &ProbeContext) -> Outcome {
    let sk: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    let id = kernel::socket_id(sk);
    // No entry: a socket not traced, or one whose port went to a TIME_WAIT socket already.
    let Some(entry) = entry_of(sk, id) else {
        return Ok(());
    };
    // The state is still the one before CLOSE here (tcp_set_state stores CLOSE after
    // giving the port up). From an active close's states, the port went to a TIME_WAIT
    // socket just before (tcp_time_wait: hashdance, then tcp_done), and the socket still
    // being ours means the kprobe on the hashdance did not run: the kernel skips a kprobe
    // that fires while another one's handler runs on the same CPU (a softirq under
    // loopback churn), and counts that nowhere we can read on every kernel. Then the port
    // is parked as the hashdance would have parked it; where no TIME_WAIT socket was made
    // after all (a reset, or the TIME_WAIT table full), reconciliation frees it.
    let state = unsafe { kernel::read::<u8>(sk, kernel::offsets().sk_state) }.unwrap_or(0);
    let flags = match state {
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING => FLAG_TIME_WAIT,
        _ => 0,
    };
    track::end(id, entry, flags);
    Ok(())
}

#[kprobe]
pub fn kp_tw_hashdance(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_TW_HASHDANCE, try_kp_tw_hashdance(&ctx));
    0
}

fn try_kp_tw_hashdance(ctx: &ProbeContext) -> Outcome {
    let tw: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    let sk: *const u8 = ctx.arg(1).ok_or(NO_ARG)?;
    let id = kernel::socket_id(sk);
    if entry_of(sk, id).is_some() {
        track::moved_to_time_wait(id, kernel::socket_id(tw), FLAG_TIME_WAIT);
    }
    Ok(())
}

#[kprobe]
pub fn kp_twsk_kill(ctx: ProbeContext) -> u32 {
    errors::count(PROBE_KP_TWSK_KILL, try_kp_twsk_kill(&ctx));
    0
}

fn try_kp_twsk_kill(ctx: &ProbeContext) -> Outcome {
    let tw: *const u8 = ctx.arg(0).ok_or(NO_ARG)?;
    // A TIME_WAIT socket keeps its socket's ports (the same `sock_common`).
    let id = kernel::socket_id(tw);
    if entry_of(tw, id).is_some() {
        track::time_wait_end(id);
    }
    Ok(())
}
