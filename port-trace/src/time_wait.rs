//! The TIME_WAIT watcher: asks sock_diag which TIME_WAIT sockets still exist, in every
//! network namespace where the tracker has ports in TIME_WAIT, and lets the tracker release
//! the ones that are gone. Nothing in the kernel fires when a TIME_WAIT socket dies, so this
//! is observed, not assumed (a port is held 60 s after an active close, or longer under load,
//! or not at all after a RST).

use std::collections::{HashMap, HashSet, hash_map::Entry};

use tracing::{debug, warn};

use crate::{
    events::Event,
    netns,
    sock_diag::SockDiag,
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

    /// Releases the ports whose TIME_WAIT socket is gone.
    pub fn poll(&mut self, tracker: &mut Tracker) -> Vec<(Event, Outcome)> {
        let mut released = Vec::new();
        for inode in tracker.time_wait_netns() {
            let present = match self.socket_for(inode).map(|d| d.time_wait_cookies()) {
                Some(Ok(cookies)) => cookies,
                Some(Err(err)) => {
                    warn!("TIME_WAIT dump in netns {inode} failed: {err}");
                    self.diag.remove(&inode);
                    continue;
                }
                // No process is left in that namespace, so no socket is either.
                None => {
                    debug!("netns {inode} is gone; its TIME_WAIT sockets with it");
                    HashSet::new()
                }
            };
            released.extend(tracker.settle_time_wait(inode, &present, monotonic_ns()));
        }
        released
    }
}
