//! The tracker: per-socket state between an allocation and its release, and the lifetime
//! that comes out of it.

use std::collections::HashMap;

use crate::events::{Event, EventType};

/// What an event meant once matched against what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allocated,
    /// The port is free again after `lifetime_ns`.
    Released {
        lifetime_ns: u64,
    },
    /// A release whose allocation was never seen (lost, or before port-trace started).
    UnmatchedRelease,
    Failed,
}

/// Sockets whose port is held, by socket cookie. Only the allocation time is kept: every
/// release record carries the allocation's who and where, so 16 bytes a socket suffice.
#[derive(Debug, Default)]
pub struct Tracker {
    held: HashMap<u64, u64>,
}

impl Tracker {
    pub fn apply(&mut self, event: &Event) -> Outcome {
        match event.event {
            EventType::Alloc => {
                self.held.insert(event.cookie, event.ts_ns);
                Outcome::Allocated
            }
            EventType::Release => match self.held.remove(&event.cookie) {
                Some(since) => Outcome::Released {
                    lifetime_ns: event.ts_ns.saturating_sub(since),
                },
                None => Outcome::UnmatchedRelease,
            },
            EventType::Fail => Outcome::Failed,
        }
    }

    /// Ports held right now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use port_trace_common::EVENT_RELEASE;

    use super::*;
    use crate::events::{decode_raw, tests::raw_connect};

    fn release(cookie: u64, ts_ns: u64) -> Event {
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.cookie = cookie;
        raw.ts_ns = ts_ns;
        decode_raw(&raw).expect("decodes")
    }

    #[test]
    fn lifetime_runs_from_alloc_to_release() {
        let mut tracker = Tracker::default();
        let alloc = decode_raw(&raw_connect()).expect("decodes");
        assert_eq!(tracker.apply(&alloc), Outcome::Allocated);
        assert_eq!(tracker.held(), 1);
        assert_eq!(
            tracker.apply(&release(alloc.cookie, alloc.ts_ns + 5_000)),
            Outcome::Released { lifetime_ns: 5_000 }
        );
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn a_release_without_its_alloc_is_unmatched_and_forgets_nothing() {
        let mut tracker = Tracker::default();
        tracker.apply(&decode_raw(&raw_connect()).expect("decodes"));
        assert_eq!(tracker.apply(&release(999, 10)), Outcome::UnmatchedRelease);
        assert_eq!(tracker.held(), 1);
    }

    #[test]
    fn a_release_is_matched_once() {
        let mut tracker = Tracker::default();
        let alloc = decode_raw(&raw_connect()).expect("decodes");
        tracker.apply(&alloc);
        tracker.apply(&release(alloc.cookie, alloc.ts_ns + 1));
        assert_eq!(
            tracker.apply(&release(alloc.cookie, alloc.ts_ns + 2)),
            Outcome::UnmatchedRelease
        );
    }
}
