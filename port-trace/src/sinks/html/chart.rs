//! Chart geometry and SVG text, pure: scales (linear, log10), tick steps, the lifetime
//! distribution's log buckets, and an SVG writer that escapes every text it is given (comm
//! names, cgroup paths and pod names come from the trace).

use std::fmt::Write as _;

use crate::stats::DISTRIBUTION_EDGES_NS;

/// `text` safe in HTML and SVG, as element text and as a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a comm may hold any byte) are not allowed in HTML text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A linear map from a domain of values to a range of pixels (the range may run backwards,
/// as a y axis does). A domain of one value maps everything to the range's start.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Linear {
    pub fn new((d0, d1): (f64, f64), (r0, r1): (f64, f64)) -> Self {
        Self { d0, d1, r0, r1 }
    }

    pub fn at(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        if span.abs() < f64::EPSILON || !v.is_finite() {
            return self.r0;
        }
        self.r0 + (v - self.d0) / span * (self.r1 - self.r0)
    }
}

/// A log10 map: equal ratios take equal widths. Values at or below zero, or outside the
/// domain, are clamped into it.
#[derive(Debug, Clone, Copy)]
pub struct Log10 {
    linear: Linear,
    low: f64,
    high: f64,
}

impl Log10 {
    /// `low` and `high` must be positive; a `low` at or below zero is taken as 1.
    pub fn new((low, high): (f64, f64), range: (f64, f64)) -> Self {
        let low = if low > 0.0 { low } else { 1.0 };
        let high = high.max(low);
        Self {
            linear: Linear::new((low.log10(), high.log10()), range),
            low,
            high,
        }
    }

    pub fn at(&self, v: f64) -> f64 {
        self.linear.at(v.clamp(self.low, self.high).log10())
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `0..=max` into at most `n` parts,
/// and the axis top it gives (the first multiple of the step at or above `max`).
pub fn nice_step(max: f64, n: usize) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return (1.0, 1.0);
    }
    let rough = max / n.max(1) as f64;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= rough)
        .unwrap_or(10.0 * power);
    (step, (max / step).ceil() * step)
}

/// A time-axis step a person reads (seconds to days), giving at most `n` ticks over `span_ns`.
pub fn time_step_ns(span_ns: u64, n: u64) -> u64 {
    const S: u64 = 1_000_000_000;
    const STEPS: [u64; 16] = [
        S,
        2 * S,
        5 * S,
        10 * S,
        30 * S,
        60 * S,
        2 * 60 * S,
        5 * 60 * S,
        10 * 60 * S,
        30 * 60 * S,
        3_600 * S,
        2 * 3_600 * S,
        6 * 3_600 * S,
        12 * 3_600 * S,
        86_400 * S,
        7 * 86_400 * S,
    ];
    let n = n.max(1);
    STEPS
        .into_iter()
        .find(|&step| span_ns / step < n)
        .unwrap_or(STEPS[STEPS.len() - 1])
}

/// Where the distribution's first bucket (`[0, 10 us)`) starts on a log axis.
pub const LOG_FLOOR_NS: u64 = 1_000;

/// The lifetime distribution's buckets on a log axis: bucket `i` is `[low, high)` in ns, the
/// first from `LOG_FLOOR_NS`, the last to the histograms' bound (a day).
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    let high = DISTRIBUTION_EDGES_NS[i.min(DISTRIBUTION_EDGES_NS.len() - 1)];
    let low = match i {
        0 => LOG_FLOOR_NS,
        _ => DISTRIBUTION_EDGES_NS[i - 1],
    };
    (low, high)
}

/// A round duration (an axis edge) in few characters: `10µs`, `1ms`, `10s`, `1m`, `1h`, `1d`.
pub fn duration_label(ns: u64) -> String {
    const UNITS: [(u64, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "µs"),
        (1, "ns"),
    ];
    for (scale, unit) in UNITS {
        if ns >= scale {
            let v = ns as f64 / scale as f64;
            return if v == v.trunc() {
                format!("{v}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    "0".to_string()
}

/// Bar height for `count` of `most`: proportional, but any count at all is at least
/// `min_px` high, so a rare long hold does not vanish next to a million short ones.
pub fn bar_height(count: u64, most: u64, full_px: f64, min_px: f64) -> f64 {
    if count == 0 || most == 0 {
        return 0.0;
    }
    (count as f64 / most as f64 * full_px).clamp(min_px.min(full_px), full_px)
}

/// An SVG image being written.
pub struct Svg {
    out: String,
}

/// A number for SVG coordinates: one decimal is finer than a pixel and keeps pages small.
pub fn px(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

impl Svg {
    /// A new image `width` x `height` user units wide, scaling to its container; `label`
    /// says what it shows (for screen readers and as its tooltip).
    pub fn new(width: u32, height: u32, label: &str) -> Self {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{0}"><title>{0}</title>"#,
            esc(label)
        );
        Self { out }
    }

    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), class: &str) {
        let _ = write!(
            self.out,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" class="{class}"/>"#,
            px(x1),
            px(y1),
            px(x2),
            px(y2)
        );
    }

    /// A polyline through `points`, with `tooltip` (escaped) where given.
    pub fn polyline(&mut self, points: &[(f64, f64)], class: &str, tooltip: Option<&str>) {
        if points.is_empty() {
            return;
        }
        let mut d = String::with_capacity(points.len() * 10);
        for (i, (x, y)) in points.iter().enumerate() {
            let _ = write!(d, "{}{},{}", if i == 0 { "M" } else { "L" }, px(*x), px(*y));
        }
        match tooltip {
            Some(t) => {
                let _ = write!(
                    self.out,
                    r#"<path d="{d}" class="{class}"><title>{}</title></path>"#,
                    esc(t)
                );
            }
            None => {
                let _ = write!(self.out, r#"<path d="{d}" class="{class}"/>"#);
            }
        }
    }

    pub fn rect(&mut self, (x, y): (f64, f64), (w, h): (f64, f64), class: &str, tooltip: &str) {
        let _ = write!(
            self.out,
            r#"<rect x="{}" y="{}" width="{}" height="{}" class="{class}"><title>{}</title></rect>"#,
            px(x),
            px(y),
            px(w.max(0.0)),
            px(h.max(0.0)),
            esc(tooltip)
        );
    }

    /// A mark (a small circle) with its tooltip.
    pub fn dot(&mut self, (x, y): (f64, f64), r: f64, class: &str, tooltip: &str) {
        let _ = write!(
            self.out,
            r#"<circle cx="{}" cy="{}" r="{}" class="{class}"><title>{}</title></circle>"#,
            px(x),
            px(y),
            px(r),
            esc(tooltip)
        );
    }

    /// Text (escaped); `anchor` is SVG's text-anchor (start, middle, end).
    pub fn text(&mut self, (x, y): (f64, f64), anchor: &str, class: &str, text: &str) {
        let _ = write!(
            self.out,
            r#"<text x="{}" y="{}" text-anchor="{anchor}" class="{class}">{}</text>"#,
            px(x),
            px(y),
            esc(text)
        );
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_maps_ends_and_runs_backwards_for_y() {
        let x = Linear::new((0.0, 10.0), (50.0, 150.0));
        assert_eq!(x.at(0.0), 50.0);
        assert_eq!(x.at(10.0), 150.0);
        assert_eq!(x.at(5.0), 100.0);
        let y = Linear::new((0.0, 100.0), (200.0, 0.0));
        assert_eq!(y.at(25.0), 150.0);
        // A domain of one value does not divide by zero.
        assert_eq!(Linear::new((3.0, 3.0), (7.0, 9.0)).at(3.0), 7.0);
        assert_eq!(x.at(f64::NAN), 50.0);
    }

    #[test]
    fn log_takes_equal_widths_for_equal_ratios_and_clamps() {
        let x = Log10::new((1e3, 1e6), (0.0, 300.0));
        assert!((x.at(1e3) - 0.0).abs() < 1e-9);
        assert!((x.at(1e4) - 100.0).abs() < 1e-9);
        assert!((x.at(1e6) - 300.0).abs() < 1e-9);
        assert_eq!(x.at(0.0), 0.0, "zero is clamped to the floor");
        assert!(
            (x.at(1e9) - 300.0).abs() < 1e-9,
            "beyond the top is clamped"
        );
    }

    #[test]
    fn nice_steps_are_round_and_cover_the_maximum() {
        assert_eq!(nice_step(10.0, 5), (2.0, 10.0));
        assert_eq!(nice_step(28_232.0, 4), (10_000.0, 30_000.0));
        assert_eq!(nice_step(0.37, 4), (0.1, 0.4));
        assert_eq!(nice_step(0.0, 4), (1.0, 1.0));
        assert_eq!(nice_step(f64::NAN, 4), (1.0, 1.0));
        for max in [1.0, 7.0, 99.0, 101.0, 1e6 + 1.0] {
            let (step, top) = nice_step(max, 5);
            assert!(
                top >= max && top / step <= 5.0 + 1e-9,
                "{max}: {step} {top}"
            );
        }
    }

    #[test]
    fn time_steps_keep_the_ticks_few() {
        const S: u64 = 1_000_000_000;
        assert_eq!(time_step_ns(30 * S, 6), 10 * S);
        assert_eq!(time_step_ns(86_400 * S, 6), 6 * 3_600 * S);
        assert_eq!(time_step_ns(0, 6), S);
        assert_eq!(time_step_ns(u64::MAX, 6), 7 * 86_400 * S);
    }

    #[test]
    fn buckets_tile_the_log_axis_from_a_microsecond_to_a_day() {
        assert_eq!(bucket_bounds(0), (1_000, 10_000));
        for i in 1..DISTRIBUTION_EDGES_NS.len() {
            assert_eq!(bucket_bounds(i).0, bucket_bounds(i - 1).1, "bucket {i}");
        }
        assert_eq!(
            bucket_bounds(DISTRIBUTION_EDGES_NS.len() - 1).1,
            86_400_000_000_000
        );
        // TIME_WAIT's minute is an edge: a port held for TIME_WAIT lands past it.
        assert_eq!(bucket_bounds(8), (60_000_000_000, 600_000_000_000));
    }

    #[test]
    fn edges_are_labelled_shortly() {
        assert_eq!(duration_label(1_000), "1µs");
        assert_eq!(duration_label(10_000), "10µs");
        assert_eq!(duration_label(60_000_000_000), "1m");
        assert_eq!(duration_label(600_000_000_000), "10m");
        assert_eq!(duration_label(86_400_000_000_000), "1d");
        assert_eq!(duration_label(1_500_000), "1.5ms");
        assert_eq!(duration_label(0), "0");
    }

    #[test]
    fn a_rare_count_stays_visible() {
        assert_eq!(bar_height(0, 1_000_000, 100.0, 2.0), 0.0);
        assert_eq!(bar_height(1, 1_000_000, 100.0, 2.0), 2.0);
        assert_eq!(bar_height(500_000, 1_000_000, 100.0, 2.0), 50.0);
        assert_eq!(bar_height(1_000_000, 1_000_000, 100.0, 2.0), 100.0);
    }

    #[test]
    fn text_from_the_trace_is_escaped() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(esc("a\u{1b}[31m"), "a\u{fffd}[31m");
        let mut svg = Svg::new(10, 10, "</svg><script>");
        svg.text((1.0, 2.0), "start", "t", "<b>");
        svg.rect((0.0, 0.0), (1.0, -1.0), "r", "pod \"x\"");
        let out = svg.finish();
        assert!(!out.contains("<script>") && !out.contains("<b>"), "{out}");
        assert!(
            out.contains(r#"height="0""#),
            "a negative height is none: {out}"
        );
        assert!(out.ends_with("</svg>"));
    }

    #[test]
    fn coordinates_have_at_most_one_decimal() {
        assert_eq!(px(1.0), "1");
        assert_eq!(px(1.26), "1.3");
        assert_eq!(px(-0.04), "0");
        assert_eq!(px(f64::INFINITY), "0");
    }
}
