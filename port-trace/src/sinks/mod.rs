//! Sinks: where the stats and events go. Each takes the pipeline's four calls
//! (`pipeline::Sink`: event, warnings, tick, finish) and reads the same `pipeline::View`;
//! `Sinks` fans them out.
//!
//! - `console`: event lines (`events`: JSON or text records), warnings, the `summary`;
//!   stdout through `stdout`'s queue and writer thread.
//! - `report`: the JSON report on exit.
//! - `hdr_log`: HdrHistogram interval logs.
//! - `prometheus`: metrics, served over HTTP by `metrics_server`.

pub mod console;
pub mod events;
pub mod hdr_log;
pub mod metrics_server;
pub mod prometheus;
pub mod report;
pub mod stdout;
pub mod summary;

use std::io::{self, Write};

use crate::{
    event::Event,
    exhaustion::warning::Warning,
    pipeline::{Sink, View},
    track::Outcome,
};

/// Every sink of a trace. The terminal is always there; the rest as asked for.
pub struct Sinks<W: Write> {
    pub console: console::Console<W>,
    pub hdr_log: Option<hdr_log::HdrLog>,
    pub metrics: Option<prometheus::Metrics>,
    pub report: Option<report::ReportFile>,
}

impl<W: console::Output> Sink for Sinks<W> {
    fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.event(event, outcome)?;
        }
        self.console.event(event, outcome)
    }

    fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
        self.console.warnings(warnings)
    }

    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        if let Some(log) = self.hdr_log.as_mut() {
            log.tick(view)?;
        }
        self.console.tick(view)
    }

    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        if let Some(log) = self.hdr_log.as_mut() {
            log.finish(view)?;
        }
        self.console.finish(view)?;
        if let Some(report) = self.report.as_mut() {
            report.finish(view)?;
        }
        Ok(())
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
}
