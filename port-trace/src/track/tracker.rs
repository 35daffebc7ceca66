//! The tracker: per-socket state between an allocation and its release, and the lifetime
//! that comes out of it. A TCP port released by an active close lives on in a TIME_WAIT
//! socket; the tracker keeps it held until the TIME_WAIT watcher sees that socket gone.

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::{HashMap, HashSet};
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, hash_map::Entry},
    net::IpAddr,
};

use super::Outcome;
use crate::event::{Event, EventType, Proto};

/// How long a TIME_WAIT socket lives (`TCP_TIMEWAIT_LEN`, fixed in the kernel). A parked port
/// is checked at the first poll after its close (did a TIME_WAIT socket take it?) unless the
/// kernel side saw that socket made, then not again until this long after the close, then at
/// every poll until it is gone.
pub const TIME_WAIT_LEN_NS: u64 = 60_000_000_000;

/// How many stale entries the check heap may hold beyond twice the parked ports before it is
/// rebuilt (a rebuild is linear in the parked ports, so this keeps it rare at low counts).
const STALE_CHECKS: usize = 4096;

/// A port held by a TIME_WAIT socket: the release that parked it (at the full socket's
/// close), as an `Origins` id and its time and port, and the allocation time. Compact, like
/// `Open`: TIME_WAIT churn parks a minute of closes (800k at 14k closes/s), and a whole
/// event each (128 bytes a port with the times, where this is 40) was the daemon's cache
/// misses in that churn.
#[derive(Debug, Clone, Copy)]
struct TimeWait {
    closed_ns: u64,
    allocated_ns: u64,
    /// When the watcher should next ask whether the socket is still there.
    next_check_ns: u64,
    origin: u32,
    /// Of the origin, kept here for the counts per namespace.
    netns: u32,
    port: u16,
    explicit: bool,
    /// Seen in a TIME_WAIT check at least once: it really went into TIME_WAIT.
    seen: bool,
}

/// One namespace's parked ports, for the TIME_WAIT watcher.
#[derive(Debug, Default)]
pub struct Parked {
    /// How many ports are parked there.
    pub count: usize,
    /// Those due a check, as the release events that parked them.
    pub due: Vec<Event>,
}

/// A TCP connection's identity in the kernel's tables: (netns, local address and port,
/// remote address and port). No two sockets share one, TIME_WAIT sockets included.
///
/// Kept as five words, 40 bytes (the namespace and two `SocketAddr`s took 68), and hashed as them: TIME_WAIT
/// churn parks a minute of closes, and reading these keys was most of the tracker's cache
/// misses there (the derived hash of two `SocketAddr`s, enum tags and byte slices, was most
/// of its time before). An IPv4 address is kept in its IPv4-mapped IPv6 form, which is the
/// same connection to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FourTuple {
    local_high: u64,
    local_low: u64,
    remote_high: u64,
    remote_low: u64,
    /// netns, local port, remote port.
    rest: u64,
}

fn four_tuple(event: &Event) -> FourTuple {
    let words = |ip: IpAddr| {
        let bits = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        ((bits >> 64) as u64, bits as u64)
    };
    let (local_high, local_low) = words(event.laddr);
    let (remote_high, remote_low) = words(event.raddr);
    FourTuple {
        local_high,
        local_low,
        remote_high,
        remote_low,
        rest: u64::from(event.netns) << 32 | u64::from(event.port) << 16 | u64::from(event.rport),
    }
}

/// What `Tracker::apply` made of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// A port freed on the way, to report before `outcome`: a connect() took over the
    /// connection of a TIME_WAIT socket (tcp_tw_reuse), and the kernel killed that socket to
    /// let it. The release as it was parked, stamped with the take-over's time.
    pub freed: Option<(Event, Outcome)>,
    pub outcome: Outcome,
}

impl From<Outcome> for Applied {
    fn from(outcome: Outcome) -> Self {
        Self {
            freed: None,
            outcome,
        }
    }
}

/// An open socket's port: when it was allocated, and who and where (an `Origins` id). Every
/// release record carries the allocation's who and where; they are kept here only for a
/// release reconciliation finds (its record was lost), compactly.
#[derive(Debug, Clone, Copy)]
struct Open {
    since_ns: u64,
    origin: u32,
    port: u16,
}

/// The who and where of allocations (an allocation event less its time, cookie and port),
/// and of the releases that park ports in TIME_WAIT, shared by the sockets that have them in
/// common: one process connecting to one destination over and over keeps one (two, with
/// TIME_WAIT). So an open socket costs 16 bytes more than its allocation time, not a whole
/// event.
#[derive(Debug, Default)]
struct Origins {
    /// Each origin and how many sockets have it (open, or parked in TIME_WAIT); None where
    /// the slot is free.
    slots: Vec<Option<(Event, u32)>>,
    ids: HashMap<Event, u32>,
    free: Vec<u32>,
    /// Origins no socket has: kept a while (the next allocation is likely the same),
    /// swept when there are many.
    idle: usize,
    /// The last two origins interned anew or found by their hash: churn allocates from one over and
    /// over (and parks from one more), and comparing with them costs less than building,
    /// hashing and dropping a template.
    last: [Option<u32>; 2],
}

/// Idle origins kept before a sweep frees them.
const IDLE_ORIGINS: usize = 4_096;

impl Origins {
    fn template(event: &Event) -> Event {
        let mut template = event.clone();
        template.event = EventType::Alloc;
        template.ts_ns = 0;
        template.cookie = 0;
        template.port = 0;
        template.errno = 0;
        template.time_wait = false;
        template.time_wait_end = false;
        template
    }

    /// Whether `event`'s template would be `template`: equal in every field `template()`
    /// keeps (destructured, so a new field of `Event` must be placed here or there).
    fn same_origin(template: &Event, event: &Event) -> bool {
        let Event {
            event: _,
            ts_ns: _,
            cookie: _,
            port: _,
            errno: _,
            time_wait: _,
            time_wait_end: _,
            pid,
            comm,
            cgroup,
            workload,
            netns,
            proto,
            family,
            kind,
            laddr,
            raddr,
            rport,
            time_wait_made,
            explicit,
        } = event;
        template.pid == *pid
            && template.netns == *netns
            && template.rport == *rport
            && template.cgroup == *cgroup
            && template.raddr == *raddr
            && template.laddr == *laddr
            && template.comm == *comm
            && template.proto == *proto
            && template.family == *family
            && template.kind == *kind
            && template.time_wait_made == *time_wait_made
            && template.explicit == *explicit
            && template.workload == *workload
    }

    /// Takes one more reference to `id`.
    fn take(&mut self, id: u32) -> bool {
        let Some(Some((_, refs))) = self.slots.get_mut(id as usize) else {
            return false;
        };
        if *refs == 0 {
            self.idle -= 1;
        }
        *refs += 1;
        true
    }

    fn intern(&mut self, event: &Event) -> u32 {
        for id in self.last.into_iter().flatten() {
            if let Some(Some((template, _))) = self.slots.get(id as usize)
                && Self::same_origin(template, event)
                && self.take(id)
            {
                return id;
            }
        }
        let template = Self::template(event);
        if let Some(&id) = self.ids.get(&template)
            && self.take(id)
        {
            self.last = [Some(id), self.last[0]];
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[id as usize] = Some((template.clone(), 1));
        self.ids.insert(template, id);
        self.last = [Some(id), self.last[0]];
        id
    }

    fn release(&mut self, id: u32) {
        if let Some(Some((_, refs))) = self.slots.get_mut(id as usize) {
            *refs -= 1;
            if *refs == 0 {
                self.idle += 1;
            }
        }
        if self.idle > IDLE_ORIGINS {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some((template, 0)) = slot {
                self.ids.remove(template);
                *slot = None;
                self.free.push(id as u32);
            }
        }
        self.idle = 0;
    }

    /// The allocation of `cookie` as the kernel reported it.
    fn event(&self, open: &Open, cookie: u64) -> Option<Event> {
        let (template, _) = self.slots.get(open.origin as usize)?.as_ref()?;
        let mut event = template.clone();
        event.ts_ns = open.since_ns;
        event.cookie = cookie;
        event.port = open.port;
        Some(event)
    }

    /// The release of `cookie` that parked its port in TIME_WAIT, as the kernel reported it.
    fn parked(&self, tw: &TimeWait, cookie: u64) -> Option<Event> {
        let (template, _) = self.slots.get(tw.origin as usize)?.as_ref()?;
        let mut event = template.clone();
        event.event = EventType::Release;
        event.ts_ns = tw.closed_ns;
        event.cookie = cookie;
        event.port = tw.port;
        event.time_wait = true;
        Some(event)
    }

    fn template_of(&self, origin: u32) -> Option<&Event> {
        self.slots.get(origin as usize)?.as_ref().map(|(t, _)| t)
    }
}

/// A port tracked as held, as reconciliation judges it against the kernel's sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedPort {
    /// The allocation (open socket) or the release that parked it (TIME_WAIT).
    pub event: Event,
    /// When it was allocated (CLOCK_MONOTONIC).
    pub since_ns: u64,
}

/// Sockets whose port is held, by socket cookie.
#[derive(Debug, Default)]
pub struct Tracker {
    held: HashMap<u64, Open>,
    origins: Origins,
    time_wait: HashMap<u64, TimeWait>,
    /// The ports in `time_wait` by connection, to see a new connect() take one over.
    time_wait_tuples: HashMap<FourTuple, u64>,
    /// When each parked port is next due a check, earliest first: a poll takes the due ones
    /// off the top instead of walking every parked port (a minute of closes: millions at
    /// 100k/s). An entry whose time is no longer its port's (checked since, or released)
    /// is dropped when it comes up.
    checks: BinaryHeap<Reverse<(u64, u64)>>,
    /// Parked ports per namespace, and of them those asked for by number, kept as they come
    /// and go (the watcher's plan and `held` would otherwise count every parked port).
    parked_in: HashMap<u32, usize>,
    parked_explicit: usize,
    /// Of those held, ports asked for by number: tracked for occupancy, not allocations.
    explicit: usize,
}

impl Tracker {
    /// Matches one event against what came before it.
    pub fn apply(&mut self, event: &Event) -> Applied {
        match event.event {
            EventType::Alloc => {
                let freed = if !self.time_wait_tuples.is_empty() && event.proto == Proto::Tcp {
                    self.take_over(event)
                } else {
                    None
                };
                let open = Open {
                    since_ns: event.ts_ns,
                    origin: self.origins.intern(event),
                    port: event.port,
                };
                match self.held.insert(event.cookie, open) {
                    // The same socket again (never from the kernel): the newer one counts.
                    Some(old) => self.origins.release(old.origin),
                    None if event.explicit => self.explicit += 1,
                    None => {}
                }
                Applied {
                    freed,
                    outcome: Outcome::Allocated,
                }
            }
            EventType::Release if event.time_wait_end => self.end_time_wait(event).into(),
            EventType::Release => self.release(event).into(),
            EventType::Fail => Outcome::Failed.into(),
            EventType::BoundConnect => Outcome::BoundConnected.into(),
        }
    }

    fn release(&mut self, event: &Event) -> Outcome {
        match self.take_held(event) {
            Some(since) if event.time_wait => {
                self.time_wait_tuples
                    .insert(four_tuple(event), event.cookie);
                // Made, as the kernel side saw: nothing to ask until it may be gone. Else
                // at the first poll: was one made at all?
                let (seen, next_check_ns) = if event.time_wait_made {
                    (true, event.ts_ns.saturating_add(TIME_WAIT_LEN_NS))
                } else {
                    (false, 0)
                };
                let origin = self.origins.intern(event);
                self.park(
                    event.cookie,
                    TimeWait {
                        closed_ns: event.ts_ns,
                        allocated_ns: since,
                        next_check_ns,
                        origin,
                        netns: event.netns,
                        port: event.port,
                        explicit: event.explicit,
                        seen,
                    },
                );
                Outcome::EnteredTimeWait
            }
            Some(since) => Outcome::Released {
                lifetime_ns: event.ts_ns.saturating_sub(since),
                time_wait_ns: None,
            },
            None => Outcome::UnmatchedRelease,
        }
    }

    fn take_held(&mut self, event: &Event) -> Option<u64> {
        let open = self.held.remove(&event.cookie)?;
        self.origins.release(open.origin);
        if event.explicit {
            self.explicit -= 1;
        }
        Some(open.since_ns)
    }

    /// Every port tracked as held (open sockets and TIME_WAIT), for reconciliation.
    pub fn tracked(&self) -> impl Iterator<Item = TrackedPort> + '_ {
        let open = self.held.iter().filter_map(|(cookie, open)| {
            Some(TrackedPort {
                event: self.origins.event(open, *cookie)?,
                since_ns: open.since_ns,
            })
        });
        let parked = self.time_wait.iter().filter_map(|(cookie, tw)| {
            Some(TrackedPort {
                event: self.origins.parked(tw, *cookie)?,
                since_ns: tw.allocated_ns,
            })
        });
        open.chain(parked)
    }

    /// Each port tracked as held, with its allocation's who and where (open sockets) or the
    /// release's that parked it (TIME_WAIT). No event is built: a template is lent with the
    /// port.
    pub fn for_each_held(&self, f: &mut dyn FnMut(&Event, u16)) {
        let held = self.held.values().map(|open| (open.origin, open.port));
        let parked = self.time_wait.values().map(|tw| (tw.origin, tw.port));
        for (origin, port) in held.chain(parked) {
            if let Some(template) = self.origins.template_of(origin) {
                f(template, port);
            }
        }
    }

    /// The namespaces with a port tracked as held.
    pub fn namespaces(&self) -> HashSet<u32> {
        let open = self
            .held
            .values()
            .filter_map(|open| self.origins.template_of(open.origin))
            .map(|template| template.netns);
        open.chain(self.time_wait.values().map(|tw| tw.netns))
            .collect()
    }

    /// Forgets a port whose socket reconciliation found gone from the kernel (its release
    /// was lost); returns it as a release at `now_ns`, to free in the occupancy model.
    pub fn vanished(&mut self, cookie: u64, now_ns: u64) -> Option<Event> {
        let mut event = match self.held.remove(&cookie) {
            Some(open) => {
                let event = self.origins.event(&open, cookie);
                self.origins.release(open.origin);
                let event = event?;
                if event.explicit {
                    self.explicit -= 1;
                }
                event
            }
            None => {
                let (_, release) = self.unpark(cookie)?;
                self.forget_tuple(&release);
                release
            }
        };
        event.event = EventType::Release;
        event.ts_ns = now_ns;
        Some(event)
    }

    /// A connect() that got the connection of a TIME_WAIT socket (tcp_tw_reuse): the kernel
    /// killed that socket to let it, so its port was freed just before.
    fn take_over(&mut self, event: &Event) -> Option<(Event, Outcome)> {
        let cookie = self.time_wait_tuples.remove(&four_tuple(event))?;
        let (tw, mut freed) = self.unpark(cookie)?;
        let closed_ns = tw.closed_ns;
        freed.ts_ns = event.ts_ns.max(closed_ns);
        let outcome = Outcome::Released {
            lifetime_ns: freed.ts_ns.saturating_sub(tw.allocated_ns),
            time_wait_ns: Some(freed.ts_ns - closed_ns),
        };
        Some((freed, outcome))
    }

    fn forget_tuple(&mut self, release: &Event) {
        let key = four_tuple(release);
        if self.time_wait_tuples.get(&key) == Some(&release.cookie) {
            self.time_wait_tuples.remove(&key);
        }
    }

    /// The kernel saw the TIME_WAIT socket holding a port die (kprobe backend).
    fn end_time_wait(&mut self, event: &Event) -> Outcome {
        match self.unpark(event.cookie) {
            Some((tw, release)) => {
                self.forget_tuple(&release);
                Outcome::Released {
                    lifetime_ns: event.ts_ns.saturating_sub(tw.allocated_ns),
                    time_wait_ns: Some(event.ts_ns.saturating_sub(tw.closed_ns)),
                }
            }
            None => Outcome::UnmatchedRelease,
        }
    }

    /// Parks `cookie`'s port; `tw.origin` is a reference taken for it.
    fn park(&mut self, cookie: u64, tw: TimeWait) {
        *self.parked_in.entry(tw.netns).or_default() += 1;
        self.parked_explicit += usize::from(tw.explicit);
        self.checks.push(Reverse((tw.next_check_ns, cookie)));
        if let Some(old) = self.time_wait.insert(cookie, tw) {
            // The same cookie parked twice (not seen from the kernel): count it once.
            self.uncount(&old);
            self.origins.release(old.origin);
        }
    }

    /// Takes `cookie`'s port out of TIME_WAIT: what was kept, and the release that parked it.
    fn unpark(&mut self, cookie: u64) -> Option<(TimeWait, Event)> {
        let tw = self.time_wait.remove(&cookie)?;
        self.uncount(&tw);
        let release = self.origins.parked(&tw, cookie);
        self.origins.release(tw.origin);
        Some((tw, release?))
    }

    fn uncount(&mut self, tw: &TimeWait) {
        self.parked_explicit -= usize::from(tw.explicit);
        if let Entry::Occupied(mut n) = self.parked_in.entry(tw.netns) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }

    /// The parked ports due a check at `now_ns` (see `TIME_WAIT_LEN_NS`) by namespace, as
    /// the release events that parked them (who, where, and the cookie to ask for), with how
    /// many are parked there. Each is due again at the next poll unless a check settles it
    /// first (`settle_time_wait`).
    pub fn time_wait_due(&mut self, now_ns: u64) -> HashMap<u32, Parked> {
        if self.checks.len() > 2 * self.time_wait.len() + STALE_CHECKS {
            // Mostly entries of ports released since (taken over by a new connect(), say):
            // rebuilt from what is parked, so the heap stays the size of the parked set.
            self.checks = self
                .time_wait
                .iter()
                .map(|(cookie, tw)| Reverse((tw.next_check_ns, *cookie)))
                .collect();
        }
        let mut due = Vec::new();
        while let Some(&Reverse((at, cookie))) = self.checks.peek() {
            if at > now_ns {
                break;
            }
            self.checks.pop();
            let Some(tw) = self.time_wait.get_mut(&cookie) else {
                continue;
            };
            if tw.next_check_ns != at {
                continue;
            }
            tw.next_check_ns = now_ns.saturating_add(1);
            self.checks.push(Reverse((tw.next_check_ns, cookie)));
            due.push(cookie);
        }
        let mut by_netns: HashMap<u32, Parked> = HashMap::default();
        for cookie in due {
            let Some(tw) = self.time_wait.get(&cookie) else {
                continue;
            };
            let Some(release) = self.origins.parked(tw, cookie) else {
                continue;
            };
            let netns = tw.netns;
            let parked = by_netns.entry(netns).or_insert_with(|| Parked {
                count: self.parked_in.get(&netns).copied().unwrap_or(0),
                due: Vec::new(),
            });
            parked.due.push(release);
        }
        by_netns
    }

    /// The cookies of every port parked in each of `namespaces` (for a dump, which settles
    /// them all): one walk of the parked ports.
    pub fn time_wait_in(&self, namespaces: &HashSet<u32>) -> HashMap<u32, Vec<u64>> {
        let mut by_netns: HashMap<u32, Vec<u64>> = HashMap::default();
        for (cookie, tw) in &self.time_wait {
            if namespaces.contains(&tw.netns) {
                by_netns.entry(tw.netns).or_default().push(*cookie);
            }
        }
        by_netns
    }

    /// The namespaces with a port parked in TIME_WAIT.
    pub fn time_wait_namespaces(&self) -> HashSet<u32> {
        self.parked_in.keys().copied().collect()
    }

    /// Settles the parked ports `checked` (cookies) against which of them still exist,
    /// asked at `now_ns`. A port whose socket is gone is released: at `now_ns` if it had been
    /// seen in TIME_WAIT, or at its full socket's close if it never was (no TIME_WAIT socket
    /// was made: RST, or the TIME_WAIT table was full).
    pub fn settle_time_wait(
        &mut self,
        checked: &[u64],
        present: &HashSet<u64>,
        now_ns: u64,
    ) -> Vec<(Event, Outcome)> {
        let mut released = Vec::new();
        for cookie in checked {
            let Some(tw) = self.time_wait.get_mut(cookie) else {
                continue;
            };
            let closed_ns = tw.closed_ns;
            if present.contains(cookie) {
                if !tw.seen {
                    tw.seen = true;
                    tw.next_check_ns = closed_ns + TIME_WAIT_LEN_NS;
                    self.checks.push(Reverse((tw.next_check_ns, *cookie)));
                }
                // Else still there past its time (the kernel's timers run late under
                // load): due again at the next poll, as `time_wait_due` left it.
                continue;
            }
            let Some((tw, mut event)) = self.unpark(*cookie) else {
                continue;
            };
            self.forget_tuple(&event);
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
        }
        released
    }

    /// Ephemeral ports held right now, in TIME_WAIT included.
    pub fn held(&self) -> usize {
        self.held.len() - self.explicit + self.held_time_wait()
    }

    /// Of `held`, the ports in TIME_WAIT.
    pub fn held_time_wait(&self) -> usize {
        self.time_wait.len() - self.parked_explicit
    }
}

#[cfg(test)]
mod tests {
    use port_trace_common::{EVENT_FAIL, EVENT_RELEASE, FLAG_TIME_WAIT, FLAG_TIME_WAIT_MADE};

    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

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
        assert_eq!(tracker.apply(&alloc).outcome, Outcome::Allocated);
        assert_eq!(tracker.held(), 1);
        assert_eq!(
            tracker
                .apply(&release(alloc.cookie, alloc.ts_ns + 5_000, 0))
                .outcome,
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
            tracker.apply(&release(999, 10, 0)).outcome,
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
            tracker
                .apply(&release(alloc.cookie, alloc.ts_ns + 2, 0))
                .outcome,
            Outcome::UnmatchedRelease
        );
    }

    /// The cookies due a check at `now_ns`, in any namespace.
    fn due(tracker: &mut Tracker, now_ns: u64) -> Vec<u64> {
        let parked = tracker.time_wait_due(now_ns);
        parked
            .values()
            .flat_map(|p| p.due.iter().map(|e| e.cookie))
            .collect()
    }

    #[test]
    fn time_wait_holds_the_port_until_its_socket_is_gone() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        let cookie = alloc.cookie;
        tracker.apply(&alloc);
        let closed = alloc.ts_ns + 1_000;
        let outcome = tracker
            .apply(&release(cookie, closed, FLAG_TIME_WAIT))
            .outcome;
        assert_eq!(outcome, Outcome::EnteredTimeWait);
        assert_eq!(tracker.held(), 1, "TIME_WAIT still holds the port");

        // Checked at once: it is there, so it did go into TIME_WAIT.
        assert_eq!(due(&mut tracker, closed + 10), [cookie]);
        let present = HashSet::from_iter([cookie]);
        assert!(
            tracker
                .settle_time_wait(&[cookie], &present, closed + 10)
                .is_empty()
        );
        // Then left alone until TIME_WAIT could be over, also when a dump of the whole
        // namespace sees it meanwhile.
        assert!(
            tracker
                .settle_time_wait(&[cookie], &present, closed + 20)
                .is_empty()
        );
        assert!(due(&mut tracker, closed + 30_000_000_000).is_empty());
        let over = closed + TIME_WAIT_LEN_NS;
        assert_eq!(due(&mut tracker, over), [cookie]);
        // Still there (the kernel's timers run late under load): asked at every poll.
        assert!(
            tracker
                .settle_time_wait(&[cookie], &present, over)
                .is_empty()
        );
        assert_eq!(due(&mut tracker, over + 1), [cookie]);

        let gone = over + 500_000_000;
        let done = tracker.settle_time_wait(&[cookie], &HashSet::default(), gone);
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].1,
            Outcome::Released {
                lifetime_ns: gone - alloc.ts_ns,
                time_wait_ns: Some(gone - closed)
            }
        );
        assert_eq!(done[0].0.ts_ns, gone);
        assert_eq!(tracker.held(), 0);
        assert!(due(&mut tracker, u64::MAX).is_empty());
    }

    #[test]
    fn a_time_wait_socket_the_kernel_saw_made_is_asked_about_only_at_its_end() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        let closed = alloc.ts_ns + 1_000;
        tracker.apply(&release(
            alloc.cookie,
            closed,
            FLAG_TIME_WAIT | FLAG_TIME_WAIT_MADE,
        ));
        assert_eq!(tracker.held(), 1, "held through TIME_WAIT");
        assert!(due(&mut tracker, closed + 1).is_empty(), "no first check");
        let end = closed + TIME_WAIT_LEN_NS;
        assert_eq!(due(&mut tracker, end), [alloc.cookie]);
        // Gone a second later: released then, held through TIME_WAIT, not at the close.
        let gone = end + 1_000_000_000;
        let done = tracker.settle_time_wait(&[alloc.cookie], &HashSet::default(), gone);
        assert_eq!(
            done[0].1,
            Outcome::Released {
                lifetime_ns: gone - alloc.ts_ns,
                time_wait_ns: Some(gone - closed)
            }
        );
    }

    #[test]
    fn only_the_ports_asked_about_are_settled() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        tracker.apply(&release(alloc.cookie, 2_000, FLAG_TIME_WAIT));
        // An answer about other sockets says nothing about this one.
        assert!(
            tracker
                .settle_time_wait(&[7, 8], &HashSet::default(), 3_000)
                .is_empty()
        );
        assert_eq!(tracker.held(), 1);
    }

    #[test]
    fn no_time_wait_socket_means_released_at_close() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        tracker.apply(&release(alloc.cookie, alloc.ts_ns + 700, FLAG_TIME_WAIT));
        let done =
            tracker.settle_time_wait(&[alloc.cookie], &HashSet::default(), alloc.ts_ns + 9_999);
        assert_eq!(
            done[0].1,
            Outcome::Released {
                lifetime_ns: 700,
                time_wait_ns: Some(0)
            }
        );
    }

    #[test]
    fn ports_taken_over_leave_no_pile_of_checks_behind() {
        // tcp_tw_reuse churn: every TIME_WAIT port is taken over by the next connect()
        // long before its check, so what is parked stays small, and so must the checks.
        let mut tracker = Tracker::default();
        let mut ts = 1_000_000;
        for cookie in 1..=50_000u64 {
            let mut raw = raw_connect();
            raw.cookie = cookie;
            raw.ts_ns = ts;
            tracker.apply(&decode_raw(&raw).expect("decodes"));
            ts += 1_000;
            tracker.apply(&release(cookie, ts, FLAG_TIME_WAIT | FLAG_TIME_WAIT_MADE));
            ts += 1_000;
            if cookie % 10_000 == 0 {
                // A poll: nothing is due yet (made TIME_WAITs wait for their end).
                assert!(due(&mut tracker, ts).is_empty());
            }
        }
        assert_eq!(tracker.held(), 1, "only the last connection's port");
        assert_eq!(tracker.held_time_wait(), 1);
        assert!(
            tracker.checks.len() <= 2 * tracker.time_wait.len() + STALE_CHECKS,
            "{} checks kept for {} parked ports",
            tracker.checks.len(),
            tracker.time_wait.len()
        );
        // The one left is still asked about at its end, once.
        assert_eq!(due(&mut tracker, ts + TIME_WAIT_LEN_NS).len(), 1);
    }

    #[test]
    fn a_connect_that_takes_over_a_time_wait_connection_frees_its_port_first() {
        let mut tracker = Tracker::default();
        let first = alloc();
        tracker.apply(&first);
        let closed = first.ts_ns + 1_000;
        tracker.apply(&release(first.cookie, closed, FLAG_TIME_WAIT));

        // Another connection from another port: no take-over.
        let mut raw = raw_connect();
        raw.cookie = 43;
        raw.lport = 40002;
        raw.ts_ns = closed + 100;
        let other = tracker.apply(&decode_raw(&raw).expect("decodes"));
        assert!(other.freed.is_none());
        assert_eq!(tracker.held(), 2);

        // The same four-tuple (tcp_tw_reuse): the kernel killed the TIME_WAIT socket.
        let mut raw = raw_connect();
        raw.cookie = 44;
        raw.ts_ns = closed + 5_000;
        let reuse = decode_raw(&raw).expect("decodes");
        let applied = tracker.apply(&reuse);
        assert_eq!(applied.outcome, Outcome::Allocated);
        let freed: Vec<_> = applied.freed.into_iter().collect();
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].0.cookie, first.cookie);
        assert_eq!(freed[0].0.ts_ns, closed + 5_000);
        assert_eq!(
            freed[0].1,
            Outcome::Released {
                lifetime_ns: 6_000,
                time_wait_ns: Some(5_000)
            }
        );
        assert_eq!(
            tracker.held(),
            2,
            "the two open connections, not the freed port"
        );
        assert!(due(&mut tracker, u64::MAX).is_empty());
        // Reported once: the same connection again takes nothing over.
        let mut raw = raw_connect();
        raw.cookie = 45;
        raw.ts_ns = closed + 6_000;
        tracker.apply(&release(44, closed + 5_500, 0));
        assert!(
            tracker
                .apply(&decode_raw(&raw).expect("decodes"))
                .freed
                .is_none(),
            "reported once"
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
            tracker.apply(&end).outcome,
            Outcome::Released {
                lifetime_ns: 61_000,
                time_wait_ns: Some(60_000)
            }
        );
        assert_eq!(tracker.held(), 0);
        assert_eq!(tracker.apply(&end).outcome, Outcome::UnmatchedRelease);
    }

    #[test]
    fn explicit_ports_are_matched_but_not_counted_as_held() {
        let mut tracker = Tracker::default();
        let mut raw = raw_connect();
        raw.flags = port_trace_common::FLAG_EXPLICIT;
        let explicit = decode_raw(&raw).expect("decodes");
        assert_eq!(tracker.apply(&explicit).outcome, Outcome::Allocated);
        assert_eq!(tracker.held(), 0);
        let mut release = release(explicit.cookie, explicit.ts_ns + 5, 0);
        release.explicit = true;
        assert!(matches!(
            tracker.apply(&release).outcome,
            Outcome::Released { .. }
        ));
        assert_eq!(tracker.held(), 0);
    }

    #[test]
    fn a_vanished_port_is_forgotten_and_given_back_as_its_allocation() {
        let mut tracker = Tracker::default();
        let first = alloc();
        tracker.apply(&first);
        // The same process to the same destination from another port: one origin for both.
        let mut raw = raw_connect();
        raw.cookie = 77;
        raw.lport = 40_077;
        raw.ts_ns = 9;
        let second = decode_raw(&raw).expect("decodes");
        tracker.apply(&second);
        assert_eq!(tracker.origins.ids.len(), 1, "shared who and where");
        let mut tracked: Vec<_> = tracker.tracked().collect();
        tracked.sort_by_key(|t| t.event.cookie);
        assert_eq!(tracked[0].event, first);
        assert_eq!(tracked[1].event, second);
        assert_eq!(tracked[1].since_ns, 9);
        assert_eq!(tracker.namespaces(), HashSet::from_iter([first.netns]));

        let gone = tracker.vanished(77, 1_000).expect("tracked");
        assert_eq!(gone.event, EventType::Release);
        assert_eq!(
            (gone.ts_ns, gone.port, gone.pid),
            (1_000, 40_077, second.pid)
        );
        assert_eq!(tracker.held(), 1);
        assert!(tracker.vanished(77, 1_001).is_none(), "forgotten once");
        // A release arriving after all is unmatched, and changes nothing.
        assert_eq!(
            tracker.apply(&release(77, 2_000, 0)).outcome,
            Outcome::UnmatchedRelease
        );
        assert_eq!(tracker.held(), 1);
    }

    #[test]
    fn a_vanished_time_wait_port_frees_its_connection_too() {
        let mut tracker = Tracker::default();
        let first = alloc();
        tracker.apply(&first);
        tracker.apply(&release(first.cookie, 100, FLAG_TIME_WAIT));
        assert_eq!(tracker.tracked().count(), 1);
        assert!(tracker.vanished(first.cookie, 200).is_some());
        assert_eq!(tracker.held(), 0);
        assert!(due(&mut tracker, u64::MAX).is_empty());
        // A new connection on the same four-tuple takes nothing over.
        let mut raw = raw_connect();
        raw.cookie = 5;
        assert!(
            tracker
                .apply(&decode_raw(&raw).expect("decodes"))
                .freed
                .is_none()
        );
    }

    #[test]
    fn idle_origins_are_swept() {
        let mut tracker = Tracker::default();
        for i in 0..=(IDLE_ORIGINS as u64 + 1) {
            let mut raw = raw_connect();
            raw.cookie = i + 1;
            raw.pid = i as u32; // a new origin each
            let event = decode_raw(&raw).expect("decodes");
            tracker.apply(&event);
            tracker.apply(&release(i + 1, 10, 0));
        }
        assert!(tracker.origins.ids.len() <= IDLE_ORIGINS, "swept");
        assert_eq!(tracker.origins.ids.len(), tracker.origins.idle);
        // Freed slots are used again.
        let mut raw = raw_connect();
        raw.cookie = 1;
        tracker.apply(&decode_raw(&raw).expect("decodes"));
        assert!(tracker.origins.slots.len() <= IDLE_ORIGINS + 2);
        assert_eq!(tracker.tracked().count(), 1);
    }

    /// A parked port keeps an origin id, not its release: the release comes back whole, as
    /// the kernel sent it, to the watcher, to reconciliation and at its end; and the origins
    /// it took are given back.
    #[test]
    fn a_parked_port_gives_back_its_release_whole() {
        let mut tracker = Tracker::default();
        let alloc = alloc();
        tracker.apply(&alloc);
        // A release whose who and where differ from the allocation's (another pid, say):
        // it, not the allocation, is what was parked.
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.ts_ns = 9_000;
        raw.pid = 8;
        raw.flags = FLAG_TIME_WAIT;
        let parked = decode_raw(&raw).expect("decodes");
        assert_eq!(tracker.apply(&parked).outcome, Outcome::EnteredTimeWait);
        let due = tracker.time_wait_due(10_000);
        assert_eq!(due[&parked.netns].due, vec![parked.clone()]);
        let tracked: Vec<TrackedPort> = tracker.tracked().collect();
        assert_eq!(
            tracked,
            vec![TrackedPort {
                event: parked.clone(),
                since_ns: alloc.ts_ns
            }]
        );
        let mut held = Vec::new();
        tracker.for_each_held(&mut |event, port| held.push((event.pid, port)));
        assert_eq!(held, vec![(8, parked.port)]);

        let released = tracker.settle_time_wait(&[parked.cookie], &HashSet::default(), 20_000);
        let mut expected = parked.clone();
        expected.ts_ns = 9_000; // never seen in TIME_WAIT: released at its close
        assert_eq!(
            released,
            vec![(
                expected,
                Outcome::Released {
                    lifetime_ns: 8_000,
                    time_wait_ns: Some(0)
                }
            )]
        );
        assert_eq!(tracker.held(), 0);
        assert!(
            tracker
                .origins
                .slots
                .iter()
                .flatten()
                .all(|(_, refs)| *refs == 0),
            "every origin given back"
        );
    }

    /// The fast path's comparison says what comparing whole templates says, field by field;
    /// and an allocation from the last origin shares it, one from another does not.
    #[test]
    fn same_origin_agrees_with_templates() {
        use std::{net::IpAddr, sync::Arc};

        use crate::event::{AllocKind, Family, workload::Workload};
        let base = alloc();
        let changes: [fn(&mut Event); 20] = [
            |e| e.event = EventType::Release,
            |e| e.ts_ns += 1,
            |e| e.cookie += 1,
            |e| e.port += 1,
            |e| e.errno = 99,
            |e| e.time_wait = true,
            |e| e.time_wait_end = true,
            |e| e.pid += 1,
            |e| e.comm = "other".into(),
            |e| e.cgroup.0 += 1,
            |e| e.workload = Some(Arc::new(Workload::default())),
            |e| e.netns += 1,
            |e| e.proto = Proto::Udp,
            |e| e.family = Family::Ipv6,
            |e| e.kind = AllocKind::Bind,
            |e| e.laddr = IpAddr::from([127, 0, 0, 2]),
            |e| e.raddr = IpAddr::from([10, 1, 2, 4]),
            |e| e.rport += 1,
            |e| e.time_wait_made = true,
            |e| e.explicit = true,
        ];
        let template = Origins::template(&base);
        for (i, change) in changes.iter().enumerate() {
            let mut event = base.clone();
            change(&mut event);
            assert_eq!(
                Origins::same_origin(&template, &event),
                template == Origins::template(&event),
                "change {i}"
            );
        }

        let mut origins = Origins::default();
        let first = origins.intern(&base);
        let mut later = base.clone();
        later.cookie += 1;
        later.port += 1;
        assert_eq!(origins.intern(&later), first, "the last origin, shared");
        let mut other = base.clone();
        other.pid += 1;
        let second = origins.intern(&other);
        assert_ne!(second, first);
        assert_eq!(origins.intern(&base), first, "found by its hash again");
        assert_eq!(origins.slots[first as usize].as_ref().map(|s| s.1), Some(3));
    }

    #[test]
    fn failures_hold_nothing() {
        let mut tracker = Tracker::default();
        let mut raw = raw_connect();
        raw.event = EVENT_FAIL;
        raw.errno = 99;
        assert_eq!(
            tracker.apply(&decode_raw(&raw).expect("decodes")).outcome,
            Outcome::Failed
        );
        assert_eq!(tracker.held(), 0);
    }
}
