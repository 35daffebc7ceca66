//! The per-socket table, the ring buffers, and the lost-event counters every program shares.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use port_trace_common::{
    EVENT_ALLOC, EVENT_BOUND_CONNECT, EVENT_FAIL, EVENT_RELEASE, EVENT_TIME_WAIT_END,
    FLAG_EXPLICIT, FLAG_TIME_WAIT, FLAG_TIME_WAIT_MADE, IPPROTO_TCP, KIND_BIND,
    LOST_FAILURE_RING_FULL, LOST_REASONS, LOST_RINGBUF_FULL, LOST_TABLE_FULL, MAP_OP_KINDS,
    OP_IN_FLIGHT_INSERT, OP_IN_FLIGHT_LOOKUP, OP_RING_RECORDS, OP_SOCKETS_DELETE,
    OP_SOCKETS_INSERT, OP_SOCKETS_LOOKUP, PortEvent, TCP_CLOSING, TCP_FIN_WAIT1, TCP_FIN_WAIT2,
};

/// Where a tracked socket's port stands.
pub const PENDING: u8 = 0;
pub const HELD: u8 = 1;
/// A UDP socket with no port yet and no request for one: its first send with a destination
/// autobinds it (sendmsg4/6 then sees the port).
pub const FRESH: u8 = 2;

/// What the kernel remembers about one socket, keyed by socket cookie: the alloc record, and
/// where its port stands (`PENDING`, `HELD`, `FRESH`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockEntry {
    pub event: PortEvent,
    pub state: u8,
    // Padding as integers, not `[u8; 7]`: zeroing a byte array costs a `memset` call. And
    // as fields, not a tuple: a tuple is 4-aligned, which would leave 4 more bytes of hidden
    // padding in every one of `--max-sockets` slots (112 bytes instead of 104).
    pub _pad8: u8,
    pub _pad16: u16,
    pub _pad32: u32,
}

// `--max-sockets`'s help prices a slot (176 bytes, from the map's memlock); this keeps the
// entry from growing hidden padding again.
const _: () = assert!(core::mem::size_of::<SockEntry>() == core::mem::size_of::<PortEvent>() + 8);

/// A port request in flight in one thread's bind()/connect()/listen()/send, settled when the
/// call returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    pub cookie: u64,
    /// The `struct sock *`, to read the chosen port at exit.
    pub sk: u64,
    /// `KIND_*` of the request: nested kernel calls settle only their own kind.
    pub kind: u8,
    pub _pad: (u8, u16, u32),
}

/// Sized by the daemon at load time (`--ring-buffer-kib`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Failed allocations only: a flood of allocs and releases cannot crowd them out.
#[map]
static FAILURES: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// A plain hash, not LRU: every tracked socket reaches CLOSE or release, which deletes its
/// entry, so nothing goes stale; and when the table is full a new socket is refused and
/// counted (`LOST_TABLE_FULL`), where an LRU would evict an old one silently. Sized by the
/// daemon at load time (`--max-sockets`).
#[map]
static SOCKETS: HashMap<u64, SockEntry> = HashMap::with_max_entries(131_072, 0);

/// By pid_tgid: at most one bind()/connect() per thread is in flight. Each thread keeps its
/// entry (`kind` `SETTLED` between requests), rewritten in place: an insert and a delete per
/// request cost more than the request's whole program. LRU, so the entries of threads that
/// are gone make room for new ones.
#[map]
static IN_FLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(16_384, 0);

/// `InFlight::kind` of a thread with no request in flight.
const SETTLED: u8 = 0;

/// How many threads have a request in flight, system-wide (slot 0). The syscall exits read
/// it before looking for this thread's request: every connect() and bind() on the host
/// passes them, and most have nothing in flight (a TCP connect() never does), so most cost
/// no table lookup. A request whose entry the LRU evicted is never settled and leaves the
/// count one too high for good: that costs lookups, never a missed request.
#[map]
static REQUESTS_IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

/// Adds `delta` to the count of requests in flight, atomically: threads on every CPU
/// change it. (The bpf target's `AtomicU64` has no `fetch_add`; the intrinsic compiles to
/// the instruction, an atomic add whose result is unused, which every kernel has.)
#[inline(always)]
fn add_in_flight(delta: u64) {
    if let Some(slot) = REQUESTS_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: an Array slot is valid and 8-aligned for the map's life.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// Written by the daemon before load (its hidden `--count-map-ops`, for the benchmark); 0 in
/// the object file, and then the verifier, which sees the value in frozen read-only data,
/// drops the counting below.
#[unsafe(no_mangle)]
static COUNT_MAP_OPS: u32 = 0;

/// Map operations by map and ring records (`OP_*`), per CPU, when `COUNT_MAP_OPS` is set.
#[map]
static MAP_OPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_OP_KINDS, 0);

#[inline(always)]
fn count_op(op: u32) {
    // Volatile, as for `kernel::OFFSETS`.
    if unsafe { core::ptr::read_volatile(&COUNT_MAP_OPS) } == 0 {
        return;
    }
    if let Some(counter) = MAP_OPS.get_ptr_mut(op) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *counter += 1 };
    }
}

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASONS, 0);

pub fn count_lost(reason: u32) {
    if let Some(counter) = LOST.get_ptr_mut(reason) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *counter += 1 };
    }
}

/// Reserves a record in `ring`, copies `event` into it (from the socket table, mostly),
/// applies `edit`, and submits it. Written in the record itself: a copy of the event on the
/// stack would cost the copy, and the stack is 512 bytes for all of a program's frames
/// together (on kernels before 6.14). `batched`: wake the daemon only once a batch is
/// waiting (see `wakeup`); else as the kernel does by default (when the daemon had caught
/// up).
#[inline(always)]
fn submit_to(
    ring: &RingBuf,
    event: *const PortEvent,
    lost: u32,
    batched: bool,
    edit: impl FnOnce(&mut PortEvent),
) {
    count_op(OP_RING_RECORDS);
    let Some(mut slot) = ring.reserve::<PortEvent>(0) else {
        count_lost(lost);
        return;
    };
    let record = slot.as_mut_ptr();
    // SAFETY: `event` is valid for this run and `record` is the reserved slot, the size of
    // a PortEvent; they do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(event, record, 1);
        edit(&mut *record);
    }
    let flags = if batched { wakeup(ring) } else { 0 };
    slot.submit(flags);
}

/// Wake the daemon only when a batch is waiting (a sixteenth of the ring): it drains on a
/// short timer anyway (`DRAIN_INTERVAL` in the daemon), so at 100k events a second it wakes
/// a few dozen times instead of 100k.
#[inline(always)]
fn wakeup(ring: &RingBuf) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA) >= ring.query(BPF_RB_RING_SIZE) / 16 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// From the kernel's uapi (enum in linux/bpf.h); aya-ebpf's bindings keep them private.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// Remembers a socket whose port the kernel is about to choose (`PENDING`), or a fresh UDP
/// socket (`FRESH`). Sockets `--netns`/`--proto` leave out are never tracked: they cost no
/// table entry and no ring buffer record.
///
/// Never inlined: where the caller's event is mostly constant zeros, the compiler would copy
/// it into the entry with the linker's byte-by-byte `memset` (see `kernel::write_blank`).
#[inline(never)]
pub fn begin(cookie: u64, event: &PortEvent, state: u8) {
    if !crate::kernel::traced(event) {
        return;
    }
    let mut event = *event;
    // The event names the socket by its cookie unless the caller chose a name (kprobes).
    if event.cookie == 0 {
        event.cookie = cookie;
    }
    let entry = SockEntry {
        event,
        state,
        _pad8: 0,
        _pad16: 0,
        _pad32: 0,
    };
    insert(cookie, &entry);
}

#[inline(always)]
fn insert(key: u64, entry: &SockEntry) {
    count_op(OP_SOCKETS_INSERT);
    // By reference: the helper copies the entry into the table from where it is.
    if SOCKETS.insert(key, entry, 0).is_err() {
        count_lost(LOST_TABLE_FULL);
    }
}

/// As `begin`, for a socket already in the table: its entry is rewritten in place.
pub fn restart(entry: *mut SockEntry, cookie: u64, event: &PortEvent, state: u8) {
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let entry = unsafe { &mut *entry };
    entry.event = *event;
    entry.event.cookie = cookie;
    entry.state = state;
}

pub fn lookup(cookie: u64) -> Option<*mut SockEntry> {
    count_op(OP_SOCKETS_LOOKUP);
    SOCKETS.get_ptr_mut(cookie)
}

/// The kernel chose `lport` for a pending socket: it is held from now on.
pub fn allocated(entry: *mut SockEntry, lport: u16) {
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let entry = unsafe { &mut *entry };
    entry.state = HELD;
    entry.event.ts_ns = unsafe { bpf_ktime_get_ns() };
    entry.event.lport = lport;
    entry.event.event = EVENT_ALLOC;
    submit_to(&EVENTS, &entry.event, LOST_RINGBUF_FULL, true, |_| {});
}

/// A TCP socket with a port already is connecting to the peer `sk` names now: if that port
/// came from bind() to port 0, report it (bind before connect: the port is held for every
/// destination). Its entry keeps the allocation as it was: the release is the bind's.
pub fn bound_connect(entry: *mut SockEntry, sk: *const u8) {
    // SAFETY: `entry` points into SOCKETS, valid for this program run.
    let entry = unsafe { &*entry };
    let held_from_bind = entry.state == HELD
        && entry.event.kind == KIND_BIND
        && entry.event.proto == IPPROTO_TCP
        && entry.event.flags & FLAG_EXPLICIT == 0;
    if !held_from_bind {
        return;
    }
    submit_to(&EVENTS, &entry.event, LOST_RINGBUF_FULL, true, |event| {
        event.event = EVENT_BOUND_CONNECT;
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
        crate::kernel::read_peer(sk, &crate::kernel::offsets(), event);
    });
}

/// The socket is gone or its port is free: report the release if the port was held.
pub fn end(cookie: u64, entry: *mut SockEntry, flags: u8) {
    // SAFETY: `entry` points into SOCKETS, valid for this program run; read before the
    // entry is deleted.
    let entry = unsafe { &*entry };
    if entry.state == HELD {
        released(entry, flags);
    }
    remove(cookie);
}

/// Reports the release of a held port, its allocation's record with `flags` added.
#[inline(always)]
fn released(entry: &SockEntry, flags: u8) {
    submit_to(&EVENTS, &entry.event, LOST_RINGBUF_FULL, true, |event| {
        event.event = EVENT_RELEASE;
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
        event.flags |= flags;
    });
}

/// A TCP socket reached CLOSE from `oldstate`: its port is free, or, after an active close
/// (from FIN_WAIT1, FIN_WAIT2 or CLOSING), handed to a TIME_WAIT socket, which the daemon
/// watches to see the port really freed. `time_wait_made`: whether the caller saw the
/// kernel make that TIME_WAIT socket (None: it could not tell; the daemon then asks).
pub fn tcp_closed(cookie: u64, entry: *mut SockEntry, oldstate: u32, time_wait_made: Option<bool>) {
    let flags = match (oldstate as u8, time_wait_made) {
        (TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING, None) => FLAG_TIME_WAIT,
        (TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING, Some(true)) => {
            FLAG_TIME_WAIT | FLAG_TIME_WAIT_MADE
        }
        // No TIME_WAIT socket: a RST in FIN_WAIT, or the kernel's TIME_WAIT table full.
        _ => 0,
    };
    end(cookie, entry, flags);
}

/// The kernel could not find a port for a pending socket.
pub fn failed(cookie: u64, entry: *mut SockEntry, errno: u32) {
    // SAFETY: as above. Failures are rare and urgent: the daemon wakes for each.
    let event = unsafe { &(*entry).event };
    submit_to(&FAILURES, event, LOST_FAILURE_RING_FULL, false, |event| {
        event.event = EVENT_FAIL;
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
        event.errno = errno;
    });
    remove(cookie);
}

pub fn forget(cookie: u64) {
    remove(cookie);
}

/// Deletes a socket's entry. Every caller looked the entry up in this same run, so the delete
/// fails only if a program on another CPU deleted it in between (both saw the socket end):
/// the entry is gone either way, which is all the caller wants, so there is nothing to count.
#[inline(always)]
fn remove(cookie: u64) {
    count_op(OP_SOCKETS_DELETE);
    let _ = SOCKETS.remove(cookie);
}

/// Notes this thread's port request, to settle at the syscall's exit.
pub fn in_flight(cookie: u64, sk: u64, kind: u8) {
    let key = bpf_get_current_pid_tgid();
    count_op(OP_IN_FLIGHT_LOOKUP);
    if let Some(slot) = IN_FLIGHT.get_ptr_mut(key) {
        // SAFETY: `slot` points into IN_FLIGHT, valid for this program run.
        unsafe {
            if (*slot).kind == SETTLED {
                noted();
            }
            (*slot).cookie = cookie;
            (*slot).sk = sk;
            (*slot).kind = kind;
        }
        return;
    }
    let entry = InFlight {
        cookie,
        sk,
        kind,
        _pad: (0, 0, 0),
    };
    count_op(OP_IN_FLIGHT_INSERT);
    if IN_FLIGHT.insert(key, entry, 0).is_err() {
        count_lost(LOST_TABLE_FULL);
        return;
    }
    noted();
}

/// One more request in flight (`REQUESTS_IN_FLIGHT`).
#[inline(always)]
fn noted() {
    add_in_flight(1);
}

/// Whether any thread may have a request in flight: if not, there is nothing to look up.
#[inline(always)]
fn any_in_flight() -> bool {
    match REQUESTS_IN_FLIGHT.get_ptr(0) {
        // SAFETY: as in `add_in_flight`. A plain load (an aligned 8-byte load is whole; the
        // bpf target cannot select an atomic one): a thread always sees its own add, and
        // another thread's request is not this thread's to find.
        Some(slot) => unsafe { core::ptr::read_volatile(slot) != 0 },
        None => true,
    }
}

/// This thread's request in flight, if any, without a table lookup when no thread has one.
#[inline(always)]
fn this_threads_slot() -> Option<*mut InFlight> {
    if !any_in_flight() {
        return None;
    }
    count_op(OP_IN_FLIGHT_LOOKUP);
    IN_FLIGHT.get_ptr_mut(bpf_get_current_pid_tgid())
}

/// This thread's port request, if one is in flight; it is settled now either way.
pub fn take_in_flight() -> Option<InFlight> {
    let slot = this_threads_slot()?;
    // SAFETY: `slot` points into IN_FLIGHT, valid for this program run.
    let found = unsafe { *slot };
    if found.kind == SETTLED {
        return None;
    }
    unsafe { (*slot).kind = SETTLED };
    // Minus one: the add wraps.
    add_in_flight(u64::MAX);
    Some(found)
}

/// This thread's request in flight, left in place.
pub fn peek_in_flight() -> Option<InFlight> {
    // SAFETY: `slot` points into IN_FLIGHT, valid for this program run.
    let found = unsafe { *this_threads_slot()? };
    (found.kind != SETTLED).then_some(found)
}

/// Takes this thread's request in flight if it is of `kind`.
pub fn take_in_flight_of(kind: u8) -> Option<InFlight> {
    match peek_in_flight() {
        Some(found) if found.kind == kind => take_in_flight(),
        _ => None,
    }
}

/// The socket handed its port to a TIME_WAIT socket: report the release (flagged, so the
/// daemon keeps the port held) and re-key the entry by the TIME_WAIT socket's id, whose end
/// `time_wait_end` reports.
pub fn moved_to_time_wait(id: u64, tw_id: u64, flags: u8) {
    let Some(entry) = lookup(id) else {
        return;
    };
    // SAFETY: `entry` points into SOCKETS, valid for this program run; read before the
    // entry is deleted.
    let entry = unsafe { &*entry };
    if entry.state == HELD {
        released(entry, flags);
        insert(tw_id, entry);
    }
    remove(id);
}

/// A TIME_WAIT socket died: its port is free now.
pub fn time_wait_end(tw_id: u64) {
    let Some(entry) = lookup(tw_id) else {
        return;
    };
    // SAFETY: as above.
    let event = unsafe { &(*entry).event };
    submit_to(&EVENTS, event, LOST_RINGBUF_FULL, true, |event| {
        event.event = EVENT_TIME_WAIT_END;
        event.ts_ns = unsafe { bpf_ktime_get_ns() };
    });
    remove(tw_id);
}
