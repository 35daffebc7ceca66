//! Types shared by the eBPF programs and the daemon. `#[repr(C)]`, explicit padding, nothing
//! else: both sides must agree on every byte.
#![no_std]

/// One record in the ring buffer: a port was allocated, released, or could not be allocated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it happened.
    pub ts_ns: u64,
    /// Socket cookie: the socket's one identity across every hook and sock_diag.
    pub cookie: u64,
    /// cgroup v2 id of the task that allocated the port (`bpf_get_current_cgroup_id()`);
    /// 0 where there is no such task.
    pub cgroup: u64,
    /// Thread-group id (the pid users know) of the process that caused the allocation.
    pub pid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub comm: [u8; 16],
    /// Local and remote address; IPv4 uses the first 4 bytes, network order.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Local and remote port, host order.
    pub lport: u16,
    pub rport: u16,
    /// One of `EVENT_*`.
    pub event: u8,
    /// One of `KIND_*`.
    pub kind: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// For `EVENT_FAIL`: the positive errno.
    pub errno: u32,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

impl PortEvent {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        cookie: 0,
        cgroup: 0,
        pid: 0,
        netns: 0,
        comm: [0; 16],
        laddr: [0; 16],
        raddr: [0; 16],
        lport: 0,
        rport: 0,
        event: 0,
        kind: 0,
        proto: 0,
        family: 0,
        errno: 0,
        flags: 0,
        _pad: [0; 3],
    };
}

pub const EVENT_ALLOC: u8 = 1;
pub const EVENT_RELEASE: u8 = 2;
pub const EVENT_FAIL: u8 = 3;
/// The TIME_WAIT socket that held a released port is gone (kprobe backend: the kernel sees
/// it die; the tracepoint backend watches sock_diag instead).
pub const EVENT_TIME_WAIT_END: u8 = 4;
/// A TCP socket whose port came from bind() to port 0 went on to connect(): it holds that
/// port for every destination, where a port connect() chooses is shared per destination.
/// The record is the allocation's, with the peer the socket is connecting to. (A socket
/// with IP_BIND_ADDRESS_NO_PORT got no port at bind(): connect() chose it, as it should.)
pub const EVENT_BOUND_CONNECT: u8 = 5;

/// On a TCP release: the socket closed actively (from FIN_WAIT1/FIN_WAIT2/CLOSING), so its
/// port most likely lives on in a TIME_WAIT socket; the daemon watches for that one to go.
pub const FLAG_TIME_WAIT: u8 = 1;
/// A port the application asked for by number (bind to a non-zero port): not an ephemeral
/// allocation, but inside the ephemeral range it takes a port from everyone, so the daemon
/// counts it in occupancy and nowhere else.
pub const FLAG_EXPLICIT: u8 = 2;
/// With `FLAG_TIME_WAIT`: the kernel did make the TIME_WAIT socket (the full socket had
/// already left the connection table for it when it reached CLOSE), so the daemon need not
/// ask sock_diag whether one exists, only, a minute on, whether it is gone.
pub const FLAG_TIME_WAIT_MADE: u8 = 4;

pub const KIND_CONNECT: u8 = 1;
pub const KIND_BIND: u8 = 2;
pub const KIND_LISTEN: u8 = 3;
pub const KIND_SENDMSG: u8 = 4;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Indexes into the per-CPU `LOST` counters: why an event never reached userspace.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// The per-socket table was full, so a new socket could not be tracked.
pub const LOST_TABLE_FULL: u32 = 1;
/// The failure ring buffer was full (failures have their own, so floods of allocations
/// cannot crowd them out; this counts what was lost anyway).
pub const LOST_FAILURE_RING_FULL: u32 = 2;
pub const LOST_REASONS: u32 = 3;

/// Indexes into the per-CPU `PROBE_ERRORS` counters, one per program: how many of its runs
/// failed (a helper, a kernel read or a map operation that failed). A run that found nothing
/// to do (a socket not traced, a call that is not a port request) did not fail.
// The kprobe backend.
pub const PROBE_KP_BIND: u32 = 0;
pub const PROBE_KR_BIND: u32 = 1;
pub const PROBE_KP_HASH_CONNECT: u32 = 2;
pub const PROBE_KR_HASH_CONNECT: u32 = 3;
pub const PROBE_KP_CSK_GET_PORT: u32 = 4;
pub const PROBE_KR_CSK_GET_PORT: u32 = 5;
pub const PROBE_KP_DGRAM_CONNECT: u32 = 6;
pub const PROBE_KR_DGRAM_CONNECT: u32 = 7;
pub const PROBE_KP_UDP_GET_PORT: u32 = 8;
pub const PROBE_KR_UDP_GET_PORT: u32 = 9;
pub const PROBE_KP_PUT_PORT: u32 = 10;
pub const PROBE_KP_UDP_UNHASH: u32 = 11;
pub const PROBE_KP_TW_HASHDANCE: u32 = 12;
pub const PROBE_KP_TWSK_KILL: u32 = 13;
// The tracepoint backend.
pub const PROBE_TCP_STATE: u32 = 14;
pub const PROBE_TCP_PORT_CHOSEN: u32 = 15;
pub const PROBE_BIND4_REQUEST: u32 = 16;
pub const PROBE_BIND6_REQUEST: u32 = 17;
pub const PROBE_UDP_CONNECT4: u32 = 18;
pub const PROBE_UDP_CONNECT6: u32 = 19;
pub const PROBE_UDP_SENDMSG4: u32 = 20;
pub const PROBE_UDP_SENDMSG6: u32 = 21;
pub const PROBE_POST_BIND4: u32 = 22;
pub const PROBE_POST_BIND6: u32 = 23;
pub const PROBE_SOCK_RELEASE: u32 = 24;
pub const PROBE_UDP_CREATE: u32 = 25;
pub const PROBE_BIND_EXIT: u32 = 26;
pub const PROBE_CONNECT_EXIT: u32 = 27;
// The tracepoint backend on kernels whose tp_btf programs cannot call
// bpf_get_socket_cookie (before 5.12): `tcp_state`'s stand-in, and what gives it cookies.
pub const PROBE_TCP_STATE_STORED_COOKIE: u32 = 28;
pub const PROBE_TCP_COOKIE: u32 = 29;
pub const PROBE_PROGRAMS: u32 = 30;
/// Program names (the eBPF object's symbols) by `PROBE_*` index.
pub const PROBE_NAMES: [&str; PROBE_PROGRAMS as usize] = [
    "kp_bind",
    "kr_bind",
    "kp_hash_connect",
    "kr_hash_connect",
    "kp_csk_get_port",
    "kr_csk_get_port",
    "kp_dgram_connect",
    "kr_dgram_connect",
    "kp_udp_get_port",
    "kr_udp_get_port",
    "kp_put_port",
    "kp_udp_unhash",
    "kp_tw_hashdance",
    "kp_twsk_kill",
    "tcp_state",
    "tcp_port_chosen",
    "bind4_request",
    "bind6_request",
    "udp_connect4",
    "udp_connect6",
    "udp_sendmsg4",
    "udp_sendmsg6",
    "post_bind4",
    "post_bind6",
    "sock_release",
    "udp_create",
    "bind_exit",
    "connect_exit",
    "tcp_state_stored_cookie",
    "tcp_cookie",
];

/// Each tracepoint-backend program and its empty twin at the same hook (port-trace-ebpf's
/// `floor.rs`): the benchmark's floor, what the hooks cost with nothing to do.
pub const EMPTY_TWINS: [(&str, &str); 14] = [
    ("tcp_state", "nop_set_state"),
    ("tcp_port_chosen", "nop_sock_ops"),
    ("bind4_request", "nop_bind4"),
    ("bind6_request", "nop_bind6"),
    ("udp_connect4", "nop_connect4"),
    ("udp_connect6", "nop_connect6"),
    ("udp_sendmsg4", "nop_sendmsg4"),
    ("udp_sendmsg6", "nop_sendmsg6"),
    ("post_bind4", "nop_post_bind4"),
    ("post_bind6", "nop_post_bind6"),
    ("sock_release", "nop_release"),
    ("udp_create", "nop_create"),
    ("bind_exit", "nop_exit_bind"),
    ("connect_exit", "nop_exit_connect"),
];

/// Indexes into the per-CPU `MAP_OPS` counters: map operations by map, and ring buffer
/// records, counted only when the daemon loads the programs with `COUNT_MAP_OPS` set (its
/// hidden `--count-map-ops`, for the benchmark's per-connection budget). Otherwise the
/// verifier sees the flag is 0 in frozen read-only data and removes the counting.
pub const OP_SOCKETS_LOOKUP: u32 = 0;
pub const OP_SOCKETS_INSERT: u32 = 1;
pub const OP_SOCKETS_DELETE: u32 = 2;
pub const OP_IN_FLIGHT_LOOKUP: u32 = 3;
pub const OP_IN_FLIGHT_INSERT: u32 = 4;
/// Records reserved in either ring buffer.
pub const OP_RING_RECORDS: u32 = 5;
pub const MAP_OP_KINDS: u32 = 6;
/// What each `OP_*` counts, by index, as the benchmark prints it.
pub const MAP_OP_NAMES: [&str; MAP_OP_KINDS as usize] = [
    "SOCKETS lookup",
    "SOCKETS insert",
    "SOCKETS delete",
    "IN_FLIGHT lookup",
    "IN_FLIGHT insert",
    "ring records",
];

/// The errnos a port allocation fails with.
pub const EADDRINUSE: u32 = 98;
pub const EADDRNOTAVAIL: u32 = 99;
pub const EAGAIN: u32 = 11;

/// TCP states (`include/net/tcp_states.h`), as `sk_state`, the `inet_sock_set_state`
/// tracepoint and sock_diag give them.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

/// Struct field offsets the programs need, resolved from the running kernel's BTF by the
/// daemon and written into the programs' read-only data before load (Rust eBPF gets no CO-RE
/// relocations, so offsets compiled in from one kernel's headers would be wrong on another).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `__sk_common.skc_num` (u16, host order).
    pub sk_num: u32,
    /// `struct sock`: `__sk_common.skc_dport` (be16).
    pub sk_dport: u32,
    /// `struct sock`: `__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `struct sock`: `__sk_common.skc_rcv_saddr` (be32).
    pub sk_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_daddr` (be32).
    pub sk_daddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_daddr` (16 bytes).
    pub sk_v6_daddr: u32,
    /// `struct sock`: `sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `struct sock`: `__sk_common.skc_net` (a `struct net *`).
    pub sk_net: u32,
    /// `struct net`: `ns.inum` (u32).
    pub net_inum: u32,
    /// `struct task_struct`: `nsproxy`.
    pub task_nsproxy: u32,
    /// `struct nsproxy`: `net_ns`.
    pub nsproxy_net_ns: u32,
    /// Offset of `ret` in the `syscalls:sys_exit_*` tracepoints' records (from tracefs).
    pub syscall_exit_ret: u32,
    /// `struct socket`: `sk`.
    pub socket_sk: u32,
    /// `struct sock`: `__sk_common.skc_state` (u8, `TCP_*`).
    pub sk_state: u32,
    /// `struct tcp_sock`: `bpf_sock_ops_cb_flags` (u8): the tracepoint backend marks the TCP
    /// sockets it tracks there (see `TRACKED_MARK`).
    pub tcp_cb_flags: u32,
    /// `struct tcp_sock`: `inet_conn.icsk_inet.sk.__sk_common.skc_nulls_node.pprev`: NULL
    /// once the socket is out of the connection table.
    pub tcp_nulls_pprev: u32,
    /// `struct sock`: `__sk_common.skc_cookie` (u64): the socket's cookie, 0 until a helper
    /// or the kernel made one.
    pub sk_cookie: u32,
}

/// Which sockets the programs track at all, written by the daemon before load (`--netns`,
/// `--proto`). Only these two filters run in the kernel: occupancy is per namespace and
/// per protocol, so dropping other namespaces or the other protocol leaves the model of what
/// is traced exact. The pid, comm and family filters cannot: a port another process holds
/// still fills the range. All zero (the object file's value) traces everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// Network namespace inodes to trace; only the first `netns_count` count.
    pub netns: [u32; MAX_NETNS_FILTER],
    /// 0: every namespace.
    pub netns_count: u32,
    /// `FILTER_TCP | FILTER_UDP` bits; 0: both.
    pub protos: u32,
}

/// How many `--netns` the kernel can filter on.
pub const MAX_NETNS_FILTER: usize = 8;
pub const FILTER_TCP: u32 = 1;
pub const FILTER_UDP: u32 = 2;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, every bit pattern valid, no padding the compiler adds (the
    // explicit `_pad` fills it).
    unsafe impl aya::Pod for super::PortEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::KernelFilter {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        // The field sizes add up to the struct size: nothing is left for the compiler to pad.
        assert_eq!(
            size_of::<PortEvent>(),
            8 + 8 + 8 + 4 + 4 + 16 * 3 + 2 * 2 + 4 + 4 + 1 + 3
        );
        assert_eq!(size_of::<PortEvent>() % 8, 0);
        assert_eq!(size_of::<KernelOffsets>(), 18 * 4);
        assert_eq!(size_of::<KernelFilter>(), (MAX_NETNS_FILTER + 2) * 4);
    }

    #[test]
    fn probe_names_match_their_indexes() {
        assert_eq!(PROBE_NAMES[PROBE_KP_BIND as usize], "kp_bind");
        assert_eq!(PROBE_NAMES[PROBE_KP_TWSK_KILL as usize], "kp_twsk_kill");
        assert_eq!(PROBE_NAMES[PROBE_TCP_STATE as usize], "tcp_state");
        assert_eq!(PROBE_NAMES[PROBE_CONNECT_EXIT as usize], "connect_exit");
        assert_eq!(MAP_OP_NAMES[OP_RING_RECORDS as usize], "ring records");
    }
}
