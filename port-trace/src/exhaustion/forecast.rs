//! The forecast: how long until a scope is full at the pace its ports are taken and kept.
//! Each scope's `Pace` lives beside its held ports in the occupancy model, so an event
//! updates both with one look-up.

use super::scope::Usage;

/// How fast a scope's ports are taken and how long they are kept, for the forecast.
///
/// Little's law per scope: in steady state, ports in use = allocation rate x mean hold. With
/// `used` ports held now, ports leave at about `used / hold` a second and arrive at `rate`;
/// when arrivals win, the range runs out in `(capacity - used) / (rate - used / hold)` s.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pace {
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

    pub fn allocated(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_ns) >= DECAY_STEP_NS {
            self.rate = self.rate_at(now_ns);
            self.last_ns = now_ns;
        }
        self.rate += 1.0 / RATE_WINDOW_S;
    }

    pub fn released(&mut self, lifetime_ns: u64) {
        self.hold_sum_ns += lifetime_ns as f64;
        self.holds += 1;
    }

    /// Seconds until the scope is full at this pace; None when it is not filling.
    pub fn seconds_left(&self, usage: Usage, now_ns: u64) -> Option<f64> {
        let arrivals = self.rate_at(now_ns);
        let departures = if self.holds > 0 {
            let mean_hold_s = self.hold_sum_ns / self.holds as f64 / 1e9;
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
    use crate::exhaustion::scope::fixtures::usage;

    #[test]
    fn forecast_follows_littles_law() {
        let mut f = Pace::default();
        let s = 1_000_000_000u64;
        // 10 allocations a second for a while: the decayed rate approaches 10/s.
        for i in 0..600u64 {
            f.allocated(i * s / 10);
        }
        let now = 600 * s / 10;
        // No release seen: 50 ports of room at ~10/s is about 5 s.
        let left = f.seconds_left(usage(50), now).expect("filling");
        assert!((4.5..5.6).contains(&left), "{left}");
        // Ports held 2 s on average: 20 in use is the steady state (10/s x 2 s), so with 20
        // held the range is not filling; with 10 held it is, slowly.
        f.released(2 * s);
        assert_eq!(f.seconds_left(usage(20), now), None);
        let slow = f.seconds_left(usage(10), now).expect("filling");
        assert!(slow > left, "{slow} vs {left}");
        // Long after the last allocation the rate has faded away.
        assert_eq!(f.seconds_left(usage(10), now + 600 * s), None);
        // A scope nothing was allocated in is not filling.
        assert_eq!(Pace::default().seconds_left(usage(1), now), None);
    }

    #[test]
    fn the_rate_steps_its_decay_without_losing_it() {
        // 100k allocations a second for a second, 10 us apart: the rate, decayed in 1 ms
        // steps, matches the exact sum of each allocation's decayed weight.
        let mut f = Pace::default();
        let step = 10_000u64;
        let n = 100_000u64;
        for i in 0..n {
            f.allocated(1 + i * step);
        }
        let now = 1 + n * step;
        let exact: f64 = (0..n)
            .map(|i| (-((now - 1 - i * step) as f64 / 1e9) / RATE_WINDOW_S).exp() / RATE_WINDOW_S)
            .sum();
        let rate = f.rate_at(now);
        assert!((rate / exact - 1.0).abs() < 1e-3, "{rate} vs {exact}");
        // And a burst inside one step counts every allocation.
        let mut burst = Pace::default();
        for _ in 0..50 {
            burst.allocated(5);
        }
        assert!((burst.rate_at(5) - 5.0).abs() < 1e-6);
    }
}
