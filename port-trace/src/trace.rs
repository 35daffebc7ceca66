//! The pipeline at run time: ring buffer -> decode -> tracker -> stats -> sinks, until a
//! signal or `--duration` ends it.

use std::{
    future::pending,
    io::Write,
    time::{Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use hdrhistogram::serialization::V2DeflateSerializer;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};
use tracing::warn;

use crate::{
    cli::{Cli, EventFormat},
    error::Fatal,
    events::{Event, decode},
    exhaustion::Exhaustion,
    filter::Filter,
    occupancy::{ScopeKey, Usage},
    probes::{ProbeConfig, Probes},
    sinks::events::WarningRecord,
    sinks::{
        WallClock,
        events::{EventRecord, ReadyRecord, text_header},
        hdr_log, metrics_server,
        prometheus::{self, Metrics},
        report::Report,
        summary,
    },
    snapshot::Snapshot,
    stats::{LostCounts, Stats},
    time_wait::{TimeWaitWatcher, monotonic_ns},
    tracker::{Outcome, Tracker},
    warnings::{Level, Thresholds},
};

pub async fn run(cli: Cli) -> Result<(), Fatal> {
    // Before attaching anything: an address in use is the operator's to fix first.
    let exporter = cli.prometheus.map(metrics_server::listen).transpose()?;
    let exporter_addr = match &exporter {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let filter = cli.filter();
    let mut probes = Probes::attach(&ProbeConfig {
        backend: cli.backend,
        strict: true,
        max_sockets: cli.max_sockets,
        ring_buffer_bytes: cli.ring_buffer_kib * 1024,
        filter: filter.kernel(),
    })?;
    let mut ring = watch(probes.take_events()?)?;
    let mut failures = watch(probes.take_failures()?)?;
    let clock = WallClock::now();
    let started = Instant::now();
    // Before `ready`: whoever waits for it may signal us at once.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    // Sockets that hold ports already: counted from the first second.
    let (snapshot, existing) = Snapshot::take(&filter);
    // Start-up parsed megabytes of kernel BTF and dumped every socket: give that memory
    // back, so what the daemon holds from here on is what it keeps.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.events {
        Some(EventFormat::Json) => {
            let ready = ReadyRecord {
                record: "ready",
                backend: probes.backend.as_str(),
                programs: &probes.programs,
                version: env!("CARGO_PKG_VERSION"),
                prometheus: exporter_addr,
            };
            writeln!(out, "{}", serde_json::to_string(&ready).unwrap_or_default())?;
        }
        Some(EventFormat::Text) => writeln!(out, "{}", text_header())?,
        None if cli.quiet => {}
        None => eprintln!(
            "port-trace: tracing with the {} backend; Ctrl-C to stop",
            probes.backend
        ),
    }
    if let (Some(addr), false) = (exporter_addr, cli.quiet) {
        eprintln!("port-trace: Prometheus metrics at http://{addr}/metrics");
    }
    out.flush()?;
    // With JSON events on stdout, stdout carries nothing else.
    let summaries_to_stderr = cli.events.is_some();

    let mut pipeline = Pipeline {
        tracker: Tracker::default(),
        stats: Stats::new(cli.hdr_log.is_some()),
        exhaustion: Exhaustion::new(Thresholds {
            warn: cli.warn_at / 100.0,
            critical: cli.critical_at / 100.0,
        }),
        snapshot,
        filter,
        clock,
        format: cli.events,
        metrics: match exporter {
            Some(_) => Some(
                Metrics::new(probes.backend.as_str(), env!("CARGO_PKG_VERSION"))
                    .context("setting up the Prometheus metrics")?,
            ),
            None => None,
        },
        // SAFETY: isatty has no preconditions.
        colour: unsafe { libc::isatty(libc::STDERR_FILENO) } == 1,
    };
    for event in &existing {
        pipeline.exhaustion.hold_existing(event);
    }
    let warnings = pipeline.exhaustion.refresh(monotonic_ns());
    pipeline.warn(&warnings, &mut out)?;
    out.flush()?;
    // HdrHistogram interval log: one interval per summary, and the last one at exit.
    let mut hdr_file = match &cli.hdr_log {
        Some(path) => Some(
            std::fs::File::create(path)
                .with_context(|| format!("creating the HdrHistogram log {}", path.display()))?,
        ),
        None => None,
    };
    let mut hdr_serializer = V2DeflateSerializer::new();
    let mut hdr_log = match hdr_file.as_mut() {
        Some(file) => Some(hdr_log::start(
            file,
            &mut hdr_serializer,
            SystemTime::now(),
        )?),
        None => None,
    };
    let mut interval_started = Instant::now();
    let deadline = async {
        match cli.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => pending::<()>().await,
        }
    };
    tokio::pin!(deadline);
    let mut time_wait = TimeWaitWatcher::default();
    let mut time_wait_ticker = tokio::time::interval(TIME_WAIT_POLL);
    let mut drain_ticker = tokio::time::interval(DRAIN_INTERVAL);
    drain_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + cli.interval, cli.interval);

    loop {
        tokio::select! {
            // Allocations before failures, whichever woke us: a failure comes after the
            // allocations that used the range up, and so do the warnings they raise.
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                pipeline.drain(guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
                pipeline.drain(failures.get_mut(), &mut out)?;
            }
            guard = failures.readable_mut() => {
                pipeline.drain(ring.get_mut(), &mut out)?;
                let mut guard = guard.context("waiting on the failure ring buffer")?;
                pipeline.drain(guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
            }
            // The kernel wakes us only for a batch (or a failure); the rest is drained here.
            _ = drain_ticker.tick() => {
                pipeline.drain_both(ring.get_mut(), failures.get_mut(), &mut out)?;
            }
            _ = time_wait_ticker.tick(), if !probes.sees_time_wait_end() => {
                for (event, outcome) in time_wait.poll(&mut pipeline.tracker) {
                    pipeline.emit(&event, outcome, &mut out)?;
                }
                out.flush()?;
            }
            _ = ticker.tick() => {
                for event in pipeline.snapshot.gone() {
                    pipeline.exhaustion.free_existing(&event);
                }
                let warnings = pipeline.exhaustion.refresh(monotonic_ns());
                pipeline.warn(&warnings, &mut out)?;
                pipeline.stats.set_lost(probes.lost()?);
                if let Some(log) = hdr_log.as_mut() {
                    let now = Instant::now();
                    let histograms = pipeline.stats.take_interval();
                    let since = interval_started.duration_since(started);
                    hdr_log::write_interval(log, &histograms, since, now - interval_started)?;
                    interval_started = now;
                }
                if !cli.quiet {
                    let text = pipeline.summary(started);
                    print_summary(&text, summaries_to_stderr, &mut out)?;
                }
            }
            connection = accept(exporter.as_ref()) => {
                match connection {
                    Ok((stream, _)) => {
                        // What the kernel has not woken us for yet counts in this scrape.
                        pipeline.drain_both(ring.get_mut(), failures.get_mut(), &mut out)?;
                        let lost = probes.lost()?;
                        if let Some(body) = pipeline.metrics_now(lost) {
                            tokio::spawn(metrics_server::answer(stream, body, prometheus::CONTENT_TYPE));
                        }
                    }
                    // Out of file descriptors and the like: the next scrape may do better.
                    Err(err) => warn!("accepting a metrics connection: {err}"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }

    // Whatever the kernel wrote before we stopped still counts.
    pipeline.drain_both(ring.get_mut(), failures.get_mut(), &mut out)?;
    pipeline.stats.set_lost(probes.lost()?);
    if let Some(log) = hdr_log.as_mut() {
        let histograms = pipeline.stats.take_interval();
        let since = interval_started.duration_since(started);
        hdr_log::write_interval(log, &histograms, since, interval_started.elapsed())?;
    }
    if !cli.quiet {
        let text = pipeline.summary(started);
        print_summary(&text, summaries_to_stderr, &mut out)?;
    }
    if let Some(path) = &cli.report {
        let held = pipeline.tracker.held();
        let mut report = Report::new(
            &pipeline.stats,
            probes.backend.as_str(),
            elapsed_ns(started),
            held,
        );
        report.scopes = pipeline
            .fullest_scopes(REPORT_SCOPES)
            .iter()
            .map(Into::into)
            .collect();
        report.write(path)?;
    }
    // Dropping the probes detaches every program.
    drop(ring);
    drop(probes);
    Ok(())
}

/// The stages after the ring buffer: decode -> tracker -> stats and exhaustion -> sinks.
struct Pipeline {
    tracker: Tracker,
    stats: Stats,
    exhaustion: Exhaustion,
    /// Sockets found at start-up, until they are gone.
    snapshot: Snapshot,
    /// What is traced (netns, proto) and reported (pid, comm, family).
    filter: Filter,
    clock: WallClock,
    format: Option<EventFormat>,
    /// Prometheus metrics, when served.
    metrics: Option<Metrics>,
    /// Warnings printed to a terminal stand out in colour.
    colour: bool,
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
            // A connect() that took over a TIME_WAIT socket's connection freed that port first.
            for (freed, freed_outcome) in self.tracker.take_taken_over() {
                self.emit(&freed, freed_outcome, out)?;
            }
            if outcome == Outcome::Allocated
                && let Some(copy) = self.snapshot.take_over(event.netns, event.cookie)
            {
                self.exhaustion.free_existing(&copy);
            }
            self.emit(&event, outcome, out)?;
        }
        out.flush()
    }

    /// Both rings, allocations first: a failure comes after the allocations that used the
    /// range up.
    fn drain_both(
        &mut self,
        ring: &mut RingBuf<MapData>,
        failures: &mut RingBuf<MapData>,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.drain(ring, out)?;
        self.drain(failures, out)
    }

    /// Counts one matched event and writes its line, if events are streamed.
    fn emit(
        &mut self,
        event: &Event,
        outcome: Outcome,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        // Namespaces beyond what the kernel filter holds are left out here.
        if !self.filter.traces(event.netns, event.proto) {
            return Ok(());
        }
        let warnings = self.exhaustion.observe(event, outcome);
        // A port asked for by number counts in occupancy only: it is no allocation.
        if event.explicit || !self.filter.matches(event) {
            return self.warn(&warnings, out);
        }
        self.stats.record(event, outcome);
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.record(event, outcome);
        }
        // The port is still held while in TIME_WAIT; its release line comes when that ends.
        if let Some(format) = self.format
            && outcome != Outcome::EnteredTimeWait
        {
            let record = EventRecord::new(event, outcome, self.clock);
            let line = match format {
                EventFormat::Json => record.to_json(),
                EventFormat::Text => record.to_text(),
            };
            writeln!(out, "{line}")?;
        }
        self.warn(&warnings, out)
    }

    /// Warnings go with the event stream when there is one, else to stderr, where they stand
    /// out among the summaries.
    fn warn(&self, warnings: &[WarningRecord], out: &mut dyn Write) -> std::io::Result<()> {
        for warning in warnings {
            match self.format {
                Some(EventFormat::Json) => writeln!(out, "{}", warning.to_json())?,
                Some(EventFormat::Text) => writeln!(out, "{}", warning.to_text(false))?,
                None => eprintln!("{}", warning.to_text(self.colour)),
            }
        }
        Ok(())
    }

    fn fullest_scopes(&self, n: usize) -> Vec<(ScopeKey, Usage, Level)> {
        self.exhaustion
            .occupancy
            .fullest(n)
            .into_iter()
            .map(|(key, usage)| (key, usage, self.exhaustion.level(&key)))
            .collect()
    }

    /// The metrics as of now, gauges included; None when they are not served.
    fn metrics_now(&mut self, lost: LostCounts) -> Option<String> {
        let scopes = self.exhaustion.occupancy.fullest(usize::MAX);
        let held = self.tracker.held();
        let metrics = self.metrics.as_mut()?;
        metrics.set_state(&scopes, lost, held);
        Some(metrics.render())
    }

    fn summary(&self, started: Instant) -> String {
        let scopes = self.fullest_scopes(summary::FULLEST_SCOPES);
        summary::render(
            &self.stats,
            elapsed_ns(started),
            self.tracker.held(),
            &scopes,
        )
    }
}

/// How many of the fullest scopes the report lists.
const REPORT_SCOPES: usize = 50;

/// How often the ring buffer is drained when the kernel has not woken us for a full batch:
/// how late an event line or a warning can be on a quiet host.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// How often TIME_WAIT sockets are checked (while any port is in TIME_WAIT): the error on a
/// TIME_WAIT lifetime is at most this.
const TIME_WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn watch(ring: RingBuf<MapData>) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd owns the ring buffer, so the fd stays open as long as it is
    // registered.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("watching a ring buffer")
}

/// The next connection to the metrics endpoint; never, when there is none.
async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => pending().await,
    }
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
