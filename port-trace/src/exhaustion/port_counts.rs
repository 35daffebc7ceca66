//! How many sockets hold each port of one scope.
//!
//! A map while few ports are held; a table indexed by port once many are. A range filling up
//! is when this is busiest (TIME_WAIT churn holds the whole range), and there a map of 28k
//! ports made every allocation and release a cache miss or two, in a table as big as the
//! one indexed by port (a map's bucket is 8 bytes and a control byte, at most 7/8 full).

// foldhash, not SipHash: touched for every event. Keys come from the kernel.
use foldhash::HashMap;

/// Distinct ports held beyond which the counts move to a table indexed by port. A map of
/// this many takes about half the table's 256 KiB.
const DENSE_AT: usize = 8_192;
/// Distinct ports held below which the counts move back to a map (not at once below
/// `DENSE_AT`: a scope hovering there would move at every event).
const SPARSE_AT: usize = 1_024;

#[derive(Debug, Default)]
pub struct PortCounts {
    sparse: HashMap<u16, u32>,
    /// Indexed by port, once more than `DENSE_AT` are held; `sparse` is empty meanwhile.
    dense: Option<Box<[u32]>>,
    /// Distinct ports held.
    len: usize,
}

impl PortCounts {
    /// One more socket holds `port`; returns whether it was held by none before.
    pub fn add(&mut self, port: u16) -> bool {
        let count = match &mut self.dense {
            Some(table) => &mut table[usize::from(port)],
            None => self.sparse.entry(port).or_default(),
        };
        *count += 1;
        let new = *count == 1;
        if new {
            self.len += 1;
            if self.dense.is_none() && self.len > DENSE_AT {
                self.make_dense();
            }
        }
        new
    }

    /// One socket fewer holds `port`; returns whether none does now (false if none did).
    pub fn remove(&mut self, port: u16) -> bool {
        let gone = match &mut self.dense {
            Some(table) => match &mut table[usize::from(port)] {
                0 => return false,
                count => {
                    *count -= 1;
                    *count == 0
                }
            },
            None => {
                let Some(count) = self.sparse.get_mut(&port) else {
                    return false;
                };
                *count -= 1;
                let gone = *count == 0;
                if gone {
                    self.sparse.remove(&port);
                }
                gone
            }
        };
        if gone {
            self.len -= 1;
            if self.dense.is_some() && self.len < SPARSE_AT {
                self.make_sparse();
            }
        }
        gone
    }

    pub fn contains(&self, port: u16) -> bool {
        match &self.dense {
            Some(table) => table[usize::from(port)] > 0,
            None => self.sparse.contains_key(&port),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ports held, in no order.
    pub fn ports(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match &self.dense {
            Some(table) => {
                Box::new((0..=u16::MAX).filter(move |&port| table[usize::from(port)] > 0))
            }
            None => Box::new(self.sparse.keys().copied()),
        }
    }

    fn make_dense(&mut self) {
        let mut table = vec![0u32; 1 << 16].into_boxed_slice();
        for (port, count) in self.sparse.drain() {
            table[usize::from(port)] = count;
        }
        // The map's memory goes with it (`drain` keeps the capacity).
        self.sparse = HashMap::default();
        self.dense = Some(table);
    }

    fn make_sparse(&mut self) {
        let Some(table) = self.dense.take() else {
            return;
        };
        self.sparse = (0..=u16::MAX)
            .filter_map(|port| {
                let count = table[usize::from(port)];
                (count > 0).then_some((port, count))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fills past the table's threshold and empties below the map's, checking every answer
    /// against a plain map's.
    #[test]
    fn moves_to_a_table_and_back_answering_the_same() {
        let mut counts = PortCounts::default();
        let mut reference: std::collections::HashMap<u16, u32> = Default::default();
        let ports: Vec<u16> = (0..DENSE_AT as u16 + 500)
            .map(|i| i.wrapping_mul(7))
            .collect();
        for &port in ports.iter().chain(&ports[..100]) {
            let was = reference.get(&port).copied().unwrap_or(0);
            *reference.entry(port).or_default() += 1;
            assert_eq!(counts.add(port), was == 0, "add {port}");
        }
        assert!(counts.dense.is_some(), "a table past {DENSE_AT}");
        assert!(counts.sparse.is_empty());
        for &port in ports.iter().rev() {
            let count = reference.get_mut(&port).expect("held");
            *count -= 1;
            let gone = *count == 0;
            if gone {
                reference.remove(&port);
            }
            assert_eq!(counts.remove(port), gone, "remove {port}");
            assert_eq!(counts.contains(port), !gone);
        }
        assert!(counts.dense.is_none(), "a map again below {SPARSE_AT}");
        let mut held: Vec<u16> = counts.ports().collect();
        held.sort_unstable();
        let mut expected: Vec<u16> = reference.keys().copied().collect();
        expected.sort_unstable();
        assert_eq!(held, expected);
        assert_eq!(counts.len, expected.len());
        assert!(!counts.remove(1), "a port no one holds");
    }

    proptest! {
        /// Any sequence of adds and removes answers as a plain map of counts does, whichever
        /// form the counts are in.
        #[test]
        fn answers_as_a_map_does(ops in prop::collection::vec((any::<bool>(), 0u16..64), 0..400),
                                 dense in any::<bool>()) {
            let mut counts = PortCounts::default();
            if dense {
                counts.make_dense();
            }
            let mut reference: std::collections::HashMap<u16, u32> = Default::default();
            for (add, port) in ops {
                if add {
                    let was = reference.get(&port).copied().unwrap_or(0);
                    *reference.entry(port).or_default() += 1;
                    prop_assert_eq!(counts.add(port), was == 0);
                } else {
                    let gone = match reference.get_mut(&port) {
                        Some(count) => {
                            *count -= 1;
                            *count == 0
                        }
                        None => false,
                    };
                    if gone {
                        reference.remove(&port);
                    }
                    prop_assert_eq!(counts.remove(port), gone);
                }
                prop_assert_eq!(counts.is_empty(), reference.is_empty());
            }
            for port in 0..64 {
                prop_assert_eq!(counts.contains(port), reference.contains_key(&port));
            }
        }
    }
}
