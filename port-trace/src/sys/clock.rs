//! Clocks: the kernel's (CLOCK_MONOTONIC, as eBPF stamps events) and the wall clock.

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

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns`, which stamps
/// every event.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC).clamp(0, i128::from(u64::MAX)) as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_adds_the_offset() {
        assert_eq!(WallClock::with_offset(100).to_epoch_ns(5), 105);
        assert_eq!(WallClock::with_offset(-100).to_epoch_ns(5), 0);
    }

    #[test]
    fn monotonic_moves_forward_and_matches_the_wall_clock_offset() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
        let now_epoch = WallClock::now().to_epoch_ns(b);
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        assert!(system.abs_diff(now_epoch) < 1_000_000_000);
    }
}
