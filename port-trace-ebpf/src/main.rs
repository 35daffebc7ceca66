//! port-trace's kernel programs: one small program per hook, each a thin wrapper around a
//! `try_*` function. They share the maps in `track.rs` and speak `port_trace_common::PortEvent`.
//! The daemon attaches one backend's programs: `kprobe/` or `tracepoint/`.
//!
//! | file                    | programs                | hook                              |
//! | ----------------------- | ----------------------- | --------------------------------- |
//! | kprobe/bind.rs          | kp_bind, kr_bind        | k(ret)probe inet_bind, inet6_bind |
//! | kprobe/tcp.rs           | kp/kr_hash_connect      | k(ret)probe __inet_hash_connect   |
//! |                         | kp/kr_csk_get_port      | k(ret)probe inet_csk_get_port     |
//! |                         | kp_put_port             | kprobe inet_put_port              |
//! |                         | kp_tw_hashdance         | kprobe inet_twsk_hashdance*       |
//! |                         | kp_twsk_kill            | kprobe inet_twsk_kill             |
//! | kprobe/udp.rs           | kp/kr_dgram_connect     | k(ret)probe inet_dgram_connect    |
//! |                         | kp/kr_udp_get_port      | k(ret)probe udp_lib_get_port      |
//! |                         | kp_udp_unhash           | kprobe udp_lib_unhash             |
//! | tracepoint/tcp_state.rs | tcp_state               | tp_btf inet_sock_set_state        |
//! | tracepoint/sock_ops.rs  | tcp_port_chosen         | cgroup sock_ops                   |
//! | tracepoint/bind.rs      | bind4/6_request         | cgroup sock_addr bind4/6          |
//! |                         | post_bind4/6            | cgroup sock post_bind4/6          |
//! | tracepoint/release.rs   | sock_release            | cgroup sock sock_release          |
//! | tracepoint/udp.rs       | udp_create              | cgroup sock sock_create           |
//! |                         | udp_connect4/6          | cgroup sock_addr connect4/6       |
//! |                         | udp_sendmsg4/6          | cgroup sock_addr sendmsg4/6       |
//! | tracepoint/syscalls.rs  | bind_exit, connect_exit | tracepoint sys_exit_bind/connect  |
//! | floor.rs                | nop_*                   | each tracepoint-backend hook      |
//!
//! Shared by both backends: `kernel.rs` (reads from kernel structs at offsets the daemon
//! resolved from BTF, the event every program builds, the `--netns`/`--proto` filter) and
//! `track.rs` (the maps: the per-socket table, requests in flight, the ring buffers, and the
//! lost-event counters), `errors.rs` (failed runs per program, `PROBE_ERRORS`). Each
//! backend's `mod.rs` tells how its programs see a port's life. `floor.rs` holds empty
//! programs for the benchmark: the hooks' own cost.
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: the bpf target's atomics have no `fetch_add` (track.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod errors;
mod floor;
mod kernel;
mod kprobe;
mod tracepoint;
mod track;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
