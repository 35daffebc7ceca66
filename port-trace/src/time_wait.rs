//! The TIME_WAIT watcher: asks sock_diag whether the TIME_WAIT sockets of parked ports still
//! exist (each soon after its close, then from 60 s on), and lets the tracker release the
//! ones that are gone. Nothing in the kernel fires when a TIME_WAIT socket dies, so this
//! is observed, not assumed (a port is held 60 s after an active close, or longer under load,
//! or not at all after a RST).

use std::collections::{HashMap, hash_map::Entry};

use foldhash::HashSet;

use tracing::{debug, warn};

use crate::{
    events::Event,
    netns,
    sock_diag::{ConnectionId, SockDiag},
    tracker::{Outcome, Tracker},
};

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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

    /// Releases the ports whose TIME_WAIT socket is gone, asking only about the ports due
    /// a check (`tracker::TIME_WAIT_LEN_NS`): a host with 100k TIME_WAIT sockets costs a
    /// lookup per closed connection, not a dump of 100k sockets a second.
    pub fn poll(&mut self, tracker: &mut Tracker) -> Vec<(Event, Outcome)> {
        let now = monotonic_ns();
        let mut due: HashMap<u32, (Vec<u64>, Vec<ConnectionId>)> = HashMap::new();
        for release in tracker.time_wait_due(now) {
            let (cookies, ids) = due.entry(release.netns).or_default();
            cookies.push(release.cookie);
            ids.push(ConnectionId {
                src: release.laddr,
                sport: release.port,
                dst: release.raddr,
                dport: release.rport,
                cookie: release.cookie,
            });
        }
        let mut released = Vec::new();
        for (inode, (cookies, ids)) in due {
            let present: HashSet<u64> = match self.socket_for(inode).map(|d| d.still_there(&ids)) {
                Some(Ok(found)) => found.into_iter().map(|i| cookies[i]).collect(),
                Some(Err(err)) => {
                    warn!("TIME_WAIT lookups in netns {inode} failed: {err}");
                    self.diag.remove(&inode);
                    continue;
                }
                // No process is left in that namespace, so no socket is either.
                None => {
                    debug!("netns {inode} is gone; its TIME_WAIT sockets with it");
                    HashSet::default()
                }
            };
            released.extend(tracker.settle_time_wait(&cookies, &present, now));
        }
        released
    }
}
