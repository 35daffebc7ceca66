//! The pipeline at run time: ring buffer -> decode -> tracker -> stats -> sinks, until a
//! signal or `--duration` ends it.

use std::{future::pending, io::Write, time::Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::warn;

use crate::{
    cli::{Cli, EventFormat},
    error::Fatal,
    events::{Event, decode},
    probes::{ProbeConfig, Probes},
    sinks::{
        WallClock,
        events::{EventRecord, ReadyRecord, text_header},
        report::Report,
        summary,
    },
    stats::Stats,
    time_wait::TimeWaitWatcher,
    tracker::{Outcome, Tracker},
};

pub async fn run(cli: Cli) -> Result<(), Fatal> {
    let mut probes = Probes::attach(&ProbeConfig {
        backend: cli.backend,
        strict: true,
        max_sockets: cli.max_sockets,
        ring_buffer_bytes: cli.ring_buffer_kib * 1024,
    })?;
    let mut ring = watch(probes.take_events()?)?;
    let mut failures = watch(probes.take_failures()?)?;
    let clock = WallClock::now();
    let started = Instant::now();
    // Before `ready`: whoever waits for it may signal us at once.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.events {
        Some(EventFormat::Json) => {
            let ready = ReadyRecord {
                record: "ready",
                backend: probes.backend,
                programs: &probes.programs,
                version: env!("CARGO_PKG_VERSION"),
            };
            writeln!(out, "{}", serde_json::to_string(&ready).unwrap_or_default())?;
        }
        Some(EventFormat::Text) => writeln!(out, "{}", text_header())?,
        None => eprintln!(
            "port-trace: tracing with the {} backend; Ctrl-C to stop",
            probes.backend
        ),
    }
    out.flush()?;
    // With JSON events on stdout, stdout carries nothing else.
    let summaries_to_stderr = cli.events.is_some();

    let mut pipeline = Pipeline {
        tracker: Tracker::default(),
        stats: Stats::default(),
        clock,
        format: cli.events,
    };
    let deadline = async {
        match cli.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => pending::<()>().await,
        }
    };
    tokio::pin!(deadline);
    let mut time_wait = TimeWaitWatcher::default();
    let mut time_wait_ticker = tokio::time::interval(TIME_WAIT_POLL);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + cli.interval, cli.interval);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
            }
            guard = failures.readable_mut() => {
                let mut guard = guard.context("waiting on the failure ring buffer")?;
                pipeline.drain(guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
            }
            _ = time_wait_ticker.tick(), if !probes.sees_time_wait_end() => {
                for (event, outcome) in time_wait.poll(&mut pipeline.tracker) {
                    pipeline.emit(&event, outcome, &mut out)?;
                }
                out.flush()?;
            }
            _ = ticker.tick() => {
                pipeline.stats.set_lost(probes.lost()?);
                let text = pipeline.summary(started);
                print_summary(&text, summaries_to_stderr, &mut out)?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }

    // Whatever the kernel wrote before we stopped still counts.
    pipeline.drain(failures.get_mut(), &mut out)?;
    pipeline.drain(ring.get_mut(), &mut out)?;
    pipeline.stats.set_lost(probes.lost()?);
    let text = pipeline.summary(started);
    print_summary(&text, summaries_to_stderr, &mut out)?;
    if let Some(path) = &cli.report {
        let held = pipeline.tracker.held();
        Report::new(&pipeline.stats, probes.backend, elapsed_ns(started), held).write(path)?;
    }
    // Dropping the probes detaches every program.
    drop(ring);
    drop(probes);
    Ok(())
}

/// The stages after the ring buffer: decode -> tracker -> stats -> event sink.
struct Pipeline {
    tracker: Tracker,
    stats: Stats,
    clock: WallClock,
    format: Option<EventFormat>,
}

impl Pipeline {
    /// Handles every event waiting in the ring buffer, then flushes the event lines.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, out: &mut dyn Write) -> std::io::Result<()> {
        while let Some(item) = ring.next() {
            let event = match decode(&item) {
                Ok(event) => event,
                Err(err) => {
                    warn!("skipping an undecodable event: {err}");
                    continue;
                }
            };
            let outcome = self.tracker.apply(&event);
            self.emit(&event, outcome, out)?;
        }
        out.flush()
    }

    /// Counts one matched event and writes its line, if events are streamed.
    fn emit(
        &mut self,
        event: &Event,
        outcome: Outcome,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.stats.record(event, outcome);
        let Some(format) = self.format else {
            return Ok(());
        };
        // The port is still held; its release line comes when TIME_WAIT ends.
        if outcome == Outcome::EnteredTimeWait {
            return Ok(());
        }
        let record = EventRecord::new(event, outcome, self.clock);
        let line = match format {
            EventFormat::Json => record.to_json(),
            EventFormat::Text => record.to_text(),
        };
        writeln!(out, "{line}")
    }

    fn summary(&self, started: Instant) -> String {
        summary::render(&self.stats, elapsed_ns(started), self.tracker.held())
    }
}

/// How often TIME_WAIT sockets are checked (while any port is in TIME_WAIT): the error on a
/// TIME_WAIT lifetime is at most this.
const TIME_WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn watch(ring: RingBuf<MapData>) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd owns the ring buffer, so the fd stays open as long as it is
    // registered.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("watching a ring buffer")
}

fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn print_summary(text: &str, to_stderr: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if to_stderr {
        eprint!("{text}");
        Ok(())
    } else {
        write!(out, "{text}")?;
        out.flush()
    }
}
