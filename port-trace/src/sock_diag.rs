//! Sockets as the kernel lists them through netlink sock_diag (what `ss` uses): here, which
//! TIME_WAIT sockets still exist, by socket cookie.
//!
//! A netlink socket answers for the network namespace it was created in, so `SockDiag::in_netns`
//! creates one inside another namespace.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use thiserror::Error;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;

pub const TCP_TIME_WAIT: u8 = 6;

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
    let len = (NLMSG_HDR_LEN + REQ_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, protocol, 0, 0]);
    out.extend_from_slice(&state_mask.to_ne_bytes());
    out.resize(len as usize, 0); // the socket id: all zero, a wildcard for dumps
    out
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
                return Err(DiagError::Kernel(-code));
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
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// One for the network namespace `netns_file` (e.g. `/proc/PID/ns/net`) names.
    pub fn in_netns(netns_file: &std::path::Path) -> io::Result<Self> {
        crate::netns::run_in(netns_file, Self::new)?
    }

    /// Every socket of `protocol` in the states of `state_mask`, IPv4 and IPv6.
    pub fn dump(&mut self, protocol: u8, state_mask: u32) -> io::Result<Vec<DiagSocket>> {
        let mut sockets = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.seq = self.seq.wrapping_add(1);
            let req = request(family, protocol, state_mask, self.seq);
            // SAFETY: sending a buffer we own; the kernel is the default destination.
            let sent =
                unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: receiving into a buffer we own, bounded by its length.
                let got = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if got < 0 {
                    return Err(io::Error::last_os_error());
                }
                match parse(&buf[..got as usize], &mut sockets) {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(err) => return Err(io::Error::other(err)),
                }
            }
        }
        Ok(sockets)
    }

    /// Cookies of the TCP sockets in TIME_WAIT.
    pub fn time_wait_cookies(&mut self) -> io::Result<HashSet<u64>> {
        Ok(self
            .dump(libc::IPPROTO_TCP as u8, 1 << TCP_TIME_WAIT)?
            .into_iter()
            .map(|s| s.cookie)
            .collect())
    }
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

    #[test]
    fn dumps_this_namespace() {
        // Works unprivileged: a TIME_WAIT dump of our own namespace.
        let mut diag = SockDiag::new().expect("netlink socket");
        diag.time_wait_cookies().expect("dump");
    }
}
