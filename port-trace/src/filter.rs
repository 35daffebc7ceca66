//! Filters: which events are reported (event lines, totals, histograms). Occupancy and
//! warnings still see every socket: a namespace's range is shared, and a filter cannot make
//! it any less full.

use crate::events::{Event, Family, Proto};

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
            && (self.comms.is_empty() || self.comms.contains(&event.comm))
            && (self.netns.is_empty() || self.netns.contains(&event.netns))
            && self.proto.is_none_or(|p| p == event.proto)
            && self.family.is_none_or(|f| f == event.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{decode_raw, tests::raw_connect};

    fn event() -> Event {
        decode_raw(&raw_connect()).expect("decodes")
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
