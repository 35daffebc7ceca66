//! Sinks: where the stats and events go. Terminal summary, event lines (JSON or text), the
//! JSON report on exit, HdrHistogram interval logs, and Prometheus metrics with the HTTP
//! endpoint that serves them.

pub mod events;
pub mod hdr_log;
pub mod metrics_server;
pub mod prometheus;
pub mod report;
pub mod summary;

/// Converts the kernel's CLOCK_MONOTONIC stamps to Unix-epoch nanoseconds, so event times
/// line up with logs.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_epoch_ns(self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// Nanoseconds in the unit a person reads best.
pub fn human_ns(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
    ];
    for (scale, unit) in UNITS {
        if ns >= scale {
            return format!("{:.1}{unit}", ns as f64 / scale as f64);
        }
    }
    if ns >= 1_000 {
        format!("{:.1}us", ns as f64 / 1_000.0)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_ns(0), "0ns");
        assert_eq!(human_ns(1_500), "1.5us");
        assert_eq!(human_ns(2_000_000), "2.0ms");
        assert_eq!(human_ns(60_000_000_000), "1.0m");
        assert_eq!(human_ns(5_400_000_000_000), "1.5h");
    }

    #[test]
    fn wall_clock_adds_the_offset() {
        assert_eq!(WallClock::with_offset(100).to_epoch_ns(5), 105);
        assert_eq!(WallClock::with_offset(-100).to_epoch_ns(5), 0);
    }
}
