//! Warnings before exhaustion: a level per scope, with hysteresis so a scope hovering at a
//! line does not flap, and a forecast of the time left.

// foldhash, not SipHash: these maps are touched for every event, and SipHash was a
// third of the daemon's time. Keys come from the kernel, not from the network.
use foldhash::{HashMap, HashMapExt as _};
use serde::Serialize;

use crate::occupancy::{ScopeKey, Usage};

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

/// How fast a scope's ports are taken and how long they are kept, for the forecast.
#[derive(Debug, Default, Clone, Copy)]
struct Pace {
    /// Allocations per second, exponentially decayed with `RATE_WINDOW_S`.
    rate: f64,
    last_ns: u64,
    hold_sum_ns: f64,
    holds: u64,
}

/// The allocation rate's memory: rates fade over about this many seconds.
const RATE_WINDOW_S: f64 = 10.0;
/// Allocations closer together than this are counted without decaying the rate in between:
/// over 1 ms the rate fades by 1e-4 of itself, and `exp` for every allocation was a few per
/// cent of the daemon at 100k allocations a second. The decay is not lost, only taken at the
/// next step, from `last_ns`.
const DECAY_STEP_NS: u64 = 1_000_000;

impl Pace {
    fn rate_at(&self, now_ns: u64) -> f64 {
        let dt = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.rate * (-dt / RATE_WINDOW_S).exp()
    }
}

/// Little's law per scope: in steady state, ports in use = allocation rate x mean hold. With
/// `used` ports held now, ports leave at about `used / hold` a second and arrive at `rate`;
/// when arrivals win, the range runs out in `(capacity - used) / (rate - used / hold)` s.
#[derive(Debug, Default)]
pub struct Forecast {
    pace: HashMap<ScopeKey, Pace>,
}

impl Forecast {
    pub fn allocated(&mut self, key: ScopeKey, now_ns: u64) {
        let pace = self.pace.entry(key).or_default();
        if now_ns.saturating_sub(pace.last_ns) >= DECAY_STEP_NS {
            pace.rate = pace.rate_at(now_ns);
            pace.last_ns = now_ns;
        }
        pace.rate += 1.0 / RATE_WINDOW_S;
    }

    pub fn released(&mut self, key: ScopeKey, lifetime_ns: u64) {
        let pace = self.pace.entry(key).or_default();
        pace.hold_sum_ns += lifetime_ns as f64;
        pace.holds += 1;
    }

    /// Seconds until the scope is full at the current pace, or None if it is not filling.
    pub fn seconds_left(&self, key: &ScopeKey, usage: Usage, now_ns: u64) -> Option<f64> {
        let pace = self.pace.get(key)?;
        let arrivals = pace.rate_at(now_ns);
        // Without a release seen yet, nothing is known to leave.
        let departures = if pace.holds > 0 {
            let mean_hold_s = pace.hold_sum_ns / pace.holds as f64 / 1e9;
            f64::from(usage.used) / mean_hold_s.max(1e-9)
        } else {
            0.0
        };
        let growth = arrivals - departures;
        let room = f64::from(usage.capacity.saturating_sub(usage.used));
        (growth > 1e-9).then(|| room / growth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{events::Proto, occupancy::Scope};

    fn key() -> ScopeKey {
        ScopeKey {
            netns: 1,
            proto: Proto::Tcp,
            scope: Scope::Namespace,
        }
    }

    fn usage(used: u32) -> Usage {
        Usage {
            used,
            capacity: 100,
        }
    }

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

    #[test]
    fn forecast_follows_littles_law() {
        let mut f = Forecast::default();
        let s = 1_000_000_000u64;
        // 10 allocations a second for a while: the decayed rate approaches 10/s.
        for i in 0..600u64 {
            f.allocated(key(), i * s / 10);
        }
        let now = 600 * s / 10;
        // No release seen: 50 ports of room at ~10/s is about 5 s.
        let left = f.seconds_left(&key(), usage(50), now).expect("filling");
        assert!((4.5..5.6).contains(&left), "{left}");
        // Ports held 2 s on average: 20 in use is the steady state (10/s x 2 s), so with 20
        // held the range is not filling; with 10 held it is, slowly.
        f.released(key(), 2 * s);
        assert_eq!(f.seconds_left(&key(), usage(20), now), None);
        let slow = f.seconds_left(&key(), usage(10), now).expect("filling");
        assert!(slow > left, "{slow} vs {left}");
        // Long after the last allocation the rate has faded away.
        assert_eq!(f.seconds_left(&key(), usage(10), now + 600 * s), None);
        assert_eq!(
            f.seconds_left(&ScopeKey { netns: 2, ..key() }, usage(1), now),
            None
        );
    }

    #[test]
    fn the_rate_steps_its_decay_without_losing_it() {
        // 100k allocations a second for a second, 10 us apart: the rate, decayed in 1 ms
        // steps, matches the exact sum of each allocation's decayed weight.
        let mut f = Forecast::default();
        let step = 10_000u64;
        let n = 100_000u64;
        for i in 0..n {
            f.allocated(key(), 1 + i * step);
        }
        let now = 1 + n * step;
        let exact: f64 = (0..n)
            .map(|i| (-((now - 1 - i * step) as f64 / 1e9) / RATE_WINDOW_S).exp() / RATE_WINDOW_S)
            .sum();
        let rate = f.pace[&key()].rate_at(now);
        assert!((rate / exact - 1.0).abs() < 1e-3, "{rate} vs {exact}");
        // And a burst inside one step counts every allocation.
        let mut burst = Forecast::default();
        for _ in 0..50 {
            burst.allocated(key(), 5);
        }
        assert!((burst.pace[&key()].rate_at(5) - 5.0).abs() < 1e-6);
    }
}
