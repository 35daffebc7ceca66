//! The TIME_WAIT watcher: asks sock_diag whether the TIME_WAIT sockets of parked ports still
//! exist (each soon after its close, then from 60 s on; by lookups or a dump, whichever is
//! cheaper), and lets the tracker release the ones that are gone. Nothing in the kernel fires
//! when a TIME_WAIT socket dies, so this is observed, not assumed (a port is held 60 s after an active close, or longer under load,
//! or not at all after a RST).

use std::collections::{HashMap, hash_map::Entry};

use foldhash::HashSet;

use tracing::{debug, warn};

use super::{Outcome, Tracker};
use crate::{
    event::Event,
    sys::{
        clock::monotonic_ns,
        netns,
        sock_diag::{ConnectionId, SockDiag},
    },
};

#[derive(Default)]
pub struct TimeWaitWatcher {
    /// One sock_diag socket per namespace, made the first time it is needed.
    diag: HashMap<u32, SockDiag>,
}

impl TimeWaitWatcher {
    fn socket_for(&mut self, inode: u32) -> Option<&mut SockDiag> {
        let slot = match self.diag.entry(inode) {
            Entry::Occupied(slot) => return Some(slot.into_mut()),
            Entry::Vacant(slot) => slot,
        };
        let made = if netns::own() == Some(inode) {
            SockDiag::new()
        } else {
            SockDiag::in_netns(&netns::find(inode)?)
        };
        match made {
            Ok(diag) => Some(slot.insert(diag)),
            Err(err) => {
                warn!("cannot watch TIME_WAIT sockets in netns {inode}: {err}");
                None
            }
        }
    }

    /// Releases the ports whose TIME_WAIT socket is gone. Per namespace, whichever costs
    /// less: exact lookups of the ports due a check, or one dump of every TIME_WAIT socket
    /// there (then every parked port is settled). A lookup costs about as much as
    /// `DUMP_BREAK_EVEN` sockets of a dump, and the namespace holds at least as many TIME_WAIT
    /// sockets as we have parked there. So a long run at a steady close rate (60 s of ports
    /// parked, two checks each) looks up, and a burst of fresh closes dumps.
    pub fn poll(&mut self, tracker: &mut Tracker) -> Vec<(Event, Outcome)> {
        let now = monotonic_ns();
        let mut plans = Vec::new();
        for (inode, parked) in tracker.time_wait_parked(now) {
            if parked.due.is_empty() {
                continue;
            }
            let plan = if parked.due.len() * DUMP_BREAK_EVEN >= parked.all.len() {
                Plan::Dump(parked.all)
            } else {
                Plan::Lookup {
                    cookies: parked.due.iter().map(|r| r.cookie).collect(),
                    ids: parked.due.iter().map(|r| connection(r)).collect(),
                }
            };
            plans.push((inode, plan));
        }
        let mut released = Vec::new();
        for (inode, plan) in plans {
            let present: HashSet<u64> = match self.socket_for(inode) {
                Some(diag) => {
                    let answer = match &plan {
                        Plan::Dump(_) => diag.time_wait_cookies(),
                        Plan::Lookup { cookies, ids } => diag
                            .still_there(ids)
                            .map(|found| found.into_iter().map(|i| cookies[i]).collect()),
                    };
                    match answer {
                        Ok(present) => present,
                        Err(err) => {
                            warn!("TIME_WAIT check in netns {inode} failed: {err}");
                            self.diag.remove(&inode);
                            continue;
                        }
                    }
                }
                // No process is left in that namespace, so no socket is either.
                None => {
                    debug!("netns {inode} is gone; its TIME_WAIT sockets with it");
                    HashSet::default()
                }
            };
            let checked = match &plan {
                Plan::Dump(all) => all,
                Plan::Lookup { cookies, .. } => cookies,
            };
            released.extend(tracker.settle_time_wait(checked, &present, now));
        }
        released
    }
}

/// How many sockets of a dump cost about as much as one exact lookup (measured: ~1 us per
/// socket dumped, ~4 us per lookup, most of it a recv per answer).
const DUMP_BREAK_EVEN: usize = 4;

/// How one namespace's parked ports are checked this time.
enum Plan {
    /// Every parked cookie, against one dump of the TIME_WAIT sockets.
    Dump(Vec<u64>),
    /// The ports due a check (their cookies and connections), one lookup each.
    Lookup {
        cookies: Vec<u64>,
        ids: Vec<ConnectionId>,
    },
}

fn connection(release: &Event) -> ConnectionId {
    ConnectionId {
        local: release.local(),
        remote: release.remote(),
        cookie: release.cookie,
    }
}
