//! Sinks: where the stats and events go. Each takes the pipeline's four calls
//! (`pipeline::Sink`: event, warnings, tick, finish) and reads the same `pipeline::View`;
//! `Sinks` fans them out.
//!
//! - `console`: event lines (`events`: JSON or text records), warnings, the `summary`;
//!   stdout through `stdout`'s queue and writer thread.
//! - `report`: the JSON report on exit.
//! - `html`: a self-contained HTML page, every interval and on exit.
//! - `hdr_log`: HdrHistogram interval logs.
//! - `prometheus`: metrics, served over HTTP by `metrics_server`.

pub mod console;
pub mod events;
pub mod hdr_log;
pub mod html;
pub mod metrics_server;
pub mod prometheus;
pub mod report;
pub mod stdout;
pub mod summary;

use std::{
    io::{self, Write},
    path::Path,
};

use tracing::warn;

use crate::{
    error::Fatal,
    event::Event,
    exhaustion::{range::PortRange, warning::Warning},
    findings::{Finding, SynSent},
    pipeline::{Sink, View},
    sys::output::{OutputError, OutputFile},
    track::Outcome,
};

/// Every sink of a trace. The terminal is always there; the rest as asked for.
pub struct Sinks<W: Write> {
    pub console: console::Console<W>,
    pub hdr_log: Option<hdr_log::HdrLog>,
    pub metrics: Option<prometheus::Metrics>,
    pub report: Option<report::ReportFile>,
    pub html: Option<html::HtmlFile>,
}

impl<W: console::Output> Sink for Sinks<W> {
    fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.event(event, outcome)?;
        }
        if let Some(html) = self.html.as_mut() {
            html.event(event, outcome)?;
        }
        self.console.event(event, outcome)
    }

    fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
        if let Some(html) = self.html.as_mut() {
            html.warnings(warnings)?;
        }
        self.console.warnings(warnings)
    }

    fn range(&mut self, netns: u32, range: &PortRange) -> io::Result<()> {
        self.console.range(netns, range)
    }

    fn existing(&mut self, event: &Event) -> io::Result<()> {
        self.console.existing(event)
    }

    fn held(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        self.console.held(event, outcome)
    }

    fn existing_gone(&mut self, event: &Event) -> io::Result<()> {
        self.console.existing_gone(event)
    }

    // The report and the metrics read the findings in force from the view.
    fn findings(&mut self, findings: &[Finding]) -> io::Result<()> {
        self.console.findings(findings)
    }

    fn syn_sent(&mut self, changes: &[SynSent]) -> io::Result<()> {
        self.console.syn_sent(changes)
    }

    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        if let Some(log) = self.hdr_log.as_mut() {
            log.tick(view)?;
        }
        if let Some(html) = self.html.as_mut() {
            html.tick(view)?;
        }
        self.console.tick(view)
    }

    /// Every sink has its last look whichever fails: a console gone (EPIPE) must not cost
    /// the report. The files first, the terminal (the likeliest to fail) last.
    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        first_error([
            self.hdr_log.as_mut().map_or(Ok(()), |log| log.finish(view)),
            self.report
                .as_mut()
                .map_or(Ok(()), |report| report.finish(view)),
            self.html.as_mut().map_or(Ok(()), |html| html.finish(view)),
            self.console.finish(view),
        ])
    }
}

/// The first of `results`' errors; the others are logged, not lost.
fn first_error(results: impl IntoIterator<Item = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut first = Ok(());
    for result in results {
        match (result, &first) {
            (Err(err), Ok(())) => first = Err(err),
            (Err(err), Err(_)) => warn!("{err:#}"),
            (Ok(()), _) => {}
        }
    }
    first
}

/// `--report`, `--hdr-log` or `--html` (`flag`) checked and its temporary file created, before
/// anything is attached: an output that cannot be written is the operator's to fix first.
pub fn prepare_output(flag: &str, path: &Path) -> Result<OutputFile, Fatal> {
    OutputFile::prepare(path)
        .map_err(|err| Fatal::CannotWrite(format!("cannot write {flag}: {err}")))
}

impl From<OutputError> for Fatal {
    fn from(err: OutputError) -> Self {
        Fatal::CannotWrite(err.to_string())
    }
}

/// `err` with the exit code for an output that cannot be written when that is its cause
/// (a full disk at the finish), else as it was.
pub fn output_fatal(err: Fatal) -> Fatal {
    match err {
        Fatal::Other(err) if err.chain().any(|cause| cause.is::<OutputError>()) => {
            Fatal::CannotWrite(format!("{err:#}"))
        }
        other => other,
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
    fn first_error_keeps_the_first_and_runs_all() {
        assert!(first_error([Ok(()), Ok(())]).is_ok());
        let err = first_error([
            Ok(()),
            Err(anyhow::anyhow!("one")),
            Err(anyhow::anyhow!("two")),
        ])
        .expect_err("an error");
        assert_eq!(err.to_string(), "one");
    }

    #[test]
    fn output_errors_get_their_own_exit_code() {
        let write = OutputError::Write {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let err = output_fatal(Fatal::Other(anyhow::Error::new(write).context("finishing")));
        assert_eq!(err.exit_code(), 6);
        assert!(err.to_string().contains("/x"), "{err}");
        let other = output_fatal(Fatal::Other(anyhow::anyhow!("something else")));
        assert_eq!(other.exit_code(), 1);
        let err = prepare_output("--report", Path::new("/")).expect_err("a directory");
        assert_eq!(err.exit_code(), 6);
        assert!(
            err.to_string()
                .starts_with("cannot write --report: / names a directory"),
            "{err}"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ns(0), "0ns");
        assert_eq!(human_ns(1_500), "1.5us");
        assert_eq!(human_ns(2_000_000), "2.0ms");
        assert_eq!(human_ns(60_000_000_000), "1.0m");
        assert_eq!(human_ns(5_400_000_000_000), "1.5h");
    }
}
