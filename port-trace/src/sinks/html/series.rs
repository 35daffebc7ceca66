//! A time series of per-interval samples in bounded memory: at most `POINTS` points
//! whatever the trace's length. When full, neighbours are merged pairwise and each later
//! point takes twice as many intervals, so a week-long trace makes a page the size of an
//! hour's.

/// The most points a series keeps (even: it is halved when full).
pub const POINTS: usize = 240;

/// How a sample takes in the one after it: counts add up, levels keep their peak.
pub trait Merge {
    fn merge(&mut self, later: &Self);
}

/// One point: the samples of `[start_ns, end_ns)`, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<T> {
    pub start_ns: u64,
    pub end_ns: u64,
    pub value: T,
}

impl<T: Merge> Point<T> {
    fn absorb(&mut self, later: &Point<T>) {
        self.end_ns = later.end_ns;
        self.value.merge(&later.value);
    }
}

#[derive(Debug, Clone)]
pub struct Series<T> {
    points: Vec<Point<T>>,
    /// Samples per point now (doubles at each halving).
    stride: u32,
    /// The point being filled, and how many samples it has.
    pending: Option<(Point<T>, u32)>,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Self {
            points: Vec::with_capacity(POINTS),
            stride: 1,
            pending: None,
        }
    }
}

impl<T: Merge + Clone> Series<T> {
    /// One interval's sample.
    pub fn push(&mut self, start_ns: u64, end_ns: u64, value: T) {
        let sample = Point {
            start_ns,
            end_ns,
            value,
        };
        let (point, samples) = match self.pending.take() {
            Some((mut point, samples)) => {
                point.absorb(&sample);
                (point, samples + 1)
            }
            None => (sample, 1),
        };
        if samples < self.stride {
            self.pending = Some((point, samples));
            return;
        }
        self.points.push(point);
        if self.points.len() == POINTS {
            self.halve();
        }
    }

    /// Merges neighbours pairwise: half as many points, each twice as long.
    fn halve(&mut self) {
        let old = std::mem::take(&mut self.points);
        let mut pairs = old.into_iter();
        while let Some(mut first) = pairs.next() {
            if let Some(second) = pairs.next() {
                first.absorb(&second);
            }
            self.points.push(first);
        }
        self.stride = self.stride.saturating_mul(2);
    }

    /// Every point in time order, the one being filled last.
    pub fn points(&self) -> impl Iterator<Item = &Point<T>> + '_ {
        self.points
            .iter()
            .chain(self.pending.as_ref().map(|(point, _)| point))
    }

    pub fn len(&self) -> usize {
        self.points.len() + usize::from(self.pending.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `f` to every point's value (a scope's slot reused for another scope).
    pub fn for_each_value(&mut self, mut f: impl FnMut(&mut T)) {
        for point in &mut self.points {
            f(&mut point.value);
        }
        if let Some((point, _)) = self.pending.as_mut() {
            f(&mut point.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A count (adds up) and a level (keeps its peak).
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct S {
        count: u64,
        peak: u32,
    }

    impl Merge for S {
        fn merge(&mut self, later: &Self) {
            self.count += later.count;
            self.peak = self.peak.max(later.peak);
        }
    }

    fn filled(samples: u64) -> Series<S> {
        let mut series = Series::default();
        for i in 0..samples {
            series.push(
                i * 10,
                (i + 1) * 10,
                S {
                    count: 1,
                    peak: (i % 97) as u32,
                },
            );
        }
        series
    }

    #[test]
    fn short_series_are_kept_as_they_are() {
        let series = filled(5);
        assert_eq!(series.len(), 5);
        let first = series.points().next().expect("a point");
        assert_eq!(
            (first.start_ns, first.end_ns, first.value.count),
            (0, 10, 1)
        );
    }

    #[test]
    fn long_series_stay_bounded_and_lose_no_count_or_peak() {
        for samples in [POINTS as u64, POINTS as u64 + 1, 1_000, 8_640, 60_480] {
            let series = filled(samples);
            assert!(series.len() <= POINTS, "{samples}: {}", series.len());
            assert!(series.len() >= POINTS / 2, "{samples}: {}", series.len());
            let total: u64 = series.points().map(|p| p.value.count).sum();
            assert_eq!(total, samples, "every sample counted once");
            let peak = series.points().map(|p| p.value.peak).max();
            assert_eq!(peak, Some((samples.min(97) - 1) as u32));
            // Contiguous, in order, covering the whole trace.
            let points: Vec<_> = series.points().collect();
            assert_eq!(points[0].start_ns, 0);
            assert_eq!(points[points.len() - 1].end_ns, samples * 10);
            for pair in points.windows(2) {
                assert_eq!(pair[0].end_ns, pair[1].start_ns);
            }
        }
    }

    #[test]
    fn after_halving_each_point_spans_twice_the_intervals() {
        let series = filled(POINTS as u64 + 2);
        let points: Vec<_> = series.points().collect();
        assert_eq!(points.len(), POINTS / 2 + 1);
        assert!(points.iter().all(|p| p.end_ns - p.start_ns == 20));
        assert!(points.iter().all(|p| p.value.count == 2));
    }

    #[test]
    fn a_partial_point_is_shown_last() {
        let series = filled(POINTS as u64 + 1);
        let last = series.points().last().expect("a point");
        assert_eq!(last.value.count, 1, "one sample into a point of two");
        assert_eq!(last.end_ns - last.start_ns, 10);
    }
}
