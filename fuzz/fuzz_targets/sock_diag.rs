//! sock_diag replies: the netlink datagrams the kernel answers dumps and lookups with, parsed
//! by `sys::sock_diag::parse` (the start-up snapshot, TIME_WAIT cookies) and `parse_lookups`
//! (whether TIME_WAIT sockets still exist).
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::sys::sock_diag::{parse, parse_lookups};
use port_trace_common::AF_INET6;

/// A netlink message header: the least room one message (and so one socket or answer) takes.
const NLMSG_HDR_LEN: usize = 16;
/// A header and `struct inet_diag_msg`: the least room one socket of a dump takes.
const SOCKET_MSG_LEN: usize = NLMSG_HDR_LEN + 72;

fuzz_target!(|data: &[u8]| {
    let mut sockets = Vec::new();
    if parse(data, &mut sockets).is_ok() {
        assert!(sockets.len() <= data.len() / SOCKET_MSG_LEN, "{sockets:?}");
        for socket in &sockets {
            // The address is of the family the message names (anything not AF_INET6 is read
            // as IPv4).
            assert_eq!(socket.src.is_ipv6(), socket.family == AF_INET6);
            assert_eq!(socket.dst.is_ipv6(), socket.family == AF_INET6);
        }
    }
    // The sequence number of the first lookup comes from the input too.
    let first_seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut present = Vec::new();
    if let Ok(answers) = parse_lookups(data, first_seq, &mut present) {
        assert!(answers <= data.len() / NLMSG_HDR_LEN);
        assert!(
            present.len() <= answers,
            "{present:?} from {answers} answers"
        );
    }
});
