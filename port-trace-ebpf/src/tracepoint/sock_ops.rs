//! `tcp_port_chosen`: cgroup sock_ops callbacks that run right after the kernel chose the port
//! for connect() (`TCP_CONNECT_CB`, after `inet_hash_connect`) and for listen() without bind
//! (`TCP_LISTEN_CB`, after `inet_csk_get_port`). The tracepoint cannot see either port: it
//! fires before the choice.
//!
//! It also subscribes each connecting socket port-trace tracks to its own state changes
//! (`BPF_SOCK_OPS_STATE_CB_FLAG`, kept in the socket: `TRACKED_MARK`), and reports the
//! release when one reaches CLOSE (`STATE_CB`). So `tcp_state`, which runs for every TCP
//! socket's every change, passes the closes without a table lookup (the server end of every
//! loopback connection, and every socket port-trace does not track, cost none), and no
//! release is lost to the kernel's recursion guard for tracing programs: a tp_btf program
//! that an interrupt's network processing re-enters on the same CPU is skipped, and under
//! loopback churn that skipped 0.5% of the releases; cgroup programs have no such guard.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    macros::sock_ops,
    programs::SockOpsContext,
};

use port_trace_common::{AF_INET, AF_INET6, PROBE_TCP_PORT_CHOSEN, PortEvent, TCP_CLOSE};

use crate::{
    errors::{self, Outcome},
    kernel, track,
};

/// The mark of a tracked TCP socket: the sock_ops callback flag for state changes, kept in
/// the socket (`tcp_sock.bpf_sock_ops_cb_flags`), which tracing programs can read without a
/// map. Listeners are never marked: the sockets they accept inherit their flags.
///
/// Another sock_ops program that sets a socket's flags without keeping the ones already set
/// takes the mark off; that socket's release then comes from the daemon's reconciliation
/// against sock_diag (within `--reconcile-every`), instead of from here.
const TRACKED_MARK: u32 = BPF_SOCK_OPS_STATE_CB_FLAG;

/// Whether `sk`, a TCP socket, carries `TRACKED_MARK`.
#[inline(always)]
pub fn tracked(sk: *const u8) -> bool {
    let flags = unsafe { kernel::read::<u8>(sk, kernel::offsets().tcp_cb_flags) }.unwrap_or(0);
    u32::from(flags) & TRACKED_MARK != 0
}

#[sock_ops]
pub fn tcp_port_chosen(ctx: SockOpsContext) -> u32 {
    errors::count(PROBE_TCP_PORT_CHOSEN, try_tcp_port_chosen(&ctx));
    1
}

fn try_tcp_port_chosen(ctx: &SockOpsContext) -> Outcome {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_STATE_CB {
        // (old state, new state); before the kernel frees the port.
        if ctx.arg(1) == u32::from(TCP_CLOSE) {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
            if let Some(entry) = track::lookup(cookie) {
                track::tcp_closed(cookie, entry, ctx.arg(0), time_wait_made(ctx));
            }
        }
        return Ok(());
    }
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    let Some(entry) = track::lookup(cookie) else {
        return Ok(());
    };
    if unsafe { (*entry).state } == track::PENDING {
        // SAFETY: `entry` points into SOCKETS, valid for this program run.
        endpoints(ctx, unsafe { &mut (*entry).event });
        track::allocated(entry, ctx.local_port() as u16);
    }
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // Kept with the flags already set (another program's, say).
        ctx.set_cb_flags((ctx.cb_flags() | TRACKED_MARK) as i32)
            .map_err(i64::from)?;
    }
    Ok(())
}

/// At a state callback's CLOSE: whether the kernel has just made this socket's TIME_WAIT
/// socket. `tcp_time_wait` puts the TIME_WAIT socket in the connection table in the full
/// socket's place (`inet_twsk_hashdance`) before `tcp_done` moves it to CLOSE, and this
/// callback runs before `tcp_set_state` unhashes a socket closing any other way (a RST, a
/// full TIME_WAIT table): so a socket already out of the table here left it for a TIME_WAIT
/// socket. None where the socket cannot be read.
#[inline(always)]
fn time_wait_made(ctx: &SockOpsContext) -> Option<bool> {
    // SAFETY: the context's socket, NULL-checked by the helper; the offset is a constant
    // from read-only data, so the verifier checks the load against the kernel's BTF.
    unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        let tp = bpf_skc_to_tcp_sock(sk.cast());
        if tp.is_null() {
            return None;
        }
        let off = kernel::tcp_nulls_pprev_offset();
        let pprev = core::ptr::read_volatile(tp.cast::<u8>().add(off as usize).cast::<u64>());
        Some(pprev == 0)
    }
}

/// The socket's family, addresses and peer port, from the callback's context: the kernel
/// turns each field into one load from the socket, where `kernel::read_endpoints` calls a
/// helper per field.
#[inline(always)]
fn endpoints(ctx: &SockOpsContext, event: &mut PortEvent) {
    let family = ctx.family();
    event.family = family as u8;
    // The peer port is in network order in the field's upper half (see the uapi's
    // `bpf_sock_ops.remote_port`): the whole field, read as network order, is the port.
    event.rport = u32::from_be(ctx.remote_port()) as u16;
    if family == u32::from(AF_INET) {
        event.laddr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        event.raddr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else if family == u32::from(AF_INET6) {
        let (local, remote) = (ctx.local_ip6(), ctx.remote_ip6());
        for i in 0..4 {
            event.laddr[i * 4..i * 4 + 4].copy_from_slice(&local[i].to_ne_bytes());
            event.raddr[i * 4..i * 4 + 4].copy_from_slice(&remote[i].to_ne_bytes());
        }
    }
}
