//! What the kernel side counts instead of reporting: events it could not deliver.

use serde::Serialize;

/// Why events were lost, summed over CPUs from the kernel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    /// The ring buffer was full: the daemon did not keep up.
    pub ring_buffer_full: u64,
    /// The per-socket table was full (`--max-sockets`): a socket went untracked.
    pub socket_table_full: u64,
    /// The failure ring buffer was full: failed allocations went unreported.
    pub failure_ring_full: u64,
}

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.ring_buffer_full + self.socket_table_full + self.failure_ring_full
    }
}
