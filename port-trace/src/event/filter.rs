//! Filters. `--netns` and `--proto` choose what is traced at all: the kernel programs skip
//! other namespaces and protocols before they reserve ring buffer space or a table entry,
//! and occupancy stays exact, since each namespace and protocol has its own port space.
//! `--pid`, `--comm` and `--family` choose what is reported (event lines, totals,
//! histograms, metrics): occupancy and warnings still count every socket of the traced
//! namespaces, since a port another process holds fills the range all the same.

use port_trace_common::{FILTER_TCP, FILTER_UDP, KernelFilter, MAX_NETNS_FILTER};

use crate::event::{Event, Family, Proto};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub netns: Vec<u32>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
}

impl Filter {
    /// Whether `event` is to be reported. Each given criterion must hold; a list matches
    /// any of its values.
    pub fn matches(&self, event: &Event) -> bool {
        (self.pids.is_empty() || self.pids.contains(&event.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| event.comm == c.as_str()))
            && (self.netns.is_empty() || self.netns.contains(&event.netns))
            && self.proto.is_none_or(|p| p == event.proto)
            && self.family.is_none_or(|f| f == event.family)
    }

    /// Whether sockets of this namespace and protocol are traced at all.
    pub fn traces(&self, netns: u32, proto: Proto) -> bool {
        (self.netns.is_empty() || self.netns.contains(&netns))
            && self.proto.is_none_or(|p| p == proto)
    }

    /// The part of `traces` the kernel programs apply. More namespaces than the kernel side
    /// holds are left to the daemon (`traces`).
    pub fn kernel(&self) -> KernelFilter {
        let mut filter = KernelFilter {
            protos: match self.proto {
                None => 0,
                Some(Proto::Tcp) => FILTER_TCP,
                Some(Proto::Udp) => FILTER_UDP,
            },
            ..Default::default()
        };
        if self.netns.len() <= MAX_NETNS_FILTER {
            filter.netns[..self.netns.len()].copy_from_slice(&self.netns);
            filter.netns_count = self.netns.len() as u32;
        }
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    fn event() -> Event {
        decode_raw(&raw_connect()).expect("decodes")
    }

    #[test]
    fn the_kernel_gets_netns_and_proto() {
        assert_eq!(Filter::default().kernel(), KernelFilter::default());
        let filter = Filter {
            netns: vec![7, 9],
            proto: Some(Proto::Udp),
            pids: vec![1],
            ..Default::default()
        };
        let kernel = filter.kernel();
        assert_eq!(kernel.netns_count, 2);
        assert_eq!(&kernel.netns[..2], &[7, 9]);
        assert_eq!(kernel.protos, FILTER_UDP);
        assert!(filter.traces(9, Proto::Udp));
        assert!(!filter.traces(9, Proto::Tcp) && !filter.traces(8, Proto::Udp));
        // Too many for the kernel: it traces every namespace and the daemon narrows.
        let many = Filter {
            netns: (1..=MAX_NETNS_FILTER as u32 + 1).collect(),
            ..Default::default()
        };
        assert_eq!(many.kernel().netns_count, 0);
        assert!(many.traces(1, Proto::Tcp) && !many.traces(100, Proto::Tcp));
    }

    #[test]
    fn no_criteria_match_everything() {
        assert!(Filter::default().matches(&event()));
    }

    #[test]
    fn every_criterion_must_hold_and_lists_match_any() {
        let e = event();
        let by_pid = Filter {
            pids: vec![1, e.pid],
            ..Default::default()
        };
        assert!(by_pid.matches(&e));
        let wrong_comm = Filter {
            pids: vec![e.pid],
            comms: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(!wrong_comm.matches(&e));
        let udp = Filter {
            proto: Some(Proto::Udp),
            ..Default::default()
        };
        assert!(!udp.matches(&e));
        let v4_here = Filter {
            family: Some(Family::Ipv4),
            netns: vec![e.netns],
            ..Default::default()
        };
        assert!(v4_here.matches(&e));
    }
}
