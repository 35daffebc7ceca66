//! The terminal: event lines (`--events json|text`) and warnings on stdout, or warnings on
//! stderr where they stand out among the summaries; the summary every interval and at exit
//! (on stderr when stdout carries JSON events, or has no reader left). stdout goes through
//! `stdout::QueuedStdout`, so it never blocks the trace; stderr is written ignoring failure.

use std::{
    io::{self, IsTerminal as _, Write},
    time::Duration,
};

use tokio::sync::oneshot;

use super::{
    events::{EventFormat, EventRecord, ExistingRecord, FindingRecord, HeldRecord, WarningRecord},
    stdout::{Ended, QueuedStdout},
    summary,
};
use crate::{
    event::{
        Event,
        capture::{RangeLine, SynSentLine},
    },
    exhaustion::{range::PortRange, warning::Warning},
    findings::{Finding, SynSent},
    pipeline::{Sink, View},
    sys::{clock::WallClock, stdio::say},
    track::Outcome,
};

pub struct Console<W: Write> {
    out: W,
    format: Option<EventFormat>,
    /// No summaries (`--quiet`).
    quiet: bool,
    clock: WallClock,
    /// Warnings printed to a terminal stand out in colour.
    colour: bool,
    /// The summary printed last: at exit it is not printed again word for word (when the
    /// deadline and the last interval fall together).
    last_summary: Option<String>,
}

/// How long the end of a trace waits for stdout's reader to take what is queued.
const STDOUT_GRACE: Duration = Duration::from_secs(1);

impl Console<QueuedStdout> {
    /// On this process's stdout, through a queue and a writer thread (handed a batch after
    /// each batch of events). The receiver learns if stdout's writer stops first.
    pub fn stdout(
        format: Option<EventFormat>,
        quiet: bool,
        clock: WallClock,
    ) -> io::Result<(Self, oneshot::Receiver<Ended>)> {
        let (out, ended) = QueuedStdout::start()?;
        let console = Self::new(out, format, quiet, clock, io::stderr().is_terminal());
        Ok((console, ended))
    }

    /// Lines stdout's reader did not take: dropped when the queue was full, or given up
    /// at the end (see `settle`).
    pub fn dropped_lines(&self) -> u64 {
        self.out.dropped_lines()
    }

    /// At the end of a trace: gives stdout's reader a moment (`STDOUT_GRACE`) to take what
    /// is queued; what it has not taken by then counts as dropped.
    pub fn settle(&mut self) {
        self.out.settle(STDOUT_GRACE);
    }
}

/// Where stdout's lines go and whether anyone still reads them.
pub trait Output: Write {
    /// Whether stdout has no reader left (its writer stopped): the summary goes to stderr.
    fn stopped(&self) -> bool;

    /// Once, after the last line: whatever it takes to deliver what is queued.
    fn close(&mut self);
}

impl Output for QueuedStdout {
    fn stopped(&self) -> bool {
        QueuedStdout::stopped(self)
    }

    fn close(&mut self) {
        self.settle(STDOUT_GRACE);
    }
}

/// Plain stdout, for `analyze`: nothing to wait for.
impl Output for io::Stdout {
    fn stopped(&self) -> bool {
        false
    }

    fn close(&mut self) {
        let _ = self.flush();
    }
}

impl<W: Output> Console<W> {
    pub fn new(
        out: W,
        format: Option<EventFormat>,
        quiet: bool,
        clock: WallClock,
        colour: bool,
    ) -> Self {
        Self {
            out,
            format,
            quiet,
            clock,
            colour,
            last_summary: None,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The first line, once every program is attached: `ready` with JSON events, the event
    /// lines' header with text ones, else a sentence on stderr.
    pub fn start(&mut self, ready: &super::events::ReadyRecord<'_>) -> io::Result<()> {
        match self.format {
            Some(EventFormat::Json) => writeln!(
                self.out,
                "{}",
                serde_json::to_string(ready).unwrap_or_default()
            )?,
            Some(EventFormat::Text) => writeln!(self.out, "{}", super::events::text_header())?,
            None if self.quiet => {}
            None => say!(
                "port-trace: tracing with the {} backend; Ctrl-C to stop",
                ready.backend
            ),
        }
        if let (Some(addr), false) = (ready.prometheus, self.quiet) {
            say!("port-trace: Prometheus metrics at http://{addr}/metrics");
        }
        self.out.flush()
    }

    fn print_summary(&mut self, view: &View<'_>, last: bool) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let scopes = view.exhaustion.fullest(summary::FULLEST_SCOPES);
        let owner = |netns| view.exhaustion.owner(netns);
        let time_wait = |key: &_| view.causes.map_or(0, |f| f.time_wait_in(key));
        let text = summary::render(
            view.stats,
            view.elapsed_ns,
            (view.held, view.held_time_wait),
            &summary::Scopes {
                scopes: &scopes,
                owner: &owner,
                time_wait: &time_wait,
            },
            &view.findings,
        );
        if last && self.last_summary.as_ref() == Some(&text) {
            return Ok(());
        }
        self.last_summary = Some(text.clone());
        // With JSON (or text) events on stdout, stdout carries nothing else; with no reader
        // left on stdout, stderr may still have one.
        if self.format.is_some() || self.out.stopped() {
            crate::sys::stdio::eprint(format_args!("{text}"));
            Ok(())
        } else {
            write!(self.out, "{text}")?;
            self.out.flush()
        }
    }
}

impl<W: Output> Sink for Console<W> {
    fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        let Some(format) = self.format else {
            return Ok(());
        };
        let record = EventRecord::new(event, outcome, self.clock);
        let line = match format {
            EventFormat::Json => record.to_json(),
            EventFormat::Text => record.to_text(),
        };
        writeln!(self.out, "{line}")
    }

    fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
        for warning in warnings {
            let record = WarningRecord::from(warning);
            match self.format {
                Some(EventFormat::Json) => writeln!(self.out, "{}", record.to_json())?,
                Some(EventFormat::Text) => writeln!(self.out, "{}", record.to_text(false))?,
                None => say!("{}", record.to_text(self.colour)),
            }
        }
        Ok(())
    }

    /// JSON events only: what a capture needs for replay (`analyze`).
    fn range(&mut self, netns: u32, range: &PortRange) -> io::Result<()> {
        if self.format != Some(EventFormat::Json) {
            return Ok(());
        }
        let line = RangeLine {
            unprivileged_start: range.unprivileged_start,
            ..RangeLine::new(netns, range.low, range.high, range.reserved.clone())
        };
        writeln!(
            self.out,
            "{}",
            serde_json::to_string(&line).unwrap_or_default()
        )
    }

    fn syn_sent(&mut self, changes: &[SynSent]) -> io::Result<()> {
        if self.format != Some(EventFormat::Json) {
            return Ok(());
        }
        for s in changes {
            let line = SynSentLine::new(
                s.netns,
                s.destination.laddr,
                s.destination.raddr,
                s.destination.rport,
                s.count,
            );
            writeln!(
                self.out,
                "{}",
                serde_json::to_string(&line).unwrap_or_default()
            )?;
        }
        Ok(())
    }

    fn existing(&mut self, event: &Event) -> io::Result<()> {
        if self.format != Some(EventFormat::Json) {
            return Ok(());
        }
        let record = ExistingRecord::new(event, self.clock).to_json();
        writeln!(self.out, "{record}")
    }

    fn held(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        if self.format != Some(EventFormat::Json) {
            return Ok(());
        }
        let record = HeldRecord::new(event, outcome, self.clock).to_json();
        writeln!(self.out, "{record}")
    }

    fn existing_gone(&mut self, event: &Event) -> io::Result<()> {
        if self.format != Some(EventFormat::Json) {
            return Ok(());
        }
        let record = ExistingRecord {
            record: "existing_gone",
            ..ExistingRecord::new(event, self.clock)
        };
        writeln!(self.out, "{}", record.to_json())
    }

    /// As warnings: in the event stream when there is one, else on stderr.
    fn findings(&mut self, findings: &[Finding]) -> io::Result<()> {
        for finding in findings {
            let record = FindingRecord::from(finding);
            match self.format {
                Some(EventFormat::Json) => writeln!(self.out, "{}", record.to_json())?,
                Some(EventFormat::Text) => writeln!(self.out, "{}", record.to_text())?,
                None => say!("{}", record.to_text()),
            }
        }
        Ok(())
    }

    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        Ok(self.print_summary(view, false)?)
    }

    fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        if self.format == Some(EventFormat::Json) {
            // The capture's last line: how long the trace ran, for replay's rates.
            let end = serde_json::json!({
                "type": "end",
                "ts_ns": self.clock.to_epoch_ns(crate::sys::clock::monotonic_ns()),
                "elapsed_ns": view.elapsed_ns,
            });
            writeln!(self.out, "{end}")?;
        }
        self.print_summary(view, true)?;
        self.out.flush()?;
        self.out.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        exhaustion::{Exhaustion, level::Thresholds},
        stats::Stats,
    };

    fn view_at<'a>(stats: &'a Stats, exhaustion: &'a Exhaustion, elapsed_ns: u64) -> View<'a> {
        static NO_INTERVAL: std::sync::OnceLock<
            std::collections::BTreeMap<Option<crate::event::Proto>, hdrhistogram::Histogram<u64>>,
        > = std::sync::OnceLock::new();
        static NO_SOCKETS: Vec<crate::event::Event> = Vec::new();
        View {
            stats,
            exhaustion,
            findings: Vec::new(),
            causes: None,
            held: 0,
            held_time_wait: 0,
            elapsed_ns,
            sockets: &NO_SOCKETS,
            now_ns: elapsed_ns,
            interval: NO_INTERVAL.get_or_init(Default::default),
        }
    }

    /// Lines kept in memory, always read.
    impl Output for Vec<u8> {
        fn stopped(&self) -> bool {
            false
        }

        fn close(&mut self) {}
    }

    fn summaries(out: &[u8]) -> usize {
        String::from_utf8_lossy(out)
            .matches("port-trace after")
            .count()
    }

    #[test]
    fn the_last_summary_is_not_repeated_word_for_word() {
        let stats = Stats::new(false);
        let exhaustion = Exhaustion::new(Thresholds {
            warn: 0.8,
            critical: 0.95,
        });
        let mut console = Console::new(Vec::new(), None, false, WallClock::now(), false);
        // The deadline falls on the last interval: one summary, not two.
        console
            .tick(&view_at(&stats, &exhaustion, 2_000_000_000))
            .expect("tick");
        console
            .finish(&view_at(&stats, &exhaustion, 2_010_000_000))
            .expect("finish");
        assert_eq!(summaries(&console.out), 1);
        // Any change since, even only the time, is printed.
        console
            .tick(&view_at(&stats, &exhaustion, 3_000_000_000))
            .expect("tick");
        console
            .finish(&view_at(&stats, &exhaustion, 4_000_000_000))
            .expect("finish");
        assert_eq!(summaries(&console.out), 3);
    }
}
