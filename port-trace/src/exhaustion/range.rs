//! A namespace's ephemeral range: `ip_local_port_range` minus `ip_local_reserved_ports`, as
//! the kernel hands ports out of it.

use crate::sys::netns;

/// `net.ipv4.ip_local_port_range` minus `ip_local_reserved_ports`, for one namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
    /// Reserved ports as inclusive ranges, sorted.
    pub reserved: Vec<(u16, u16)>,
    /// `ip_unprivileged_port_start`, where it could be read: ports below it need
    /// CAP_NET_BIND_SERVICE to bind (the range lint's business, not the count's).
    pub unprivileged_start: Option<u16>,
}

impl Default for PortRange {
    /// Linux's default range.
    fn default() -> Self {
        Self {
            low: 32768,
            high: 60999,
            reserved: Vec::new(),
            unprivileged_start: None,
        }
    }
}

impl PortRange {
    /// Parses `ip_local_port_range` ("32768\t60999") and `ip_local_reserved_ports`
    /// ("8080,9000-9100" or empty).
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut bounds = range.split_whitespace().map(str::parse::<u16>);
        let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
        if low > high {
            return None;
        }
        let mut reserved_ranges = Vec::new();
        for part in reserved.trim().split(',').filter(|p| !p.trim().is_empty()) {
            let (a, b) = match part.trim().split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let p = part.trim().parse().ok()?;
                    (p, p)
                }
            };
            reserved_ranges.push((a, b));
        }
        reserved_ranges.sort_unstable();
        Some(Self {
            low,
            high,
            reserved: reserved_ranges,
            unprivileged_start: None,
        })
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// Namespace `inode`'s range as it is now; None when no process is left in it.
    pub fn of_netns(inode: u32) -> Option<Self> {
        let read = netns::port_range_sysctls(inode)?;
        let mut range = Self::parse(&read.range, &read.reserved)?;
        range.unprivileged_start = read.unprivileged_start.and_then(|s| s.trim().parse().ok());
        Some(range)
    }

    /// `ip_local_reserved_ports` as the kernel prints it ("8080,9000-9100"), with `port`
    /// added: the value that reserves it too.
    pub fn reserved_with(&self, port: u16) -> String {
        let mut all = self.reserved.clone();
        all.push((port, port));
        all.sort_unstable();
        all.dedup();
        reserved_list(&all)
    }

    /// Whether the kernel would hand `port` out from this range.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port) && !self.is_reserved(port)
    }

    /// Whether `port` is in the half connect() tries first: since Linux 4.6 it scans the
    /// ports at an even offset from the range's start first (bind() the others).
    pub fn in_connect_half(&self, port: u16) -> bool {
        self.contains(port) && self.tried_first(port)
    }

    /// For a port the range `contains`: whether connect() tries it in its first pass.
    pub fn tried_first(&self, port: u16) -> bool {
        port.wrapping_sub(self.low).is_multiple_of(2)
    }

    /// How many ports of the half connect() tries first the kernel can hand out.
    pub fn connect_half_size(&self) -> u32 {
        // Even offsets in [a, b] (offsets from `low`).
        let evens = |a: u16, b: u16| {
            let (a, b) = (u32::from(a - self.low), u32::from(b - self.low));
            b / 2 + 1 - a.div_ceil(2)
        };
        let all = evens(self.low, self.high);
        let reserved: u32 = self
            .reserved
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(self.low), b.min(self.high));
                if a > b { 0 } else { evens(a, b) }
            })
            .sum();
        all - reserved.min(all)
    }

    /// How many ports the kernel can hand out.
    pub fn size(&self) -> u32 {
        let all = u32::from(self.high - self.low) + 1;
        let reserved: u32 = self
            .reserved
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(self.low), b.min(self.high));
                if a > b { 0 } else { u32::from(b - a) + 1 }
            })
            .sum();
        all - reserved.min(all)
    }
}

/// Reserved port ranges as `ip_local_reserved_ports` takes them: `8080,40000-40009`.
pub fn reserved_list(reserved: &[(u16, u16)]) -> String {
    reserved
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_namespace_range() {
        let own = netns::own().expect("own netns");
        let range = PortRange::of_netns(own).expect("readable range");
        assert!(range.size() > 0);
    }

    #[test]
    fn parses_ranges_and_reserved_ports() {
        let r = PortRange::parse("32768\t60999\n", "").expect("parses");
        assert_eq!((r.low, r.high, r.size()), (32768, 60999, 28232));
        let r = PortRange::parse("40000 40009", "40001,40005-40006,50000\n").expect("parses");
        assert_eq!(r.size(), 7);
        assert!(!r.contains(40001) && !r.contains(40005) && r.contains(40004));
        assert!(!r.contains(39999) && !r.contains(40010));
        assert_eq!(PortRange::parse("5 1", ""), None);
        assert_eq!(PortRange::parse("x y", ""), None);
        assert_eq!(PortRange::parse("1 5", "a-b"), None);
        assert_eq!(r.reserved_with(40003), "40001,40003,40005-40006,50000");
        assert_eq!(PortRange::default().reserved_with(40000), "40000");
    }

    #[test]
    fn the_connect_half_is_the_even_offsets_less_reserved_ones() {
        for (range, reserved) in [
            ("32768 60999", ""),
            ("40000 40009", "40001,40004-40006,50000"),
            ("40001 40010", "39990-40002"),
            ("5 5", ""),
        ] {
            let r = PortRange::parse(range, reserved).expect("parses");
            let counted = (r.low..=r.high).filter(|p| r.in_connect_half(*p)).count() as u32;
            assert_eq!(r.connect_half_size(), counted, "{range} less {reserved}");
        }
        let r = PortRange::parse("40001 40010", "").expect("parses");
        assert!(r.in_connect_half(40001) && !r.in_connect_half(40002));
    }
}
