//! `tcp_state`: the TCP state machine, from the `sock:inet_sock_set_state` tracepoint (as
//! tp_btf, so it gets a typed `struct sock *` and can take the socket's cookie).

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use port_trace_common::{IPPROTO_TCP, KIND_CONNECT, KIND_LISTEN};

use crate::{kernel, track};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_tcp_state(&ctx);
    0
}

fn try_tcp_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let kind = match (oldstate, newstate) {
        (TCP_CLOSE, TCP_SYN_SENT) => KIND_CONNECT,
        (TCP_CLOSE, TCP_LISTEN) => KIND_LISTEN,
        (_, TCP_CLOSE) => {
            let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
            if let Some(entry) = track::lookup(cookie) {
                track::end(cookie, entry);
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let off = kernel::offsets();
    // MPTCP's meta socket passes here too; its subflows are plain TCP and are traced as such.
    if unsafe { kernel::read::<u16>(sk, off.sk_protocol) }? != u16::from(IPPROTO_TCP) {
        return Ok(());
    }
    // A port already chosen came from an explicit bind (not ephemeral) or from bind(0),
    // which the bind hooks track.
    if kernel::sk_num(sk, &off) != 0 {
        return Ok(());
    }
    // The port is chosen next, in this same syscall; sock_ops reports it (tcp_port_chosen).
    let event = kernel::sock_event(sk, &off, IPPROTO_TCP, kind);
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    track::begin(cookie, &event);
    Ok(())
}
