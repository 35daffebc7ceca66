//! Sockets as the kernel lists them through netlink sock_diag (what `ss` uses): dumps of every
//! socket in some states (the start-up snapshot), and lookups of single sockets by address and
//! cookie (whether a TIME_WAIT socket still exists).
//!
//! A netlink socket answers for the network namespace it was created in, so `SockDiag::in_netns`
//! creates one inside another namespace.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use port_trace_common::{TCP_SYN_SENT, TCP_TIME_WAIT};
use thiserror::Error;
use tracing::debug;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR_LEN: usize = 16;
/// Lookups sent in one `send`. Each answer is a message of its own (~1 KiB of receive buffer
/// with its overhead); 64 of them fit the default buffer (~200 KiB) with room to spare.
const LOOKUP_BATCH: usize = 64;
/// A lost answer (receive buffer overrun) must not stall the daemon: recv gives up after this.
const RECV_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 2,
    tv_usec: 0,
};
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DiagError {
    #[error("netlink message truncated")]
    Truncated,
    #[error("the kernel answered the sock_diag dump with error {0}")]
    Kernel(i32),
}

/// One socket of a dump: the parts port-trace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub family: u8,
    pub state: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub cookie: u64,
    /// The socket's inode: which process holds it, through /proc/PID/fd.
    pub inode: u32,
}

fn address(family: u8, raw: &[u8]) -> IpAddr {
    if family == libc::AF_INET6 as u8 {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&raw[..16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// A dump request for `protocol` sockets of `family` in the states of `state_mask`.
pub fn request(family: u8, protocol: u8, state_mask: u32, seq: u32) -> Vec<u8> {
    let mut out = request_head(
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        protocol,
        state_mask,
    );
    out.resize(NLMSG_HDR_LEN + REQ_LEN, 0); // the socket id: all zero, a wildcard for dumps
    out
}

/// The netlink header and `inet_diag_req_v2` up to the socket id, which the caller appends.
fn request_head(flags: u16, seq: u32, family: u8, protocol: u8, state_mask: u32) -> Vec<u8> {
    let len = (NLMSG_HDR_LEN + REQ_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, protocol, 0, 0]);
    out.extend_from_slice(&state_mask.to_ne_bytes());
    out
}

/// One TCP connection, as a lookup names it: both ends and the socket cookie, which the kernel
/// checks, so a newer socket on the same addresses does not answer for an old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionId {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cookie: u64,
}

/// A request for the one TCP socket `id` names, in whatever state (not a dump).
pub fn lookup_request(id: &ConnectionId, seq: u32) -> Vec<u8> {
    // An IPv6 socket connected to a v4-mapped address is hashed, and found, as IPv4.
    let (src, dst) = match (id.local.ip(), id.remote.ip()) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => match (src.to_ipv4_mapped(), dst.to_ipv4_mapped()) {
            (Some(src), Some(dst)) => (IpAddr::V4(src), IpAddr::V4(dst)),
            _ => (id.local.ip(), id.remote.ip()),
        },
        other => other,
    };
    let family = match src {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    // Any state: the cookie names the socket.
    let mut out = request_head(
        NLM_F_REQUEST,
        seq,
        family,
        libc::IPPROTO_TCP as u8,
        u32::MAX,
    );
    out.extend_from_slice(&id.local.port().to_be_bytes());
    out.extend_from_slice(&id.remote.port().to_be_bytes());
    for addr in [src, dst] {
        let mut raw = [0u8; 16];
        match addr {
            IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
        }
        out.extend_from_slice(&raw);
    }
    out.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    out.extend_from_slice(&(id.cookie as u32).to_ne_bytes());
    out.extend_from_slice(&((id.cookie >> 32) as u32).to_ne_bytes());
    out
}

/// The answers to lookups sent with sequence numbers `first_seq..`: adds to `present` the
/// index of each socket found, or whose lookup failed otherwise than "no such socket" (kept,
/// as far as we know); returns how many answers `buf` held.
pub fn parse_lookups(
    buf: &[u8],
    first_seq: u32,
    present: &mut Vec<usize>,
) -> Result<usize, DiagError> {
    let mut at = 0;
    let mut answers = 0;
    while at + NLMSG_HDR_LEN <= buf.len() {
        let len = u32_ne(buf, at) as usize;
        let kind = u16_ne(buf, at + 4);
        let seq = u32_ne(buf, at + 8);
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            return Err(DiagError::Truncated);
        }
        let body = &buf[at + NLMSG_HDR_LEN..at + len];
        let index = seq.wrapping_sub(first_seq) as usize;
        match kind {
            NLMSG_ERROR if body.len() >= 4 => {
                // A negative errno; whatever else is there must not overflow the negation.
                let code = (u32_ne(body, 0) as i32).wrapping_neg();
                if code != libc::ENOENT {
                    present.push(index);
                }
            }
            SOCK_DIAG_BY_FAMILY => present.push(index),
            _ => return Err(DiagError::Truncated),
        }
        answers += 1;
        at += (len + 3) & !3;
    }
    Ok(answers)
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one `recv` worth of netlink messages; `Ok(true)` once the dump is done.
pub fn parse(buf: &[u8], into: &mut Vec<DiagSocket>) -> Result<bool, DiagError> {
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= buf.len() {
        let len = u32_ne(buf, at) as usize;
        let kind = u16_ne(buf, at + 4);
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            return Err(DiagError::Truncated);
        }
        let body = &buf[at + NLMSG_HDR_LEN..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = if body.len() >= 4 {
                    u32_ne(body, 0) as i32
                } else {
                    0
                };
                // A negative errno; whatever else is there must not overflow the negation.
                return Err(DiagError::Kernel(code.wrapping_neg()));
            }
            _ if body.len() >= MSG_LEN => into.push(DiagSocket {
                family: body[0],
                state: body[1],
                sport: u16::from_be_bytes([body[4], body[5]]),
                dport: u16::from_be_bytes([body[6], body[7]]),
                src: address(body[0], &body[8..24]),
                dst: address(body[0], &body[24..40]),
                cookie: u64::from(u32_ne(body, 44)) | (u64::from(u32_ne(body, 48)) << 32),
                inode: u32_ne(body, 68),
            }),
            _ => return Err(DiagError::Truncated),
        }
        // Messages are 4-byte aligned.
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// A NETLINK_SOCK_DIAG socket, answering for the namespace it was made in.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// One for the caller's own network namespace.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = RECV_TIMEOUT;
        // SAFETY: setsockopt with a value of the size it names.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// One for the network namespace `netns_file` (e.g. `/proc/PID/ns/net`) names.
    pub fn in_netns(netns_file: &std::path::Path) -> io::Result<Self> {
        crate::sys::netns::run_in(netns_file, Self::new)?
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        // SAFETY: sending a buffer we own; the kernel is the default destination.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One netlink datagram into `buf`; its length.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into a buffer we own, bounded by its length.
        let got = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }

    /// Every socket of `protocol` in the states of `state_mask`, IPv4 and IPv6.
    pub fn dump(&mut self, protocol: u8, state_mask: u32) -> io::Result<Vec<DiagSocket>> {
        let mut sockets = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.seq = self.seq.wrapping_add(1);
            let req = request(family, protocol, state_mask, self.seq);
            self.send(&req)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let got = self.recv(&mut buf)?;
                match parse(&buf[..got], &mut sockets) {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(err) => return Err(io::Error::other(err)),
                }
            }
        }
        Ok(sockets)
    }

    /// Cookies of the TCP sockets in TIME_WAIT.
    pub fn time_wait_cookies(&mut self) -> io::Result<foldhash::HashSet<u64>> {
        Ok(self
            .dump(libc::IPPROTO_TCP as u8, 1 << TCP_TIME_WAIT)?
            .into_iter()
            .map(|s| s.cookie)
            .collect())
    }

    /// Which of `ids` still exist (in any state, TIME_WAIT included), as indexes into
    /// `ids`. One exact lookup each, sent in batches: the cost follows the sockets asked
    /// about, where a dump's follows every socket in the namespace.
    pub fn still_there(&mut self, ids: &[ConnectionId]) -> io::Result<Vec<usize>> {
        let mut present = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for (batch_no, batch) in ids.chunks(LOOKUP_BATCH).enumerate() {
            let first_seq = self.seq.wrapping_add(1);
            let mut req = Vec::with_capacity(batch.len() * (NLMSG_HDR_LEN + REQ_LEN));
            for (i, id) in batch.iter().enumerate() {
                req.extend(lookup_request(id, first_seq.wrapping_add(i as u32)));
            }
            self.seq = first_seq.wrapping_add(batch.len() as u32);
            self.send(&req)?;
            let mut found = Vec::new();
            let mut answers = 0;
            while answers < batch.len() {
                let got = self.recv(&mut buf)?;
                answers +=
                    parse_lookups(&buf[..got], first_seq, &mut found).map_err(io::Error::other)?;
            }
            let offset = batch_no * LOOKUP_BATCH;
            present.extend(
                found
                    .into_iter()
                    .filter(|&i| i < batch.len())
                    .map(|i| offset + i),
            );
        }
        Ok(present)
    }
}

/// The pseudo-state in which dumps list TCP sockets that are only bound (Linux 6.9+).
const TCP_BOUND_INACTIVE: u32 = 13;

/// Whether this kernel's dumps list TCP sockets that are bound but neither connected nor
/// listening (Linux 6.9 on): binds one to a loopback port of our own namespace and dumps
/// that state alone (before 6.9 it names no socket, so nothing is listed).
pub fn lists_bound_only() -> bool {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is a fresh descriptor no one else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_in is valid; the fields set below make it 127.0.0.1:0.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: bind and getsockname with a sockaddr_in of the length given.
    let bound = unsafe {
        libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), len) == 0
            && libc::getsockname(socket.as_raw_fd(), (&raw mut addr).cast(), &mut len) == 0
    };
    if !bound {
        return false;
    }
    let port = u16::from_be(addr.sin_port);
    let Ok(mut diag) = SockDiag::new() else {
        return false;
    };
    diag.dump(libc::IPPROTO_TCP as u8, 1 << TCP_BOUND_INACTIVE)
        .is_ok_and(|sockets| sockets.iter().any(|s| s.sport == port))
}

/// The TCP sockets in SYN_SENT (connects not answered yet) in namespace `netns`; None when
/// it cannot be entered or the dump failed. The kernel filters by state: the answer is as
/// small as what it finds.
pub fn syn_sent(netns: u32) -> Option<Vec<DiagSocket>> {
    crate::sys::netns::run_in_inode(netns, || {
        SockDiag::new()
            .ok()?
            .dump(libc::IPPROTO_TCP as u8, 1 << TCP_SYN_SENT)
            .inspect_err(|err| debug!("sock_diag SYN_SENT dump in netns {netns}: {err}"))
            .ok()
    })
    .flatten()
}

/// One namespace's sockets, as `dump_namespace` found them.
#[derive(Debug, Default)]
pub struct NamespaceDump {
    /// Every socket of the protocols asked for, with the protocol it was dumped for.
    pub sockets: Vec<(u8, DiagSocket)>,
    /// The protocols whose dump failed (logged): their sockets are missing.
    pub failed: Vec<u8>,
}

/// Every socket of the given protocols (IPPROTO_*), in every state, in namespace `netns`.
/// None when the namespace cannot be entered or no sock_diag socket made there.
pub fn dump_namespace(netns: u32, protocols: &[u8]) -> Option<NamespaceDump> {
    crate::sys::netns::run_in_inode(netns, || {
        let mut diag = SockDiag::new().ok()?;
        let mut dump = NamespaceDump::default();
        for &protocol in protocols {
            match diag.dump(protocol, u32::MAX) {
                Ok(found) => dump
                    .sockets
                    .extend(found.into_iter().map(|s| (protocol, s))),
                Err(err) => {
                    debug!("sock_diag dump of protocol {protocol} in netns {netns}: {err}");
                    dump.failed.push(protocol);
                }
            }
        }
        Some(dump)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR_LEN + body.len()) as u32;
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
    }

    fn diag_msg(state: u8, sport: u16, cookie: u64) -> Vec<u8> {
        let mut body = vec![0u8; MSG_LEN];
        body[0] = libc::AF_INET as u8;
        body[1] = state;
        body[4..6].copy_from_slice(&sport.to_be_bytes());
        body[8..12].copy_from_slice(&[10, 0, 0, 1]);
        body[68..72].copy_from_slice(&1234u32.to_ne_bytes());
        body[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        body[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        body
    }

    #[test]
    fn request_layout() {
        let req = request(2, 6, 1 << 6, 7);
        assert_eq!(req.len(), 72);
        assert_eq!(u32_ne(&req, 0), 72);
        assert_eq!(u16_ne(&req, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16_ne(&req, 6), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32_ne(&req, 8), 7);
        assert_eq!(&req[16..20], &[2, 6, 0, 0]);
        assert_eq!(u32_ne(&req, 20), 64);
    }

    #[test]
    fn lookup_request_layout() {
        let id = ConnectionId {
            local: SocketAddr::from(([127, 0, 0, 1], 40000)),
            remote: SocketAddr::from(([10, 0, 0, 2], 443)),
            cookie: 0x1_0000_0002,
        };
        let req = lookup_request(&id, 9);
        assert_eq!(req.len(), 72);
        assert_eq!(u16_ne(&req, 6), NLM_F_REQUEST, "one socket, not a dump");
        assert_eq!(u32_ne(&req, 8), 9);
        assert_eq!(
            &req[16..18],
            &[libc::AF_INET as u8, libc::IPPROTO_TCP as u8]
        );
        assert_eq!(u32_ne(&req, 20), u32::MAX);
        assert_eq!(&req[24..26], &40000u16.to_be_bytes());
        assert_eq!(&req[26..28], &443u16.to_be_bytes());
        assert_eq!(&req[28..32], &[127, 0, 0, 1]);
        assert_eq!(&req[44..48], &[10, 0, 0, 2]);
        assert_eq!(u32_ne(&req, 64), 2, "cookie, low half first");
        assert_eq!(u32_ne(&req, 68), 1);

        let v6 = ConnectionId {
            local: "[fd00::1]:40000".parse().expect("address"),
            remote: "[fd00::2]:443".parse().expect("address"),
            ..id
        };
        let req = lookup_request(&v6, 1);
        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(
            &req[28..44],
            &"fd00::1".parse::<Ipv6Addr>().expect("a").octets()
        );

        // A dual-stack socket talking IPv4 is in the IPv4 tables.
        let mapped = ConnectionId {
            local: "[::ffff:127.0.0.1]:40000".parse().expect("address"),
            remote: "[::ffff:10.0.0.2]:443".parse().expect("address"),
            ..id
        };
        assert_eq!(lookup_request(&mapped, 9), lookup_request(&id, 9));
    }

    #[test]
    fn lookup_answers_found_missing_and_failed() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &diag_msg(6, 40000, 5));
        buf[8..12].copy_from_slice(&100u32.to_ne_bytes());
        let mut missing = message(NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        missing[8..12].copy_from_slice(&101u32.to_ne_bytes());
        let mut failed = message(NLMSG_ERROR, &(-libc::ENOMEM).to_ne_bytes());
        failed[8..12].copy_from_slice(&102u32.to_ne_bytes());
        buf.extend(missing);
        buf.extend(failed);
        let mut present = Vec::new();
        assert_eq!(parse_lookups(&buf, 100, &mut present), Ok(3));
        assert_eq!(
            present,
            [0, 2],
            "found, and kept where the kernel could not say"
        );
        assert_eq!(
            parse_lookups(&buf[..20], 100, &mut present),
            Err(DiagError::Truncated)
        );
    }

    #[test]
    fn parses_sockets_then_done() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &diag_msg(6, 40000, 0x1_0000_0002));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, &diag_msg(6, 40001, 3)));
        let mut out = Vec::new();
        assert_eq!(parse(&buf, &mut out), Ok(false));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].cookie, 0x1_0000_0002);
        assert_eq!(out[0].sport, 40000);
        assert_eq!(out[0].src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(out[0].inode, 1234);
        assert_eq!(out[1].state, 6);
        assert_eq!(parse(&message(NLMSG_DONE, &[0; 4]), &mut out), Ok(true));
    }

    #[test]
    fn reports_kernel_errors_and_truncation() {
        let mut out = Vec::new();
        let err = message(NLMSG_ERROR, &(-22i32).to_ne_bytes());
        assert_eq!(parse(&err, &mut out), Err(DiagError::Kernel(22)));
        let mut cut = message(SOCK_DIAG_BY_FAMILY, &diag_msg(6, 1, 1));
        cut.truncate(40);
        assert_eq!(parse(&cut, &mut out), Err(DiagError::Truncated));
    }

    /// Found by the sock_diag fuzz target: an error code of i32::MIN overflowed its negation
    /// (a panic in a debug build).
    #[test]
    fn an_error_code_that_cannot_be_negated_is_still_an_error() {
        let err = message(NLMSG_ERROR, &i32::MIN.to_ne_bytes());
        assert_eq!(
            parse(&err, &mut Vec::new()),
            Err(DiagError::Kernel(i32::MIN))
        );
        let mut present = Vec::new();
        assert_eq!(parse_lookups(&err, 0, &mut present), Ok(1));
        assert_eq!(present, [0], "not ENOENT: kept");
    }

    fn cookie_of(socket: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt into a u64 of the length given.
        let got = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(got, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    /// This kernel (6.18 here, and CI's) lists bound-only TCP sockets.
    #[test]
    fn bound_only_sockets_are_listed_from_linux_6_9() {
        let release = crate::sys::procfs::kernel_release();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let version = (
            numbers.next().and_then(|n| n.parse::<u32>().ok()),
            numbers.next().and_then(|n| n.parse::<u32>().ok()),
        );
        if let (Some(major), Some(minor)) = version {
            assert_eq!(lists_bound_only(), (major, minor) >= (6, 9), "{release}");
        }
    }

    /// The real kernel, unprivileged (our own namespace): a live connection is found by its
    /// addresses and cookie, the same addresses with another cookie are not, and neither is
    /// the connection once it is gone.
    #[test]
    fn looks_up_connections_in_this_namespace() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (local, peer) = (
            client.local_addr().expect("addr"),
            client.peer_addr().expect("addr"),
        );
        let id = ConnectionId {
            local,
            remote: peer,
            cookie: cookie_of(&client),
        };
        let stranger = ConnectionId {
            cookie: id.cookie.wrapping_add(1_000_000),
            ..id
        };
        let mut diag = SockDiag::new().expect("netlink socket");
        // More than one batch, to see the answers matched to the right ids.
        let mut ids = vec![stranger; LOOKUP_BATCH + 3];
        ids[LOOKUP_BATCH + 1] = id;
        assert_eq!(diag.still_there(&ids).expect("lookups"), [LOOKUP_BATCH + 1]);

        // Closed by RST: no TIME_WAIT socket stays behind.
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("SO_LINGER");
        drop(client);
        assert!(diag.still_there(&[id]).expect("lookup").is_empty());
    }
}
