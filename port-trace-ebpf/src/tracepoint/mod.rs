//! The tracepoint backend, for kernels without kprobes. It sees a port's life like this:
//! - `tcp_state` (tp_btf `inet_sock_set_state`): a connect() or listen() on a socket with no
//!   port yet is *pending*; one whose port came from bind(0) is reported connecting
//!   (`EVENT_BOUND_CONNECT`); a connect() or listen() that found no port fails, and a
//!   listener reaching CLOSE releases its port.
//! - `tcp_port_chosen` (cgroup sock_ops): the TCP_CONNECT/TCP_LISTEN callbacks run right after
//!   the kernel chose the port, so that is where a pending connect/listen becomes an alloc;
//!   it subscribes each connecting socket it tracks to the socket's state changes (a flag in
//!   the socket itself) and releases the port when the socket reaches CLOSE. So
//!   `tcp_state` and `sock_release` pass every other socket (the server end of every
//!   connection) without a table lookup.
//! - `bind4_request`/`bind6_request` (cgroup sock_addr): a bind() asking for port 0 is pending;
//!   `post_bind4`/`post_bind6` (cgroup sock) see the port the kernel chose.
//! - `sock_release` (cgroup sock): the port of a UDP socket, or of a TCP socket closed while in
//!   CLOSE (bound, never connected or listening), is free again.
//! - UDP (`udp.rs`): `udp_create` marks fresh UDP sockets; `udp_connect4/6` notes a connect()
//!   that will autobind; `udp_sendmsg4/6` sees the port a fresh socket's first send chose.
//! - `bind_exit`/`connect_exit` (tracepoints `syscalls:sys_exit_bind/connect`): settle a
//!   bind(0) or UDP connect() in flight: the port chosen, or the errno when none was found.

mod bind;
mod release;
mod sock_ops;
mod syscalls;
mod tcp_state;
mod udp;
