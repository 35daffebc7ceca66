//! Levels before exhaustion: ok, warn, critical per scope, with hysteresis so a scope hovering
//! at a line does not flap.

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::{HashMap, HashMapExt as _};
use serde::Serialize;

use super::scope::{ScopeKey, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Critical,
}

/// A level is left only when the ratio falls this far below its line.
pub const HYSTERESIS: f64 = 0.05;

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub warn: f64,
    pub critical: f64,
}

#[derive(Debug)]
pub struct Levels {
    thresholds: Thresholds,
    levels: HashMap<ScopeKey, Level>,
}

impl Levels {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            levels: HashMap::new(),
        }
    }

    /// Forgets every scope of namespace `netns` (gone).
    pub fn forget(&mut self, netns: u32) {
        self.levels.retain(|key, _| key.netns != netns);
    }

    pub fn level(&self, key: &ScopeKey) -> Level {
        self.levels.get(key).copied().unwrap_or(Level::Ok)
    }

    /// Takes a scope's new usage; returns the level when it rose (a warning to raise).
    pub fn update(&mut self, key: ScopeKey, usage: Usage) -> Option<Level> {
        let ratio = usage.ratio();
        let Thresholds { warn, critical } = self.thresholds;
        // The common case, every event of a healthy host: nothing to look up.
        if ratio < warn - HYSTERESIS && self.levels.is_empty() {
            return None;
        }
        let current = self.level(&key);
        let reached = if ratio >= critical {
            Level::Critical
        } else if ratio >= warn {
            Level::Warn
        } else {
            Level::Ok
        };
        if reached > current {
            self.levels.insert(key, reached);
            return Some(reached);
        }
        let settled = if ratio < warn - HYSTERESIS {
            Level::Ok
        } else if ratio < critical - HYSTERESIS {
            current.min(Level::Warn)
        } else {
            current
        };
        if settled == Level::Ok {
            self.levels.remove(&key);
        } else if settled < current {
            self.levels.insert(key, settled);
        }
        None
    }

    /// A failed allocation: the scope is critical, whatever its ratio says.
    pub fn failed(&mut self, key: ScopeKey) {
        self.levels.insert(key, Level::Critical);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exhaustion::scope::fixtures::{key, usage};

    fn levels() -> Levels {
        Levels::new(Thresholds {
            warn: 0.8,
            critical: 0.95,
        })
    }

    #[test]
    fn rises_once_per_level() {
        let mut l = levels();
        assert_eq!(l.update(key(), usage(50)), None);
        assert_eq!(l.update(key(), usage(80)), Some(Level::Warn));
        assert_eq!(l.update(key(), usage(85)), None);
        assert_eq!(l.update(key(), usage(95)), Some(Level::Critical));
        assert_eq!(l.update(key(), usage(100)), None);
    }

    #[test]
    fn hovering_at_the_line_does_not_flap() {
        let mut l = levels();
        assert_eq!(l.update(key(), usage(80)), Some(Level::Warn));
        for used in [79, 80, 78, 81, 76, 80] {
            assert_eq!(l.update(key(), usage(used)), None, "at {used}");
        }
        // Clearly below (under 75%): back to ok, and a new rise warns again.
        assert_eq!(l.update(key(), usage(74)), None);
        assert_eq!(l.level(&key()), Level::Ok);
        assert_eq!(l.update(key(), usage(80)), Some(Level::Warn));
    }

    #[test]
    fn critical_steps_down_to_warn_then_ok() {
        let mut l = levels();
        l.update(key(), usage(96));
        l.update(key(), usage(91));
        assert_eq!(l.level(&key()), Level::Critical, "within hysteresis");
        l.update(key(), usage(89));
        assert_eq!(l.level(&key()), Level::Warn);
        l.update(key(), usage(10));
        assert_eq!(l.level(&key()), Level::Ok);
    }

    #[test]
    fn a_failure_is_critical_at_once() {
        let mut l = levels();
        l.failed(key());
        assert_eq!(l.level(&key()), Level::Critical);
        assert_eq!(l.update(key(), usage(100)), None, "already critical");
    }
}
