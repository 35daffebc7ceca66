//! The TIME_WAIT watcher: asks sock_diag whether the TIME_WAIT sockets of parked ports still
//! exist (each soon after its close, then from 60 s on; by lookups or a dump, whichever is
//! cheaper), and lets the tracker release the ones that are gone. Nothing in the kernel fires
//! when a TIME_WAIT socket dies, so this is observed, not assumed (a port is held 60 s after an active close, or longer under load,
//! or not at all after a RST).

use std::{
    collections::{HashMap, hash_map::Entry},
    path::PathBuf,
};

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

/// A sock_diag socket in one namespace, and the path it was entered by (None: our own).
struct Watched {
    diag: SockDiag,
    path: Option<PathBuf>,
}

#[derive(Default)]
pub struct TimeWaitWatcher {
    /// One sock_diag socket per namespace with parked ports, made the first time it is
    /// needed and closed once none is parked there or the namespace is gone: the socket keeps
    /// its namespace alive in the kernel, so one kept for good would leak a namespace (and an
    /// fd) per short-lived container.
    diag: HashMap<u32, Watched>,
}

impl TimeWaitWatcher {
    fn socket_for(&mut self, inode: u32) -> Option<&mut SockDiag> {
        let slot = match self.diag.entry(inode) {
            Entry::Occupied(slot) => return Some(&mut slot.into_mut().diag),
            Entry::Vacant(slot) => slot,
        };
        let (made, path) = if netns::own() == Some(inode) {
            (SockDiag::new(), None)
        } else {
            let path = netns::find(inode)?;
            (SockDiag::in_netns(&path), Some(path))
        };
        match made {
            Ok(diag) => Some(&mut slot.insert(Watched { diag, path }).diag),
            Err(err) => {
                warn!("cannot watch TIME_WAIT sockets in netns {inode}: {err}");
                None
            }
        }
    }

    /// Closes the sockets of namespaces that are gone: no process, thread or /run/netns name
    /// opens them any more (our socket alone keeps such a namespace, and its TIME_WAIT
    /// sockets, alive). One stat per namespace while the path it was entered by still names
    /// it; a search of /proc only when that path is gone.
    /// Returns the namespaces found gone.
    fn forget_gone_namespaces(&mut self) -> Vec<u32> {
        let mut gone = Vec::new();
        self.diag.retain(|&inode, watched| {
            let Some(path) = &watched.path else {
                return true;
            };
            if netns::inode_of(path) == Some(inode) {
                return true;
            }
            match netns::locate(inode) {
                Ok(Some(found)) => {
                    watched.path = Some(found);
                    true
                }
                Ok(None) => {
                    debug!("netns {inode} is gone: closing its sock_diag socket");
                    gone.push(inode);
                    false
                }
                // Could not look (out of fds, say): not evidence of anything; next time.
                Err(_) => true,
            }
        });
        gone
    }

    /// Releases the ports whose TIME_WAIT socket is gone. Per namespace, whichever costs
    /// less: exact lookups of the ports due a check, or one dump of every TIME_WAIT socket
    /// there (then every parked port is settled). A lookup costs about as much as
    /// `DUMP_BREAK_EVEN` sockets of a dump, and the namespace holds at least as many TIME_WAIT
    /// sockets as we have parked there. So a long run at a steady close rate (60 s of ports
    /// parked, two checks each) looks up, and a burst of fresh closes dumps.
    pub fn poll(&mut self, tracker: &mut Tracker) -> Vec<(Event, Outcome)> {
        let now = monotonic_ns();
        // A namespace that is gone took its TIME_WAIT sockets with it: all settled now.
        let mut gone: HashSet<u32> = self.forget_gone_namespaces().into_iter().collect();
        let mut dumps = gone.clone();
        let mut plans = Vec::new();
        for (inode, parked) in tracker.time_wait_due(now) {
            if dumps.contains(&inode) {
                continue;
            }
            if parked.due.len() * DUMP_BREAK_EVEN >= parked.count {
                dumps.insert(inode);
            } else {
                let ids = parked.due.iter().map(connection).collect();
                let cookies = parked.due.iter().map(|r| r.cookie).collect();
                plans.push((inode, Plan::Lookup { cookies, ids }));
            }
        }
        // Every namespace with a port parked is watched from the first poll on, due or not:
        // its socket is how `forget_gone_namespaces` sees it go, one stat a poll (the
        // ports the kernel saw go into TIME_WAIT are not due for a minute).
        for inode in tracker.time_wait_namespaces() {
            if !self.diag.contains_key(&inode)
                && self.socket_for(inode).is_none()
                && netns::is_gone(inode)
            {
                gone.insert(inode);
                dumps.insert(inode);
            }
        }
        if !dumps.is_empty() {
            plans.extend(
                tracker
                    .time_wait_in(&dumps)
                    .into_iter()
                    .map(|(inode, cookies)| (inode, Plan::Dump(cookies))),
            );
        }
        let mut released = Vec::new();
        for (inode, plan) in plans {
            let socket = if gone.contains(&inode) {
                None
            } else {
                self.socket_for(inode)
            };
            let present: HashSet<u64> = match socket {
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
                None if gone.contains(&inode) || netns::is_gone(inode) => {
                    debug!("netns {inode} is gone; its TIME_WAIT sockets with it");
                    HashSet::default()
                }
                // Not entered, but not known to be gone (a failed search, no socket could
                // be made): nothing is settled this time.
                None => continue,
            };
            let checked = match &plan {
                Plan::Dump(all) => all,
                Plan::Lookup { cookies, .. } => cookies,
            };
            released.extend(tracker.settle_time_wait(checked, &present, now));
        }
        // No work pending where nothing is parked: close those namespaces' sockets.
        let parked = tracker.time_wait_namespaces();
        self.diag.retain(|inode, _| parked.contains(inode));
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
