//! `port-trace explain PORT`: the questions people ask about one port, answered for this
//! host. Which IANA range it is in and whether IANA assigned it; whether this host would hand
//! it out as an ephemeral port (in each namespace whose range differs); and who holds it now
//! (`ss -tanup 'sport = :PORT'` and `lsof -i :PORT` in one), with the container or pod it
//! runs in. No eBPF; without root it says what it could not see.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::registry::{self, Assignment, IanaRange};
use crate::{
    event::{Proto, comm::printable, workload::Workload},
    exhaustion::range::PortRange,
    sinks::events::WorkloadFields,
    sys::{netns, procfs, sock_diag},
    workload::Resolver,
};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub port: u16,
    pub iana_range: IanaRange,
    pub iana_assigned: bool,
    pub iana: Vec<Assignment>,
    /// From this host's /etc/services: (service, proto).
    pub etc_services: Vec<(String, String)>,
    /// Would this host hand it out? One entry per distinct range, with the namespaces that
    /// have it (the host's own first).
    pub ephemeral: Vec<EphemeralAnswer>,
    pub holders: Vec<HeldBy>,
    /// What could not be seen, and why.
    pub limits: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EphemeralAnswer {
    pub low: u16,
    pub high: u16,
    pub reserved: bool,
    pub would_hand_out: bool,
    pub netns: Vec<u32>,
    pub host: bool,
}

#[derive(Debug, Serialize)]
pub struct HeldBy {
    pub netns: u32,
    pub proto: Proto,
    pub state: &'static str,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The owner's cgroup, container and pod; for a socket with no process (TIME-WAIT),
    /// the pod or container whose namespace it is.
    #[serde(flatten)]
    pub workload: WorkloadFields,
}

fn state_name(proto: Proto, state: u8) -> &'static str {
    const TCP: [&str; 13] = [
        "?",
        "ESTAB",
        "SYN-SENT",
        "SYN-RECV",
        "FIN-WAIT-1",
        "FIN-WAIT-2",
        "TIME-WAIT",
        "UNCONN",
        "CLOSE-WAIT",
        "LAST-ACK",
        "LISTEN",
        "CLOSING",
        "NEW-SYN-RECV",
    ];
    match (proto, state) {
        (Proto::Udp, 1) => "ESTAB",
        (Proto::Udp, _) => "UNCONN",
        (Proto::Tcp, s) => TCP.get(usize::from(s)).copied().unwrap_or("?"),
    }
}

/// Prints the answer for `port`: text, or one JSON object.
pub fn run(port: u16, proto: Option<Proto>, json: bool) {
    let explanation = explain(port, proto);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).unwrap_or_default()
        );
    } else {
        print!("{}", render(&explanation));
    }
}

/// The answer for `port`, restricted to `proto` when given.
pub fn explain(port: u16, proto: Option<Proto>) -> Explanation {
    let mut limits = Vec::new();
    let root = unsafe { libc::geteuid() } == 0;
    let mut iana = registry::iana_assignments(port);
    let mut etc = registry::etc_services(
        &std::fs::read_to_string("/etc/services").unwrap_or_default(),
        port,
    );
    if let Some(p) = proto {
        let name = p.to_string();
        iana.retain(|a| a.proto == name);
        etc.retain(|(_, pr)| *pr == name);
    }

    let own = netns::own();
    let mut namespaces: Vec<u32> = netns::all().into_iter().collect();
    namespaces.sort_by_key(|n| (Some(*n) != own, *n));
    let mut by_range: BTreeMap<PortRange, Vec<u32>> = BTreeMap::new();
    let mut unreadable = 0;
    for &ns in &namespaces {
        match PortRange::of_netns(ns) {
            Some(range) => by_range.entry(range).or_default().push(ns),
            None => unreadable += 1,
        }
    }
    if unreadable > 0 {
        limits.push(format!(
            "could not read the ephemeral range of {unreadable} network namespace(s){}",
            if root {
                ""
            } else {
                " (entering them needs root)"
            }
        ));
    }
    let mut ephemeral: Vec<EphemeralAnswer> = by_range
        .into_iter()
        .map(|(range, netns)| {
            let (low, high) = (range.low, range.high);
            EphemeralAnswer {
                low,
                high,
                reserved: (low..=high).contains(&port) && !range.contains(port),
                would_hand_out: range.contains(port),
                host: own.is_some_and(|o| netns.contains(&o)),
                netns,
            }
        })
        .collect();
    ephemeral.sort_by_key(|e| !e.host);

    let owners = procfs::socket_owners();
    let mut resolver = Resolver::new(std::path::Path::new("/"));
    let mut holders = Vec::new();
    let mut blind = 0;
    for &ns in &namespaces {
        let wanted: Vec<u8> = [Proto::Tcp, Proto::Udp]
            .into_iter()
            .filter(|p| proto.is_none_or(|only| only == *p))
            .map(Proto::ipproto)
            .collect();
        // A namespace with any protocol unlisted could hide a holder: it counts as unseen.
        let dumped = sock_diag::dump_namespace(ns, &wanted).filter(|d| d.failed.is_empty());
        let Some(sockets) = dumped.map(|d| d.sockets) else {
            blind += 1;
            continue;
        };
        for (number, s) in sockets.into_iter().filter(|(_, s)| s.sport == port) {
            let Some(p) = Proto::from_ipproto(number) else {
                continue;
            };
            let owner = owners.get(&s.inode);
            let workload = match owner {
                Some(&(pid, _)) => resolver
                    .for_pid(pid)
                    .map(|(id, w)| WorkloadFields::new(id, Some(&w))),
                None => resolver
                    .netns_owner(ns)
                    .map(|w| WorkloadFields::new(Default::default(), Some(&w))),
            };
            holders.push(HeldBy {
                netns: ns,
                proto: p,
                state: state_name(p, s.state),
                laddr: s.src,
                raddr: s.dst,
                rport: s.dport,
                pid: owner.map(|o| o.0),
                comm: owner.map(|o| o.1.clone()),
                workload: workload.unwrap_or_default(),
            });
        }
    }
    if blind > 0 {
        limits.push(format!(
            "could not list the sockets of {blind} network namespace(s){}",
            if root {
                ""
            } else {
                " (entering them needs root)"
            }
        ));
    }
    let unowned = holders.iter().filter(|h| h.pid.is_none()).count();
    if unowned > 0 && !root {
        limits.push(format!(
            "{unowned} socket(s) without a process: other users' processes are visible to root only"
        ));
    }
    Explanation {
        port,
        iana_range: registry::iana_range(port),
        iana_assigned: iana.iter().any(|a| !a.service.is_empty()),
        iana,
        etc_services: etc,
        ephemeral,
        holders,
        limits,
    }
}

pub fn render(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let r = &e.iana_range;
    let _ = writeln!(out, "port {}", e.port);
    let _ = writeln!(
        out,
        "  IANA range:   {} ports, {}-{} (RFC 6335)",
        r.name, r.low, r.high
    );
    if e.iana_assigned {
        for a in e.iana.iter().filter(|a| !a.service.is_empty()) {
            let _ = writeln!(
                out,
                "  IANA:         {}/{}: {}",
                a.service, a.proto, a.description
            );
        }
    } else if e.iana.is_empty() {
        let _ = writeln!(out, "  IANA:         not assigned");
    } else {
        let _ = writeln!(out, "  IANA:         reserved, not assigned");
    }
    for (service, proto) in &e.etc_services {
        let _ = writeln!(out, "  /etc/services: {service}/{proto}");
    }
    for answer in &e.ephemeral {
        let verdict = if answer.would_hand_out {
            "yes, inside".to_string()
        } else if answer.reserved {
            "no, reserved in".to_string()
        } else {
            "no, outside".to_string()
        };
        let whose = if answer.host && answer.netns.len() == 1 {
            "this host's namespace".to_string()
        } else if answer.host {
            format!(
                "this host's and {} other namespace(s)",
                answer.netns.len() - 1
            )
        } else {
            format!("namespace(s) {:?}", answer.netns)
        };
        let _ = writeln!(
            out,
            "  ephemeral:    {verdict} {}-{} ({whose})",
            answer.low, answer.high
        );
    }
    if e.holders.is_empty() {
        let _ = writeln!(out, "  held by:      nobody");
    }
    for h in &e.holders {
        let who = match (&h.comm, h.pid) {
            (Some(comm), Some(pid)) => format!("{}[{pid}]", printable(comm)),
            _ => "?".to_string(),
        };
        // Only what names a workload: a bare cgroup path says little here.
        let named = h.workload.workload.as_deref().filter(|w| w.is_named());
        let who = match named.map(Workload::to_string) {
            Some(workload) => format!("{who} in {workload}"),
            None => who,
        };
        let _ = writeln!(
            out,
            "  held by:      {who} {} {} {} -> {} netns {}",
            h.proto,
            h.state,
            std::net::SocketAddr::new(h.laddr, e.port),
            std::net::SocketAddr::new(h.raddr, h.rport),
            h.netns
        );
    }
    for limit in &e.limits {
        let _ = writeln!(out, "  note:         {limit}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_60068_and_443() {
        let e = explain(60068, None);
        assert_eq!(e.iana_range.name, "dynamic (private)");
        assert!(!e.iana_assigned);
        let text = render(&e);
        assert!(
            text.contains("dynamic (private) ports, 49152-65535"),
            "{text}"
        );
        assert!(text.contains("not assigned"), "{text}");
        assert!(text.contains("ephemeral:"), "{text}");
        let https = render(&explain(443, Some(Proto::Tcp)));
        assert!(https.contains("https/tcp"), "{https}");
        assert!(!https.contains("/udp"), "{https}");
    }

    #[test]
    fn names_tcp_states_like_ss() {
        assert_eq!(state_name(Proto::Tcp, 10), "LISTEN");
        assert_eq!(state_name(Proto::Tcp, 6), "TIME-WAIT");
        assert_eq!(state_name(Proto::Udp, 7), "UNCONN");
        assert_eq!(state_name(Proto::Tcp, 200), "?");
    }
}
