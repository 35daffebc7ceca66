//! The tracker: per-socket state between an allocation and its release, and the lifetime
//! that comes out of it. A TCP port released by an active close lives on in a TIME_WAIT
//! socket; the tracker keeps it held until the TIME_WAIT watcher sees that socket gone.

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::HashMap;
use std::collections::HashSet;

use crate::events::{Event, EventType};

/// What an event meant once matched against what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allocated,
    /// The port is free again after `lifetime_ns`, of which `time_wait_ns` in TIME_WAIT
    /// (`None` for releases that never went through TIME_WAIT).
    Released {
        lifetime_ns: u64,
        time_wait_ns: Option<u64>,
    },
    /// The full socket closed actively; the port stays held until its TIME_WAIT socket goes.
    EnteredTimeWait,
    /// A release whose allocation was never seen (lost, or before port-trace started).
    UnmatchedRelease,
    Failed,
}

/// A port held by a TIME_WAIT socket: the release event as the kernel sent it (at the full
/// socket's close) and the allocation time.
#[derive(Debug, Clone)]
struct TimeWait {
    release: Event,
    allocated_ns: u64,
    /// Seen in a TIME_WAIT dump at least once: it really went into TIME_WAIT.
    seen: bool,
}

/// Sockets whose port is held, by socket cookie. Only the allocation time is kept for open
/// sockets: every release record carries the allocation's who and where.
#[derive(Debug, Default)]
pub struct Tracker {
    held: HashMap<u64, u64>,
    time_wait: HashMap<u64, TimeWait>,
    /// Of those held, ports asked for by number: tracked for occupancy, not allocations.
    explicit: usize,
}

impl Tracker {
    pub fn apply(&mut self, event: &Event) -> Outcome {
        match event.event {
            EventType::Alloc => {
                if self.held.insert(event.cookie, event.ts_ns).is_none() && event.explicit {
                    self.explicit += 1;
                }
                Outcome::Allocated
            }
            EventType::Release if event.time_wait_end => self.end_time_wait(event),
            EventType::Release => match self.take_held(event) {
                Some(since) if event.time_wait => {
                    self.time_wait.insert(
                        event.cookie,
                        TimeWait {
                            release: event.clone(),
                            allocated_ns: since,
                            seen: false,
                        },
                    );
                    Outcome::EnteredTimeWait
                }
                Some(since) => Outcome::Released {
                    lifetime_ns: event.ts_ns.saturating_sub(since),
                    time_wait_ns: None,
                },
                None => Outcome::UnmatchedRelease,
            },
            EventType::Fail => Outcome::Failed,
        }
    }

    fn take_held(&mut self, event: &Event) -> Option<u64> {
        let since = self.held.remove(&event.cookie);
        if since.is_some() && event.explicit {
            self.explicit -= 1;
        }
        since
    }

    /// The kernel saw the TIME_WAIT socket holding a port die (kprobe backend).
    fn end_time_wait(&mut self, event: &Event) -> Outcome {
        match self.time_wait.remove(&event.cookie) {
            Some(tw) => Outcome::Released {
                lifetime_ns: event.ts_ns.saturating_sub(tw.allocated_ns),
                time_wait_ns: Some(event.ts_ns.saturating_sub(tw.release.ts_ns)),
            },
            None => Outcome::UnmatchedRelease,
        }
    }

    /// Network namespaces with ports in TIME_WAIT: the ones the watcher must look at.
    pub fn time_wait_netns(&self) -> HashSet<u32> {
        self.time_wait.values().map(|t| t.release.netns).collect()
    }

    /// Settles the TIME_WAIT ports of `netns` against a dump of the TIME_WAIT cookies that
    /// still exist there, taken at `now_ns`. A port whose socket is gone is released: at
    /// `now_ns` if it had been seen in TIME_WAIT, or at its full socket's close if it never
    /// was (no TIME_WAIT socket was made: RST, or the TIME_WAIT table was full).
    pub fn settle_time_wait(
        &mut self,
        netns: u32,
        present: &HashSet<u64>,
        now_ns: u64,
    ) -> Vec<(Event, Outcome)> {
        let mut released = Vec::new();
        self.time_wait.retain(|cookie, tw| {
            if tw.release.netns != netns {
                return true;
            }
            if present.contains(cookie) {
                tw.seen = true;
                return true;
            }
            let closed_ns = tw.release.ts_ns;
            let mut event = tw.release.clone();
            let outcome = if tw.seen {
                event.ts_ns = now_ns.max(closed_ns);
                Outcome::Released {
                    lifetime_ns: event.ts_ns.saturating_sub(tw.allocated_ns),
                    time_wait_ns: Some(event.ts_ns - closed_ns),
                }
            } else {
                Outcome::Released {
                    lifetime_ns: closed_ns.saturating_sub(tw.allocated_ns),
                    time_wait_ns: Some(0),
                }
            };
            released.push((event, outcome));
            false
        });
        released
    }

    /// Ephemeral ports held right now, in TIME_WAIT included.
    pub fn held(&self) -> usize {
        let time_wait = self
            .time_wait
            .values()
            .filter(|t| !t.release.explicit)
            .count();
        self.held.len() - self.explicit + time_wait
    }
}

#[cfg(test)]
mod tests {
    use port_trace_common::{EVENT_FAIL, EVENT_RELEASE, FLAG_TIME_WAIT};

    use super::*;
    use crate::events::{decode_raw, tests::raw_connect};

    fn release(cookie: u64, ts_ns: u64, flags: u8) -> Event {
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.cookie = cookie;
        raw.ts_ns = ts_ns;
        raw.flags = flags;
        decode_raw(&raw).expect("decodes")
    }

    fn alloc() -> Event {
        decode_raw(&raw_connect()).expect("decodes")
    }

    #[test]
    fn lifetime_runs_from_alloc_to_release() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        assert_eq!(tracker.apply(&alloc), Outcome::Allocated);
        assert_eq!(tracker.held(), 1);
        assert_eq!(
            tracker.apply(&release(alloc.cookie, alloc.ts_ns + 5_000, 0)),
            Outcome::Released {
                lifetime_ns: 5_000,
                time_wait_ns: None
            }
        );
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn a_release_without_its_alloc_is_unmatched_and_forgets_nothing() {
        let mut tracker = Tracker::default();
        tracker.apply(&alloc());
        assert_eq!(
            tracker.apply(&release(999, 10, 0)),
            Outcome::UnmatchedRelease
        );
        assert_eq!(tracker.held(), 1);
    }

    #[test]
    fn a_release_is_matched_once() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        tracker.apply(&release(alloc.cookie, alloc.ts_ns + 1, 0));
        assert_eq!(
            tracker.apply(&release(alloc.cookie, alloc.ts_ns + 2, 0)),
            Outcome::UnmatchedRelease
        );
    }

    #[test]
    fn time_wait_holds_the_port_until_its_socket_is_gone() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        let closed = alloc.ts_ns + 1_000;
        let outcome = tracker.apply(&release(alloc.cookie, closed, FLAG_TIME_WAIT));
        assert_eq!(outcome, Outcome::EnteredTimeWait);
        assert_eq!(tracker.held(), 1, "TIME_WAIT still holds the port");
        assert_eq!(tracker.time_wait_netns(), HashSet::from([alloc.netns]));

        let present = HashSet::from([alloc.cookie]);
        assert!(
            tracker
                .settle_time_wait(alloc.netns, &present, closed + 10)
                .is_empty()
        );
        // Another namespace's dump says nothing about this one.
        assert!(
            tracker
                .settle_time_wait(1, &HashSet::new(), closed + 20)
                .is_empty()
        );

        let done = tracker.settle_time_wait(alloc.netns, &HashSet::new(), closed + 60_000);
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].1,
            Outcome::Released {
                lifetime_ns: 61_000,
                time_wait_ns: Some(60_000)
            }
        );
        assert_eq!(done[0].0.ts_ns, closed + 60_000);
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn no_time_wait_socket_means_released_at_close() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        tracker.apply(&release(alloc.cookie, alloc.ts_ns + 700, FLAG_TIME_WAIT));
        let done = tracker.settle_time_wait(alloc.netns, &HashSet::new(), alloc.ts_ns + 9_999);
        assert_eq!(
            done[0].1,
            Outcome::Released {
                lifetime_ns: 700,
                time_wait_ns: Some(0)
            }
        );
    }

    #[test]
    fn the_kernel_can_report_the_end_of_time_wait() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        let closed = alloc.ts_ns + 1_000;
        tracker.apply(&release(alloc.cookie, closed, FLAG_TIME_WAIT));
        let mut raw = raw_connect();
        raw.event = port_trace_common::EVENT_TIME_WAIT_END;
        raw.ts_ns = closed + 60_000;
        let end = decode_raw(&raw).expect("decodes");
        assert_eq!(end.event, EventType::Release);
        assert_eq!(
            tracker.apply(&end),
            Outcome::Released {
                lifetime_ns: 61_000,
                time_wait_ns: Some(60_000)
            }
        );
        assert_eq!(tracker.held(), 0);
        assert_eq!(tracker.apply(&end), Outcome::UnmatchedRelease);
    }

    #[test]
    fn explicit_ports_are_matched_but_not_counted_as_held() {
        let mut tracker = Tracker::default();
        let mut raw = raw_connect();
        raw.flags = port_trace_common::FLAG_EXPLICIT;
        let explicit = decode_raw(&raw).expect("decodes");
        assert_eq!(tracker.apply(&explicit), Outcome::Allocated);
        assert_eq!(tracker.held(), 0);
        let mut release = release(explicit.cookie, explicit.ts_ns + 5, 0);
        release.explicit = true;
        assert!(matches!(tracker.apply(&release), Outcome::Released { .. }));
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn failures_hold_nothing() {
        let mut tracker = Tracker::default();
        let mut raw = raw_connect();
        raw.event = EVENT_FAIL;
        raw.errno = 99;
        assert_eq!(
            tracker.apply(&decode_raw(&raw).expect("decodes")),
            Outcome::Failed
        );
        assert_eq!(tracker.held(), 0);
    }
}
