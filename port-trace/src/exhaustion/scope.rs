//! Scopes: what one allocation draws from. A namespace (bind(0), listen(), UDP) or, for a TCP
//! connect(), one destination; and how full a scope is, and who holds its ports.

use std::net::IpAddr;

use serde::Serialize;

use crate::event::{Event, Proto, comm::Comm};

/// Where a connect() goes: the 3 of the 4-tuple that are not the port being chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
}

/// Hashed as two 128-bit words and the port: destinations are hashed several times per
/// event, and the derived hash (enum tags, byte slices with lengths) was a tenth of the
/// daemon's time. Equal destinations hash equal; an IPv4 and an IPv6 address with the same
/// bits merely collide.
impl std::hash::Hash for Destination {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        use crate::event::ip_bits as bits;
        state.write_u128(bits(self.laddr));
        state.write_u128(bits(self.raddr));
        state.write_u16(self.rport);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Namespace,
    Destination(Destination),
}

/// Which kind of scope, as records and labels name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Namespace,
    Destination,
}

impl ScopeKind {
    /// The name records and labels use (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Namespace => "namespace",
            ScopeKind::Destination => "destination",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub netns: u32,
    pub proto: Proto,
    pub scope: Scope,
}

impl ScopeKey {
    pub fn destination(&self) -> Option<Destination> {
        match self.scope {
            Scope::Destination(dest) => Some(dest),
            Scope::Namespace => None,
        }
    }

    pub fn kind(&self) -> ScopeKind {
        match self.scope {
            Scope::Destination(_) => ScopeKind::Destination,
            Scope::Namespace => ScopeKind::Namespace,
        }
    }
}

/// One holder of ports, for "who is using them". Kept once per held port (and scope), so
/// small: its cgroup and workload are looked up by pid when a warning names it
/// (`workloads::Workloads`), not stored here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: Comm,
}

impl Holder {
    pub fn of(event: &Event) -> Self {
        Self {
            pid: event.pid,
            comm: event.comm,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub used: u32,
    pub capacity: u32,
}

impl Usage {
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(self.used) / f64::from(self.capacity)
        }
    }
}

/// One namespace scope and its usage, for the level and forecast tests.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    pub fn key() -> ScopeKey {
        ScopeKey {
            netns: 1,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        }
    }

    /// `used` of 100 ports.
    pub fn usage(used: u32) -> Usage {
        Usage {
            used,
            capacity: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_kinds_are_named_by_their_serde_names() {
        for kind in [ScopeKind::Namespace, ScopeKind::Destination] {
            assert_eq!(serde_json::to_value(kind).ok(), Some(kind.as_str().into()));
        }
    }
}
