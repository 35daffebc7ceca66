//! Occupancy: how full each network namespace's ephemeral range is, the way the kernel counts.
//!
//! - A port chosen by bind(0), listen() or UDP is held *exclusively* in its namespace: no
//!   other socket gets it from the range.
//! - A port chosen by TCP connect() need only be unique per destination (local address,
//!   remote address, remote port): the same port serves many destinations at once.
//!
//! So there are two kinds of scope. The *namespace* scope is what bind(0), listen() and UDP
//! draw from: capacity is the range minus reserved ports, and every port in use by any socket
//! counts against it. A *destination* scope is what connect() to one destination draws from:
//! capacity is the range minus reserved ports minus the exclusively held ones, and only the
//! ports connected to that destination count against it. TIME_WAIT sockets hold their port
//! until they are gone (the tracker decides when a port is released).

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::HashMap;
use std::collections::{BTreeMap, hash_map::Entry};

use super::{
    forecast::Pace,
    port_counts::PortCounts,
    range::PortRange,
    scope::{Destination, Holder, Scope, ScopeKey, Usage},
};
use crate::{
    event::{AllocKind, Event, Proto},
    track::HeldSockets,
};

/// Ports held in one scope: how many sockets hold each port. `in_range` counts the distinct
/// ports inside the namespace's range as they come and go, so asking how full a scope is
/// costs nothing per event (it used to walk every held port). Who holds them is not kept
/// here: the held sockets are walked when a warning or finding names them (`top_holders`).
#[derive(Debug, Default)]
struct Held {
    ports: PortCounts,
    in_range: u32,
    /// Of `in_range`, those in the half connect() tries first.
    in_connect_half: u32,
}

impl Held {
    /// Returns whether `port` was not held here before.
    fn add(&mut self, port: u16, range: &PortRange) -> bool {
        let new = self.ports.add(port);
        if new && range.contains(port) {
            self.in_range += 1;
            if range.tried_first(port) {
                self.in_connect_half += 1;
            }
        }
        new
    }

    /// Returns whether `port` is no longer held here.
    fn remove(&mut self, port: u16, range: &PortRange) -> bool {
        let gone = self.ports.remove(port);
        if gone && range.contains(port) {
            self.in_range -= 1;
            if range.tried_first(port) {
                self.in_connect_half -= 1;
            }
        }
        gone
    }

    fn contains(&self, port: u16) -> bool {
        self.ports.contains(port)
    }

    fn recount(&mut self, range: &PortRange) {
        self.in_range = self.ports.ports().filter(|p| range.contains(*p)).count() as u32;
        self.in_connect_half = self
            .ports
            .ports()
            .filter(|p| range.in_connect_half(*p))
            .count() as u32;
    }

    fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// One destination's ports and the pace they are taken at, under one key: an event
/// updates both with one look-up.
#[derive(Debug, Default)]
struct DestinationScope {
    held: Held,
    pace: Pace,
}

#[derive(Debug, Default)]
struct ProtoSpace {
    exclusive: Held,
    /// Every connect()ed port, whatever the destination.
    connected: Held,
    by_destination: HashMap<Destination, DestinationScope>,
    /// Destinations with nothing held, kept (with their pace) until there are more of them
    /// than `EMPTY_DESTINATIONS_KEPT` and than held ones: connect + close churn empties and
    /// refills one destination per connection, and removing it each time cost two hash
    /// operations and its map's allocation.
    empty_destinations: usize,
    /// The namespace scope's pace.
    pace: Pace,
    /// Distinct ports in range used by any socket, exclusive or connected.
    used_in_range: u32,
}

/// Emptied destinations kept before a sweep (see `ProtoSpace::empty_destinations`).
const EMPTY_DESTINATIONS_KEPT: usize = 1_024;

impl ProtoSpace {
    /// Returns the destination's ports in range after it, for a connect(). `arrived_ns`:
    /// an allocation at that time (a socket found at start-up is none), for the pace.
    fn hold(
        &mut self,
        event_port: u16,
        dest: Option<Destination>,
        range: &PortRange,
        arrived_ns: Option<u64>,
    ) -> Option<u32> {
        if let Some(now_ns) = arrived_ns {
            self.pace.allocated(now_ns);
        }
        let (mine, other, dest_in_range) = match dest {
            Some(dest) => {
                let scope = match self.by_destination.entry(dest) {
                    Entry::Occupied(slot) => {
                        let scope = slot.into_mut();
                        if scope.held.is_empty() {
                            self.empty_destinations -= 1;
                        }
                        scope
                    }
                    Entry::Vacant(slot) => slot.insert(DestinationScope::default()),
                };
                scope.held.add(event_port, range);
                if let Some(now_ns) = arrived_ns {
                    scope.pace.allocated(now_ns);
                }
                let in_range = scope.held.in_range;
                (&mut self.connected, &self.exclusive, Some(in_range))
            }
            None => (&mut self.exclusive, &self.connected, None),
        };
        if mine.add(event_port, range) && !other.contains(event_port) && range.contains(event_port)
        {
            self.used_in_range += 1;
        }
        dest_in_range
    }

    /// Returns the destination's ports in range after it, for a connect(). `lifetime_ns`:
    /// how long the port was held, where known, for the pace.
    fn free(
        &mut self,
        port: u16,
        dest: Option<Destination>,
        range: &PortRange,
        lifetime_ns: Option<u64>,
    ) -> Option<u32> {
        if let Some(lifetime_ns) = lifetime_ns {
            self.pace.released(lifetime_ns);
        }
        let (mine, other, dest_in_range) = match dest {
            Some(dest) => {
                let mut in_range = 0;
                if let Some(scope) = self.by_destination.get_mut(&dest)
                    && !scope.held.is_empty()
                {
                    scope.held.remove(port, range);
                    if let Some(lifetime_ns) = lifetime_ns {
                        scope.pace.released(lifetime_ns);
                    }
                    in_range = scope.held.in_range;
                    if scope.held.is_empty() {
                        self.empty_destinations += 1;
                        self.sweep_if_many_empty();
                    }
                }
                (&mut self.connected, &self.exclusive, Some(in_range))
            }
            None => (&mut self.exclusive, &self.connected, None),
        };
        if mine.remove(port, range) && !other.contains(port) && range.contains(port) {
            self.used_in_range -= 1;
        }
        dest_in_range
    }

    /// Forgets the emptied destinations once they outnumber what is kept: memory stays
    /// bounded by twice the destinations in use, whatever a crawler connects to.
    fn sweep_if_many_empty(&mut self) {
        let in_use = self.by_destination.len() - self.empty_destinations;
        if self.empty_destinations > EMPTY_DESTINATIONS_KEPT.max(in_use) {
            self.by_destination
                .retain(|_, scope| !scope.held.is_empty());
            self.empty_destinations = 0;
        }
    }

    /// The usage of the scopes an event draws from, given its destination's ports in range
    /// (what `Occupancy::usage` would look up again).
    fn usages(&self, range: &PortRange, dest_in_range: Option<u32>) -> Usages {
        Usages {
            namespace: Usage {
                used: self.used_in_range,
                capacity: range.size(),
            },
            destination: dest_in_range.map(|used| Usage {
                used,
                capacity: range.size().saturating_sub(self.exclusive.in_range),
            }),
        }
    }

    fn recount(&mut self, range: &PortRange) {
        self.exclusive.recount(range);
        self.connected.recount(range);
        for scope in self.by_destination.values_mut() {
            scope.held.recount(range);
        }
        let only_connected = self
            .connected
            .ports
            .ports()
            .filter(|p| range.contains(*p) && !self.exclusive.contains(*p))
            .count() as u32;
        self.used_in_range = self.exclusive.in_range + only_connected;
    }
}

#[derive(Debug, Default)]
struct Namespace {
    range: PortRange,
    tcp: ProtoSpace,
    udp: ProtoSpace,
}

impl Namespace {
    fn space_ref(&self, proto: Proto) -> &ProtoSpace {
        match proto {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
        }
    }
}

/// How full the scopes of one event are, in `Occupancy::scopes_of`'s order: its namespace,
/// and for a TCP connect its destination. `hold` and `free` return it, so the levels after
/// an event cost no second look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usages {
    pub namespace: Usage,
    pub destination: Option<Usage>,
}

impl IntoIterator for Usages {
    type Item = Usage;
    type IntoIter = std::iter::Chain<std::iter::Once<Usage>, std::option::IntoIter<Usage>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.namespace).chain(self.destination)
    }
}

/// The occupancy of every namespace seen.
#[derive(Debug, Default)]
pub struct Occupancy {
    namespaces: HashMap<u32, Namespace>,
}

/// Only TCP connect() shares ports across destinations; everything else holds its port
/// exclusively in the namespace (UDP connect autobinds like bind(0)).
fn destination(event: &Event) -> Option<Destination> {
    (event.proto == Proto::Tcp && event.kind == AllocKind::Connect).then_some(Destination {
        laddr: event.laddr,
        raddr: event.raddr,
        rport: event.rport,
    })
}

impl Occupancy {
    /// Sets a namespace's range (read at start and every interval: it can change, and only
    /// then are the counts redone).
    pub fn set_range(&mut self, netns: u32, range: PortRange) {
        let ns = self.namespaces.entry(netns).or_default();
        if ns.range != range {
            ns.tcp.recount(&range);
            ns.udp.recount(&range);
            ns.range = range;
        }
    }

    pub fn namespaces(&self) -> impl Iterator<Item = u32> + '_ {
        self.namespaces.keys().copied()
    }

    /// Namespace `netns`'s range, once known.
    pub fn range(&self, netns: u32) -> Option<&PortRange> {
        self.namespaces.get(&netns).map(|ns| &ns.range)
    }

    /// Forgets namespace `netns` if nothing is held there; returns whether it did.
    pub fn forget_if_empty(&mut self, netns: u32) -> bool {
        let empty = self.namespaces.get(&netns).is_some_and(|ns| {
            [&ns.tcp, &ns.udp]
                .iter()
                .all(|space| space.exclusive.is_empty() && space.connected.is_empty())
        });
        if empty {
            self.namespaces.remove(&netns);
        }
        empty
    }

    pub fn has_namespace(&self, netns: u32) -> bool {
        self.namespaces.contains_key(&netns)
    }

    /// A socket found at start-up holds a port; returns the usage of the scopes it draws
    /// from, after it. (No allocation: the pace learns nothing from it.)
    pub fn hold(&mut self, event: &Event) -> Usages {
        self.take(event, None)
    }

    /// A port allocated at the event's time is held from now on; returns the usage of the
    /// scopes it draws from, after it.
    pub fn allocate(&mut self, event: &Event) -> Usages {
        self.take(event, Some(event.ts_ns))
    }

    fn take(&mut self, event: &Event, arrived_ns: Option<u64>) -> Usages {
        let ns = self.namespaces.entry(event.netns).or_default();
        let range = &ns.range;
        let space = match event.proto {
            Proto::Tcp => &mut ns.tcp,
            Proto::Udp => &mut ns.udp,
        };
        let dest_in_range = space.hold(event.port, destination(event), range, arrived_ns);
        space.usages(range, dest_in_range)
    }

    /// The port is free again (after TIME_WAIT, where there was one), held for
    /// `lifetime_ns` where that is known; returns the usage of the scopes it drew from,
    /// after it.
    pub fn free(&mut self, event: &Event, lifetime_ns: Option<u64>) -> Usages {
        let dest = destination(event);
        let Some(ns) = self.namespaces.get_mut(&event.netns) else {
            let none = Usage {
                used: 0,
                capacity: PortRange::default().size(),
            };
            return Usages {
                namespace: none,
                destination: dest.map(|_| none),
            };
        };
        let range = &ns.range;
        let space = match event.proto {
            Proto::Tcp => &mut ns.tcp,
            Proto::Udp => &mut ns.udp,
        };
        let dest_in_range = space.free(event.port, dest, range, lifetime_ns);
        space.usages(range, dest_in_range)
    }

    /// The scopes an event draws from: its namespace, and for a TCP connect its destination.
    /// (An iterator, not a Vec: this runs for every event.)
    pub fn scopes_of(event: &Event) -> impl Iterator<Item = ScopeKey> + use<> {
        let key = |scope| ScopeKey {
            netns: event.netns,
            proto: event.proto,
            scope,
        };
        std::iter::once(key(Scope::Namespace))
            .chain(destination(event).map(|dest| key(Scope::Destination(dest))))
    }

    /// How full a scope is.
    pub fn usage(&self, key: &ScopeKey) -> Usage {
        let Some(ns) = self.namespaces.get(&key.netns) else {
            return Usage {
                used: 0,
                capacity: PortRange::default().size(),
            };
        };
        let space = ns.space_ref(key.proto);
        match &key.scope {
            // A port used by any socket, connected or not, blocks bind(0) and listen().
            Scope::Namespace => Usage {
                used: space.used_in_range,
                capacity: ns.range.size(),
            },
            Scope::Destination(dest) => Usage {
                used: space
                    .by_destination
                    .get(dest)
                    .map_or(0, |scope| scope.held.in_range),
                capacity: ns.range.size().saturating_sub(space.exclusive.in_range),
            },
        }
    }

    /// The pace a scope's ports are taken at, for its forecast (None: nothing seen there).
    pub fn pace(&self, key: &ScopeKey) -> Option<&Pace> {
        let space = self.namespaces.get(&key.netns)?.space_ref(key.proto);
        match &key.scope {
            Scope::Namespace => Some(&space.pace),
            Scope::Destination(dest) => space.by_destination.get(dest).map(|scope| &scope.pace),
        }
    }

    /// Every TCP destination scope with ports held, and its usage of the half of the range
    /// connect() tries first (see `PortRange::in_connect_half`): used, capacity.
    pub fn connect_halves(&self) -> Vec<(ScopeKey, Usage)> {
        let mut all = Vec::new();
        for (&netns, ns) in &self.namespaces {
            let capacity = ns
                .range
                .connect_half_size()
                .saturating_sub(ns.tcp.exclusive.in_connect_half);
            for (dest, scope) in &ns.tcp.by_destination {
                let held = &scope.held;
                if held.is_empty() {
                    continue;
                }
                let key = ScopeKey {
                    netns,
                    proto: Proto::Tcp,
                    scope: Scope::Destination(*dest),
                };
                let used = held.in_connect_half;
                all.push((key, Usage { used, capacity }));
            }
        }
        all
    }

    /// The processes holding the most ports in a scope, most first: distinct ports in the
    /// range, as the scope's `used` counts them (so no holder holds more than is used).
    /// Walks every held socket: it runs for a warning or a finding, not for every event.
    pub fn top_holders(
        &self,
        key: &ScopeKey,
        n: usize,
        held: &dyn HeldSockets,
    ) -> Vec<(Holder, u32)> {
        let Some(ns) = self.namespaces.get(&key.netns) else {
            return Vec::new();
        };
        // A port held both exclusively and connected, or by two sockets, counts once.
        let mut distinct: foldhash::HashSet<(Holder, u16)> = Default::default();
        held.for_each_held(&mut |event, port| {
            let in_scope = event.netns == key.netns
                && event.proto == key.proto
                && match &key.scope {
                    Scope::Namespace => true,
                    Scope::Destination(dest) => destination(event).as_ref() == Some(dest),
                };
            if in_scope && ns.range.contains(port) {
                distinct.insert((Holder::of(event), port));
            }
        });
        let mut merged: BTreeMap<Holder, u32> = BTreeMap::new();
        for (holder, _) in distinct {
            *merged.entry(holder).or_default() += 1;
        }
        let mut top: Vec<(Holder, u32)> = merged.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Every scope with something held, fullest first.
    pub fn fullest(&self, n: usize) -> Vec<(ScopeKey, Usage)> {
        let mut all = Vec::new();
        for (&netns, ns) in &self.namespaces {
            for proto in [Proto::Tcp, Proto::Udp] {
                let space = ns.space_ref(proto);
                let mut keys = vec![ScopeKey {
                    netns,
                    proto,
                    scope: Scope::Namespace,
                }];
                keys.extend(space.by_destination.keys().map(|dest| ScopeKey {
                    netns,
                    proto,
                    scope: Scope::Destination(*dest),
                }));
                for key in keys {
                    let usage = self.usage(&key);
                    if usage.used > 0 {
                        all.push((key, usage));
                    }
                }
            }
        }
        all.sort_by(|a, b| {
            b.1.ratio()
                .total_cmp(&a.1.ratio())
                .then_with(|| a.0.cmp(&b.0))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use port_trace_common::{KIND_BIND, KIND_CONNECT};
    use proptest::prelude::*;

    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    const NETNS: u32 = 4026531840;
    /// A local port where only the destination matters (a destination's scope has none).
    const ANY_PORT: u16 = 1;

    fn tiny() -> PortRange {
        PortRange::parse("40000 40009", "").expect("range")
    }

    fn connect(port: u16, rport: u16) -> Event {
        let mut raw = raw_connect();
        raw.kind = KIND_CONNECT;
        raw.lport = port;
        raw.rport = rport;
        raw.netns = NETNS;
        decode_raw(&raw).expect("decodes")
    }

    fn bind(port: u16) -> Event {
        let mut raw = raw_connect();
        raw.kind = KIND_BIND;
        raw.lport = port;
        raw.netns = NETNS;
        decode_raw(&raw).expect("decodes")
    }

    fn dest_key(event: &Event) -> ScopeKey {
        Occupancy::scopes_of(event)
            .nth(1)
            .expect("a connect has a destination")
    }

    fn ns_key() -> ScopeKey {
        ScopeKey {
            netns: NETNS,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        }
    }

    #[test]
    fn connect_ports_count_per_destination_not_per_namespace_capacity() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        for port in 40000..40008 {
            occ.hold(&connect(port, 443));
        }
        // The same ports again, to another destination: each destination is 8/10 full.
        for port in 40000..40008 {
            occ.hold(&connect(port, 80));
        }
        let a = occ.usage(&dest_key(&connect(ANY_PORT, 443)));
        let b = occ.usage(&dest_key(&connect(ANY_PORT, 80)));
        assert_eq!((a.used, a.capacity), (8, 10));
        assert_eq!((b.used, b.capacity), (8, 10));
        // bind(0) could only use the two ports no socket has.
        assert_eq!(
            occ.usage(&ns_key()),
            Usage {
                used: 8,
                capacity: 10
            }
        );
    }

    #[test]
    fn exclusive_ports_shrink_every_destination() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        occ.hold(&bind(40009));
        occ.hold(&bind(40008));
        occ.hold(&connect(40000, 443));
        let usage = occ.usage(&dest_key(&connect(ANY_PORT, 443)));
        assert_eq!((usage.used, usage.capacity), (1, 8));
        assert_eq!(occ.usage(&ns_key()).used, 3);
        occ.free(&bind(40009), None);
        assert_eq!(occ.usage(&dest_key(&connect(ANY_PORT, 443))).capacity, 9);
    }

    #[test]
    fn ports_outside_the_range_or_reserved_do_not_count() {
        let mut occ = Occupancy::default();
        occ.set_range(
            NETNS,
            PortRange::parse("40000 40009", "40003").expect("range"),
        );
        occ.hold(&bind(5000));
        occ.hold(&bind(40003));
        occ.hold(&bind(40004));
        assert_eq!(
            occ.usage(&ns_key()),
            Usage {
                used: 1,
                capacity: 9
            }
        );
        // The range changes at run time: now 40003 is in it and 40004 is not.
        occ.set_range(NETNS, PortRange::parse("40003 40003", "").expect("range"));
        assert_eq!(
            occ.usage(&ns_key()),
            Usage {
                used: 1,
                capacity: 1
            }
        );
    }

    /// Connect + close to ever new destinations (a crawler) keeps a bounded number of
    /// emptied destinations; one destination emptied and refilled keeps its pace.
    #[test]
    fn emptied_destinations_are_kept_bounded_with_their_pace() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        for rport in 1..=3_000u16 {
            let mut e = connect(40000, rport);
            e.ts_ns = u64::from(rport) * 1_000_000;
            occ.allocate(&e);
            occ.free(&e, Some(1_000));
        }
        let kept = occ.namespaces[&NETNS].tcp.by_destination.len();
        assert!(
            kept <= EMPTY_DESTINATIONS_KEPT + 1,
            "{kept} destinations kept"
        );
        assert_eq!(occ.fullest(usize::MAX).len(), 0, "none of them is in use");
        assert!(occ.connect_halves().is_empty());
        // Ten a second to one destination, each freed before the next (as if held 10 s):
        // still there, and its pace with it (~1 a second in, 5 held / 10 s = 0.5 out).
        let mut e = connect(40000, 443);
        for i in 0..10 {
            e.ts_ns = 5_000_000_000 + i * 100_000_000;
            occ.allocate(&e);
            occ.free(&e, Some(10_000_000_000));
        }
        let pace = occ.pace(&dest_key(&e)).expect("kept");
        let filling = Usage {
            used: 5,
            capacity: 10,
        };
        assert!(pace.seconds_left(filling, 6_000_000_000).is_some());
    }

    #[test]
    fn top_holders_name_who_uses_the_ports() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        let mut other = connect(40001, 443);
        other.pid = 99;
        other.comm = "nginx".into();
        let held = vec![connect(40000, 443), connect(40002, 443), other.clone()];
        for event in &held {
            occ.hold(event);
        }
        let top = occ.top_holders(&dest_key(&other), 5, &held);
        assert_eq!(top[0].0.comm, "curl");
        assert_eq!(top[0].1, 2);
        assert_eq!(top[1].0.pid, 99);
        assert_eq!(occ.fullest(1)[0].1.used, 3);
    }

    #[test]
    fn holders_count_the_ports_the_scope_counts() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        // Two ports in range, one outside it (an explicit bind, say), and a second socket
        // on a port already held: 2 used, so curl holds 2, not 4.
        let mut held: Vec<Event> = [40000, 40001, 50000].into_iter().map(bind).collect();
        held.push(connect(40001, 443));
        for event in &held {
            occ.hold(event);
        }
        let key = ScopeKey {
            netns: NETNS,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        };
        let used = occ.usage(&key).used;
        assert_eq!(used, 2);
        assert_eq!(occ.top_holders(&key, 5, &held)[0].1, used);
        // The range grows to take 50000 in: counted from then on.
        occ.set_range(NETNS, PortRange::parse("40000 50000", "").expect("a range"));
        assert_eq!(occ.top_holders(&key, 5, &held)[0].1, 3);
    }

    fn held_socket() -> impl Strategy<Value = (bool, u16, u16)> {
        // (connect?, port in a 10-port range, one of 3 destinations)
        (any::<bool>(), 40000u16..40010, 0u16..3)
    }

    proptest! {
        /// Holding then freeing any sockets in any order leaves nothing held, and usage
        /// never exceeds what distinct ports allow.
        #[test]
        fn hold_and_free_balance(sockets in proptest::collection::vec(held_socket(), 0..60),
                                 seed in any::<u64>()) {
            let mut occ = Occupancy::default();
            occ.set_range(NETNS, tiny());
            let events: Vec<Event> = sockets.iter().map(|&(is_connect, port, dest)| {
                if is_connect { connect(port, 1000 + dest) } else { bind(port) }
            }).collect();
            for e in &events {
                let usages = occ.hold(e);
                let ns = occ.usage(&ns_key());
                prop_assert!(ns.used <= ns.capacity);
                for (key, returned) in Occupancy::scopes_of(e).zip(usages) {
                    let u = occ.usage(&key);
                    prop_assert!(u.used <= 10);
                    prop_assert_eq!(returned, u, "hold returns the usage a look-up gives");
                }
                prop_assert_eq!(Occupancy::scopes_of(e).count(), usages.into_iter().count());
            }
            let mut order: Vec<usize> = (0..events.len()).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            for i in order {
                let usages = occ.free(&events[i], None);
                for (key, returned) in Occupancy::scopes_of(&events[i]).zip(usages) {
                    prop_assert_eq!(returned, occ.usage(&key), "free returns the usage a look-up gives");
                }
            }
            prop_assert_eq!(occ.usage(&ns_key()).used, 0);
            prop_assert!(occ.fullest(10).is_empty());
            for dest in 0..3 {
                let u = occ.usage(&dest_key(&connect(ANY_PORT, 1000 + dest)));
                prop_assert_eq!((u.used, u.capacity), (0, 10));
            }
        }

        /// The counts kept as ports come and go equal counting from scratch, through range
        /// changes too.
        #[test]
        fn kept_counts_equal_a_recount(
            sockets in proptest::collection::vec(held_socket(), 0..60),
            frees in proptest::collection::vec(any::<bool>(), 0..60),
            low in 40000u16..40006,
        ) {
            let mut occ = Occupancy::default();
            occ.set_range(NETNS, tiny());
            let events: Vec<Event> = sockets.iter().map(|&(is_connect, port, dest)| {
                if is_connect { connect(port, 1000 + dest) } else { bind(port) }
            }).collect();
            for e in &events {
                occ.hold(e);
            }
            for (e, free) in events.iter().zip(&frees) {
                if *free {
                    occ.free(e, None);
                }
            }
            occ.set_range(NETNS, PortRange::parse(&format!("{low} 40009"), "40007").expect("range"));
            let range = PortRange::parse(&format!("{low} 40009"), "40007").expect("range");
            let held: Vec<&Event> = events.iter().zip(frees.iter().chain(std::iter::repeat(&false)))
                .filter(|(_, free)| !**free).map(|(e, _)| e).collect();
            let distinct = |pick: &dyn Fn(&Event) -> bool| -> u32 {
                held.iter().filter(|e| pick(e) && range.contains(e.port))
                    .map(|e| e.port).collect::<std::collections::BTreeSet<_>>().len() as u32
            };
            let exclusive = distinct(&|e| e.kind != AllocKind::Connect);
            prop_assert_eq!(occ.usage(&ns_key()).used, distinct(&|_| true));
            for dest in 0..3u16 {
                let u = occ.usage(&dest_key(&connect(ANY_PORT, 1000 + dest)));
                prop_assert_eq!(u.used, distinct(&|e| e.kind == AllocKind::Connect && e.rport == 1000 + dest));
                prop_assert_eq!(u.capacity, range.size() - exclusive);
            }
        }

        /// A destination's used + exclusive never exceeds the range: the kernel could not
        /// have handed out more.
        #[test]
        fn destination_capacity_excludes_exclusive_ports(
            binds in proptest::collection::btree_set(40000u16..40010, 0..10),
        ) {
            let mut occ = Occupancy::default();
            occ.set_range(NETNS, tiny());
            for &p in &binds {
                occ.hold(&bind(p));
            }
            let u = occ.usage(&dest_key(&connect(ANY_PORT, 443)));
            prop_assert_eq!(u.capacity as usize, 10 - binds.len());
        }
    }

    #[test]
    fn addresses_make_destinations_distinct() {
        let mut occ = Occupancy::default();
        occ.set_range(NETNS, tiny());
        let mut a = connect(40000, 443);
        a.raddr = IpAddr::from(Ipv4Addr::new(10, 0, 0, 1));
        let mut b = connect(40000, 443);
        b.raddr = IpAddr::from(Ipv4Addr::new(10, 0, 0, 2));
        occ.hold(&a);
        occ.hold(&b);
        assert_eq!(occ.usage(&dest_key(&a)).used, 1);
        assert_eq!(occ.usage(&dest_key(&b)).used, 1);
        assert_eq!(occ.usage(&ns_key()).used, 1);
    }
}
