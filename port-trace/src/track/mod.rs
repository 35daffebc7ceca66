//! Tracking: per-socket state between an allocation and its release.
//!
//! - `tracker`: matches releases to allocations; the lifetime that comes out; TIME_WAIT ports
//!   parked until their socket is gone.
//! - `time_wait`: the watcher that asks sock_diag whether parked TIME_WAIT sockets still exist
//!   (tracepoint backend; the kprobe backend sees them die).
//! - `snapshot`: sockets that held ports before tracing started.
//! - `reconcile`: which tracked ports the kernel no longer has a socket for (their release
//!   was lost), and when to look.

pub mod reconcile;
pub mod snapshot;
pub mod time_wait;
pub mod tracker;

pub use tracker::Tracker;

use crate::event::Event;

/// Every socket holding a port now, as who and where (its allocation, or the release that
/// parked it in TIME_WAIT) and the port. Walked only to name who holds a scope's ports, for
/// a warning or a finding: so the occupancy model keeps no per-socket who (it cost two hash
/// updates per event and ~100 bytes per held socket).
pub trait HeldSockets {
    fn for_each_held(&self, f: &mut dyn FnMut(&Event, u16));
}

/// Events as the sockets they allocated, each with its own port (the stages' tests).
impl HeldSockets for Vec<Event> {
    fn for_each_held(&self, f: &mut dyn FnMut(&Event, u16)) {
        for event in self {
            f(event, event.port);
        }
    }
}

/// What the pipeline holds: the tracker's open and TIME_WAIT sockets, and the start-up
/// snapshot's sockets that are still there.
#[derive(Clone, Copy)]
pub struct Held<'a> {
    pub tracker: &'a Tracker,
    pub snapshot: &'a snapshot::Snapshot,
}

impl HeldSockets for Held<'_> {
    fn for_each_held(&self, f: &mut dyn FnMut(&Event, u16)) {
        self.tracker.for_each_held(f);
        for event in self.snapshot.events() {
            f(event, event.port);
        }
    }
}

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
    /// A port reconciliation found free: the kernel has no socket for it any more, and its
    /// release was never seen (lost). How long it was held is not known.
    Reconciled,
    Failed,
    /// A socket holding a port from bind(0) connected: what is held does not change.
    BoundConnected,
}
