//! The per-socket table, the ring buffer, and the lost-event counters every program shares.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use port_trace_common::{
    EVENT_ALLOC, EVENT_RELEASE, LOST_REASONS, LOST_RINGBUF_FULL, LOST_TABLE_FULL, PortEvent,
};

/// What the kernel remembers about one socket, keyed by socket cookie: the alloc record, and
/// whether the port is chosen yet (a connect/listen/bind(0) is pending until then).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockEntry {
    pub event: PortEvent,
    pub held: u8,
    pub _pad: [u8; 7],
}

/// Sized by the daemon at load time (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// A plain hash, not LRU: every tracked socket reaches CLOSE or release, which deletes its
/// entry, so nothing goes stale; and when the table is full a new socket is refused and
/// counted (`LOST_TABLE_FULL`), where an LRU would evict an old one silently. Sized by the
/// daemon at load time (`--max-sockets`).
#[map]
static SOCKETS: HashMap<u64, SockEntry> = HashMap::with_max_entries(131_072, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASONS, 0);

pub fn count_lost(reason: u32) {
    if let Some(counter) = LOST.get_ptr_mut(reason) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *counter += 1 };
    }
}

pub fn submit(event: &PortEvent) {
    match EVENTS.reserve::<PortEvent>(0) {
        Some(mut slot) => {
            slot.write(*event);
            slot.submit(0);
        }
        None => count_lost(LOST_RINGBUF_FULL),
    }
}

/// Remembers a socket whose port the kernel is about to choose.
pub fn begin(cookie: u64, event: &PortEvent) {
    let mut event = *event;
    event.cookie = cookie;
    let entry = SockEntry {
        event,
        held: 0,
        _pad: [0; 7],
    };
    if SOCKETS.insert(cookie, entry, 0).is_err() {
        count_lost(LOST_TABLE_FULL);
    }
}

pub fn lookup(cookie: u64) -> Option<*mut SockEntry> {
    SOCKETS.get_ptr_mut(cookie)
}

/// The kernel chose `lport` for a pending socket: it is held from now on.
pub fn allocated(entry: *mut SockEntry, lport: u16) {
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let entry = unsafe { &mut *entry };
    entry.held = 1;
    entry.event.ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.event.lport = lport;
    entry.event.event = EVENT_ALLOC;
    submit(&entry.event);
}

/// The socket is gone or its port is free: report the release if the port was held.
pub fn end(cookie: u64, entry: *mut SockEntry) {
    // SAFETY: as above; copied out before the entry is deleted.
    let entry = unsafe { *entry };
    let _ = SOCKETS.remove(cookie);
    if entry.held == 1 {
        let mut event = entry.event;
        event.event = EVENT_RELEASE;
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
        submit(&event);
    }
}

pub fn forget(cookie: u64) {
    let _ = SOCKETS.remove(cookie);
}
