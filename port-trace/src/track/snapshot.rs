//! The start-up snapshot: sockets that already hold ports when port-trace starts (every
//! namespace, every state, TIME_WAIT included, TCP and UDP), read through sock_diag as `ss`
//! does, so occupancy is right from the first second. Their owners come from /proc/PID/fd
//! (as `ss -p` finds them). Nothing reports their release, so each interval the snapshot is
//! taken again and the ones that are gone are freed.

use std::{collections::HashSet, net::IpAddr};

use port_trace_common::TCP_LISTEN;

use crate::{
    event::{
        AllocKind, Event, EventType, Family, Proto, comm::Comm, filter::Filter, workload::CgroupId,
    },
    sys::{
        netns,
        procfs::socket_owners,
        sock_diag::{self, DiagSocket},
    },
    workload::Resolver,
};

/// A socket from a dump, as the occupancy model takes it: an event that allocated the port.
pub fn as_event(
    socket: &DiagSocket,
    proto: Proto,
    netns: u32,
    owner: Option<&(u32, String)>,
) -> Event {
    // A TCP socket with a peer was connect()ed (or accepted: then it shares the listener's
    // port, which counts once); everything else holds its port exclusively.
    let connected = proto == Proto::Tcp && socket.state != TCP_LISTEN && socket.dport != 0;
    let (pid, comm) = owner.map_or((0, Comm::from("?")), |(pid, comm)| {
        (*pid, Comm::from(comm.as_str()))
    });
    Event {
        event: EventType::Alloc,
        ts_ns: 0,
        cookie: socket.cookie,
        pid,
        comm,
        cgroup: CgroupId::UNKNOWN,
        workload: None,
        netns,
        proto,
        family: if matches!(socket.src, IpAddr::V6(_)) {
            Family::Ipv6
        } else {
            Family::Ipv4
        },
        kind: if connected {
            AllocKind::Connect
        } else {
            AllocKind::Bind
        },
        laddr: socket.src,
        port: socket.sport,
        raddr: socket.dst,
        rport: socket.dport,
        errno: 0,
        time_wait: false,
        time_wait_made: false,
        time_wait_end: false,
        explicit: false,
    }
}

/// TCP and UDP sockets with a local port in `netns`.
fn dump(netns: u32) -> Vec<(Proto, DiagSocket)> {
    // A protocol whose dump failed is left out (and logged), as it always was here.
    sock_diag::dump_namespace(netns, &[Proto::Tcp.ipproto(), Proto::Udp.ipproto()])
        .unwrap_or_default()
        .sockets
        .into_iter()
        .filter(|(_, s)| s.sport != 0)
        .filter_map(|(number, s)| Some((Proto::from_ipproto(number)?, s)))
        .collect()
}

/// The sockets found at start-up, kept until they are gone.
#[derive(Default)]
pub struct Snapshot {
    /// (netns, cookie) -> the socket as an allocation.
    /// (Looked up for every allocation: foldhash.)
    held: foldhash::HashMap<(u32, u64), Event>,
}

impl Snapshot {
    /// Takes the snapshot of what `filter` traces, each socket named by its owner's
    /// workload.
    pub fn take(filter: &Filter, workloads: &mut Resolver) -> Self {
        let owners = socket_owners();
        // A process holds many sockets: its cgroup is read once.
        let mut by_pid = std::collections::HashMap::new();
        let mut events = Vec::new();
        for netns in netns::all() {
            for (proto, socket) in dump(netns) {
                if !filter.traces(netns, proto) {
                    continue;
                }
                let mut event = as_event(&socket, proto, netns, owners.get(&socket.inode));
                if event.pid != 0
                    && let Some((cgroup, workload)) = by_pid
                        .entry(event.pid)
                        .or_insert_with(|| workloads.for_pid(event.pid))
                {
                    event.cgroup = *cgroup;
                    event.workload = Some(workload.clone());
                }
                events.push(event);
            }
        }
        Self::from_events(events)
    }

    /// A snapshot of these sockets (as allocations).
    pub fn from_events(events: Vec<Event>) -> Self {
        Self {
            held: events
                .into_iter()
                .map(|e| ((e.netns, e.cookie), e))
                .collect(),
        }
    }

    /// The sockets still held.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.held.values()
    }

    /// A live allocation of a socket the snapshot also found (it was made between attaching
    /// and the snapshot): the live one counts, the snapshot's copy goes. Cookies match on the
    /// tracepoint backend, whose ids are the kernel's socket cookies.
    pub fn take_over(&mut self, netns: u32, cookie: u64) -> Option<Event> {
        self.held.remove(&(netns, cookie))
    }

    /// Which of the snapshot's sockets still exist, as (netns, cookie): dumps their
    /// namespaces again.
    pub fn present(&self) -> HashSet<(u32, u64)> {
        let namespaces: HashSet<u32> = self.held.keys().map(|(n, _)| *n).collect();
        let mut present = HashSet::new();
        for netns in namespaces {
            present.extend(dump(netns).into_iter().map(|(_, s)| (netns, s.cookie)));
        }
        present
    }

    /// Forgets the sockets not in `present` and returns them, to free in the occupancy model.
    pub fn retain_present(&mut self, present: &HashSet<(u32, u64)>) -> Vec<Event> {
        let mut gone = Vec::new();
        self.held.retain(|key, event| {
            let keep = present.contains(key);
            if !keep {
                gone.push(event.clone());
            }
            keep
        });
        gone
    }

    /// The snapshot's sockets that no longer exist, forgotten here and returned.
    pub fn gone(&mut self) -> Vec<Event> {
        let present = self.present();
        self.retain_present(&present)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn socket(state: u8, dport: u16) -> DiagSocket {
        DiagSocket {
            family: libc::AF_INET as u8,
            state,
            sport: 40001,
            dport,
            src: IpAddr::from(Ipv4Addr::LOCALHOST),
            dst: IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)),
            cookie: 5,
            inode: 77,
        }
    }

    #[test]
    fn connected_tcp_sockets_hold_per_destination_others_exclusively() {
        let owner = (42, "nginx".to_string());
        let established = as_event(&socket(1, 443), Proto::Tcp, 9, Some(&owner));
        assert_eq!(established.kind, AllocKind::Connect);
        assert_eq!((established.pid, established.comm.as_str()), (42, "nginx"));
        assert_eq!((established.rport, established.netns), (443, 9));
        let time_wait = as_event(&socket(6, 443), Proto::Tcp, 9, None);
        assert_eq!(
            time_wait.kind,
            AllocKind::Connect,
            "TIME_WAIT holds its 4-tuple"
        );
        assert_eq!(time_wait.comm, "?");
        assert_eq!(
            as_event(&socket(TCP_LISTEN, 0), Proto::Tcp, 9, None).kind,
            AllocKind::Bind
        );
        assert_eq!(
            as_event(&socket(1, 53), Proto::Udp, 9, None).kind,
            AllocKind::Bind
        );
    }

    #[test]
    fn finds_a_socket_of_ours() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let Some(own) = netns::own() else { return };
        let found = dump(own);
        assert!(
            found
                .iter()
                .any(|(p, s)| *p == Proto::Tcp && s.sport == port && s.state == TCP_LISTEN)
        );
        let owners = socket_owners();
        let ours = found
            .iter()
            .find(|(_, s)| s.sport == port)
            .and_then(|(_, s)| owners.get(&s.inode))
            .expect("our socket has an owner");
        assert_eq!(ours.0, std::process::id());
    }

    /// The snapshot names each socket's workload by its owner's cgroup.
    #[test]
    fn names_the_workload_of_a_socket_of_ours() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let Some(own) = netns::own() else { return };
        let mut workloads = Resolver::new(std::path::Path::new("/"));
        let snapshot = Snapshot::take(&Filter::default(), &mut workloads);
        let ours = snapshot
            .events()
            .find(|e| e.netns == own && e.port == port && e.pid == std::process::id())
            .expect("our listener, owned by us");
        let Some(path) = crate::sys::procfs::cgroup_of(std::process::id()) else {
            eprintln!("skipped: no cgroup v2 line in /proc/self/cgroup");
            return;
        };
        assert!(ours.cgroup.is_known(), "{ours:?}");
        assert_eq!(
            ours.workload.as_ref().and_then(|w| w.cgroup.as_deref()),
            Some(path.as_str())
        );
    }
}
