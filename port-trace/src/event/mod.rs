//! Events: the ring buffer's bytes decoded into typed events, and the domain types they carry.
//! `comm` holds a task's name; `filter` decides which events are traced and reported.

pub mod capture;
pub mod comm;
pub mod filter;
pub mod workload;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use port_trace_common::{
    AF_INET, AF_INET6, EADDRINUSE, EADDRNOTAVAIL, EAGAIN, EVENT_ALLOC, EVENT_BOUND_CONNECT,
    EVENT_FAIL, EVENT_RELEASE, EVENT_TIME_WAIT_END, FLAG_EXPLICIT, FLAG_TIME_WAIT,
    FLAG_TIME_WAIT_MADE, IPPROTO_TCP, IPPROTO_UDP, KIND_BIND, KIND_CONNECT, KIND_LISTEN,
    KIND_SENDMSG, PortEvent,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::{
    comm::Comm,
    workload::{CgroupId, Workload},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Alloc,
    Release,
    Fail,
    /// A TCP socket whose port came from bind() to port 0 connected (to `raddr`:`rport`):
    /// it holds that port for every destination. Changes nothing held; findings count it.
    #[serde(rename = "bound_connect")]
    BoundConnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// How the kernel came to choose the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocKind {
    /// connect() on a socket with no port.
    Connect,
    /// bind() to port 0.
    Bind,
    /// listen() on a socket with no port.
    Listen,
    /// The first sendto()/sendmsg() on an unbound UDP socket.
    Sendmsg,
}

macro_rules! display_as_serde_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let name = serde_json::to_value(self).ok();
                f.write_str(name.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
            }
        }
    )*};
}
display_as_serde_name!(EventType, Family);

impl Proto {
    /// Its IPPROTO_* number.
    pub fn ipproto(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_ipproto(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The name records, labels and summaries use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl AllocKind {
    /// The name records, labels and summaries use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            AllocKind::Connect => "connect",
            AllocKind::Bind => "bind",
            AllocKind::Listen => "listen",
            AllocKind::Sendmsg => "sendmsg",
        }
    }
}

// Without going through serde: these are shown per event (metrics labels, summaries).
impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for AllocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One decoded ring buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: EventType,
    /// CLOCK_MONOTONIC nanoseconds, as the kernel stamped it.
    pub ts_ns: u64,
    pub cookie: u64,
    pub pid: u32,
    pub comm: Comm,
    /// The cgroup of the task that allocated the port.
    pub cgroup: CgroupId,
    /// Who that cgroup belongs to: filled in by the `workload` stage, None until then.
    pub workload: Option<Arc<Workload>>,
    pub netns: u32,
    pub proto: Proto,
    pub family: Family,
    pub kind: AllocKind,
    pub laddr: IpAddr,
    pub port: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub errno: u32,
    /// A TCP release by active close: the port may live on in a TIME_WAIT socket.
    pub time_wait: bool,
    /// With `time_wait`: the kernel side saw the TIME_WAIT socket made (tracepoint backend),
    /// so only its end is left to watch.
    pub time_wait_made: bool,
    /// The release of a port whose TIME_WAIT socket just died (kprobe backend).
    pub time_wait_end: bool,
    /// A port asked for by number: counted in occupancy, not as an allocation.
    pub explicit: bool,
}

/// An address as one 128-bit word, to hash it in one write: the derived hash of an `IpAddr`
/// (an enum tag, then the bytes as a slice with its length) costs several. An IPv4 and an
/// IPv6 address with the same bits merely collide.
pub fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// Hashed without `workload` (it follows from `cgroup`, and the derived hash walked its
/// strings) and with addresses as 128-bit words: the tracker hashes each allocation to
/// share its who and where. Equal events are equal in every field hashed, so hash equal.
impl std::hash::Hash for Event {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let Self {
            event,
            ts_ns,
            cookie,
            pid,
            comm,
            cgroup,
            workload: _,
            netns,
            proto,
            family,
            kind,
            laddr,
            port,
            raddr,
            rport,
            errno,
            time_wait,
            time_wait_made,
            time_wait_end,
            explicit,
        } = self;
        state.write_u64(*ts_ns);
        state.write_u64(*cookie);
        state.write_u64(cgroup.0);
        state.write_u128(ip_bits(*laddr));
        state.write_u128(ip_bits(*raddr));
        comm.hash(state);
        state.write_u32(*pid);
        state.write_u32(*netns);
        state.write_u32(*errno);
        state.write_u16(*port);
        state.write_u16(*rport);
        state.write_u8(*event as u8);
        state.write_u8(*proto as u8);
        state.write_u8(*family as u8);
        state.write_u8(*kind as u8);
        state.write_u8(
            u8::from(*time_wait)
                | u8::from(*time_wait_end) << 1
                | u8::from(*explicit) << 2
                | u8::from(*time_wait_made) << 3,
        );
    }
}

impl Event {
    /// The local end: the port the kernel chose, on its address.
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.laddr, self.port)
    }

    /// The remote end (unspecified:0 where there is none).
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.raddr, self.rport)
    }
}

/// The symbolic name of the errnos a port allocation fails with.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        EAGAIN => "EAGAIN",
        EADDRINUSE => "EADDRINUSE",
        EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => "other",
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event")]
    Short(usize),
    #[error("unknown {field} value {value}")]
    Unknown { field: &'static str, value: u8 },
    /// The kernel never hands out port 0: such an allocation or release is a corrupt record,
    /// and tracking it would show a held port that does not exist.
    #[error("{0} record with port 0")]
    NoPort(EventType),
}

fn unknown(field: &'static str, value: u8) -> DecodeError {
    DecodeError::Unknown { field, value }
}

fn ip(family: Family, raw: [u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<PortEvent>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length is checked above and PortEvent is plain old data; the ring buffer
    // gives no alignment promise, hence the unaligned read.
    let raw: PortEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_raw(&raw)
}

pub fn decode_raw(raw: &PortEvent) -> Result<Event, DecodeError> {
    let event = match raw.event {
        EVENT_ALLOC => EventType::Alloc,
        EVENT_RELEASE | EVENT_TIME_WAIT_END => EventType::Release,
        EVENT_FAIL => EventType::Fail,
        EVENT_BOUND_CONNECT => EventType::BoundConnect,
        other => return Err(unknown("event", other)),
    };
    let proto = Proto::from_ipproto(raw.proto).ok_or(unknown("proto", raw.proto))?;
    let family = match raw.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        other => return Err(unknown("family", other)),
    };
    let kind = match raw.kind {
        KIND_CONNECT => AllocKind::Connect,
        KIND_BIND => AllocKind::Bind,
        KIND_LISTEN => AllocKind::Listen,
        KIND_SENDMSG => AllocKind::Sendmsg,
        other => return Err(unknown("kind", other)),
    };
    // Only a failure has no port: the kernel found none to give.
    if raw.lport == 0 && event != EventType::Fail {
        return Err(DecodeError::NoPort(event));
    }
    Ok(Event {
        event,
        ts_ns: raw.ts_ns,
        cookie: raw.cookie,
        pid: raw.pid,
        comm: Comm::new(&raw.comm),
        cgroup: CgroupId(raw.cgroup),
        workload: None,
        netns: raw.netns,
        proto,
        family,
        kind,
        laddr: ip(family, raw.laddr),
        port: raw.lport,
        raddr: ip(family, raw.raddr),
        rport: raw.rport,
        errno: raw.errno,
        time_wait: raw.flags & FLAG_TIME_WAIT != 0,
        time_wait_made: raw.flags & FLAG_TIME_WAIT_MADE != 0,
        time_wait_end: raw.event == EVENT_TIME_WAIT_END,
        explicit: raw.flags & FLAG_EXPLICIT != 0,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A raw TCP IPv4 connect alloc, as the kernel would write it.
    pub fn raw_connect() -> PortEvent {
        let mut raw = PortEvent::ZERO;
        raw.event = EVENT_ALLOC;
        raw.ts_ns = 1_000;
        raw.cookie = 42;
        raw.pid = 7;
        raw.comm[..4].copy_from_slice(b"curl");
        raw.netns = 4026531840;
        raw.proto = IPPROTO_TCP;
        raw.family = AF_INET;
        raw.kind = KIND_CONNECT;
        raw.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.lport = 40001;
        raw.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        raw.rport = 443;
        raw
    }

    fn bytes(raw: &PortEvent) -> Vec<u8> {
        // SAFETY: PortEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts(
                (raw as *const PortEvent).cast::<u8>(),
                size_of::<PortEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_connect() {
        let event = decode(&bytes(&raw_connect())).expect("decodes");
        assert_eq!(event.event, EventType::Alloc);
        assert_eq!(event.comm, "curl");
        assert_eq!(event.laddr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(event.raddr, IpAddr::from([10, 1, 2, 3]));
        assert_eq!((event.port, event.rport), (40001, 443));
        assert_eq!(event.kind, AllocKind::Connect);
    }

    /// The cgroup id sits between the cookie and the pid; a 64-bit id (ids above 2^32 exist
    /// on long-lived hosts) must come through whole, and its neighbours untouched.
    #[test]
    fn decodes_the_whole_cgroup_id() {
        let mut raw = raw_connect();
        raw.cgroup = 0x0001_0000_0000_0042;
        let event = decode(&bytes(&raw)).expect("decodes");
        assert_eq!(event.cgroup, CgroupId(0x0001_0000_0000_0042));
        assert_eq!((event.cookie, event.pid), (42, 7));
        assert!(
            event.workload.is_none(),
            "the workload stage fills it, not decode"
        );
    }

    #[test]
    fn decodes_ipv6_addresses_and_a_full_comm() {
        let mut raw = raw_connect();
        raw.family = AF_INET6;
        raw.laddr = Ipv6Addr::LOCALHOST.octets();
        raw.comm = *b"sixteen-bytes-xx";
        let event = decode_raw(&raw).expect("decodes");
        assert_eq!(event.laddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(event.comm, "sixteen-bytes-xx");
    }

    #[test]
    fn names_are_the_serde_names() {
        for proto in [Proto::Tcp, Proto::Udp] {
            assert_eq!(
                serde_json::to_value(proto).ok(),
                Some(proto.as_str().into())
            );
        }
        for kind in [
            AllocKind::Connect,
            AllocKind::Bind,
            AllocKind::Listen,
            AllocKind::Sendmsg,
        ] {
            assert_eq!(serde_json::to_value(kind).ok(), Some(kind.as_str().into()));
        }
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short(8)));
        let mut raw = raw_connect();
        raw.kind = 99;
        assert_eq!(decode_raw(&raw), Err(unknown("kind", 99)));
        let mut raw = raw_connect();
        raw.family = 1;
        assert_eq!(decode_raw(&raw), Err(unknown("family", 1)));
    }

    /// Found by the ring_record fuzz target: a record of an allocation of port 0 decoded.
    #[test]
    fn rejects_an_allocation_or_release_of_port_0() {
        let mut raw = raw_connect();
        raw.lport = 0;
        assert_eq!(decode_raw(&raw), Err(DecodeError::NoPort(EventType::Alloc)));
        raw.event = EVENT_RELEASE;
        assert_eq!(
            decode_raw(&raw),
            Err(DecodeError::NoPort(EventType::Release))
        );
        raw.event = EVENT_TIME_WAIT_END;
        assert!(decode_raw(&raw).is_err());
        // A failed allocation has no port to carry.
        raw.event = EVENT_FAIL;
        raw.errno = EADDRNOTAVAIL;
        assert_eq!(decode_raw(&raw).map(|e| e.port), Ok(0));
    }
}
