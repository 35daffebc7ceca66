//! `port-trace` (no subcommand): trace until a signal or `--duration` ends it. This is where
//! the I/O is: the probes' ring buffers, the clock, the TIME_WAIT watcher's and snapshot's
//! sock_diag reads, the metrics endpoint; the rules are the pipeline's.

use std::{future::pending, io::Write, net::SocketAddr, time::Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    signal::unix::{Signal, SignalKind, signal},
};
use tracing::warn;

use crate::{
    cli::Cli,
    error::Fatal,
    event::decode,
    exhaustion::{Exhaustion, level::Thresholds},
    pipeline::{self, Pipeline},
    probes::{Backend, ProbeConfig, Probes},
    sinks::{
        Sinks,
        console::Console,
        events::ReadyRecord,
        hdr_log::HdrLog,
        metrics_server,
        prometheus::{self, Metrics},
        report::ReportFile,
    },
    sys::{
        clock::{WallClock, monotonic_ns},
        sock_diag,
    },
    track::{
        reconcile::{self, Matching, Reconciler},
        snapshot::Snapshot,
        time_wait::TimeWaitWatcher,
    },
};

pub async fn run(cli: Cli) -> Result<(), Fatal> {
    let mut trace = Trace::start(&cli).await?;
    trace.run(&cli).await?;
    trace.finish()
}

/// A trace in progress: what is attached, the rings it reads, the pipeline and its sinks.
struct Trace {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    failures: AsyncFd<RingBuf<MapData>>,
    pipeline: Pipeline,
    sinks: Sinks<std::io::BufWriter<std::io::StdoutLock<'static>>>,
    exporter: Option<TcpListener>,
    sigint: Signal,
    sigterm: Signal,
}

impl Trace {
    /// Attaches, takes the start-up snapshot, says `ready`.
    async fn start(cli: &Cli) -> Result<Self, Fatal> {
        // Before attaching anything: an address in use is the operator's to fix first.
        let exporter = cli.prometheus.map(metrics_server::listen).transpose()?;
        let exporter_addr: Option<SocketAddr> = match &exporter {
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
        let ring = watch(probes.take_events()?)?;
        let failures = watch(probes.take_failures()?)?;
        let clock = WallClock::now();
        let started = Instant::now();
        let started_ns = monotonic_ns();
        // Before `ready`: whoever waits for it may signal us at once.
        let sigint = signal(SignalKind::interrupt())?;
        let sigterm = signal(SignalKind::terminate())?;

        // Sockets that hold ports already: counted from the first second.
        let snapshot = Snapshot::take(&filter);
        // Start-up parsed megabytes of kernel BTF and dumped every socket: give that memory
        // back, so what the daemon holds from here on is what it keeps.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        let mut console = Console::stdout(cli.events, cli.quiet, clock);
        console.start(&ReadyRecord {
            record: "ready",
            backend: probes.backend,
            programs: &probes.programs,
            version: env!("CARGO_PKG_VERSION"),
            prometheus: exporter_addr,
        })?;

        let mut sinks = Sinks {
            console,
            hdr_log: None,
            metrics: match exporter {
                Some(_) => Some(
                    Metrics::new(probes.backend.as_str(), env!("CARGO_PKG_VERSION"))
                        .context("setting up the Prometheus metrics")?,
                ),
                None => None,
            },
            report: cli.report.clone().map(|path| ReportFile {
                path,
                backend: probes.backend,
            }),
        };
        let thresholds = Thresholds {
            warn: cli.warn_at / 100.0,
            critical: cli.critical_at / 100.0,
        };
        let mut pipeline = Pipeline::new(
            pipeline::Config {
                filter,
                keep_intervals: cli.hdr_log.is_some(),
                started_ns,
            },
            snapshot,
            Exhaustion::new(thresholds),
        );
        pipeline.check_ranges(monotonic_ns(), &mut sinks)?;
        sinks.console.flush()?;
        // HdrHistogram interval log: one interval per summary, and the last one at exit.
        if let Some(path) = &cli.hdr_log {
            sinks.hdr_log = Some(HdrLog::create(path, started)?);
        }
        Ok(Self {
            probes,
            ring,
            failures,
            pipeline,
            sinks,
            exporter,
            sigint,
            sigterm,
        })
    }

    /// Until a signal or the deadline.
    async fn run(&mut self, cli: &Cli) -> Result<(), Fatal> {
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
        let sees_time_wait_end = self.probes.sees_time_wait_end();
        let mut reconciler = Reconciler::new(
            Matching {
                kernel_cookies: self.probes.backend == Backend::Tracepoint,
                bound_only_listed: sock_diag::lists_bound_only(),
            },
            u64::try_from(cli.reconcile_every.as_nanos()).unwrap_or(u64::MAX),
            monotonic_ns(),
        );
        let mut reconcile_ticker = tokio::time::interval(RECONCILE_CHECK);

        loop {
            tokio::select! {
                // Allocations before failures, whichever woke us: a failure comes after the
                // allocations that used the range up, and so do the warnings they raise.
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("waiting on the ring buffer")?;
                    drain(&mut self.pipeline, guard.get_inner_mut(), &mut self.sinks)?;
                    guard.clear_ready();
                    drain(&mut self.pipeline, self.failures.get_mut(), &mut self.sinks)?;
                }
                guard = self.failures.readable_mut() => {
                    drain(&mut self.pipeline, self.ring.get_mut(), &mut self.sinks)?;
                    let mut guard = guard.context("waiting on the failure ring buffer")?;
                    drain(&mut self.pipeline, guard.get_inner_mut(), &mut self.sinks)?;
                    guard.clear_ready();
                }
                // The kernel wakes us only for a batch (or a failure); the rest is drained here.
                _ = drain_ticker.tick() => self.drain_both()?,
                _ = time_wait_ticker.tick(), if !sees_time_wait_end => {
                    for (event, outcome) in time_wait.poll(&mut self.pipeline.tracker) {
                        self.pipeline.emit(&event, outcome, &mut self.sinks)?;
                    }
                    self.sinks.console.flush()?;
                }
                _ = reconcile_ticker.tick() => self.reconcile(&mut reconciler)?,
                _ = ticker.tick() => {
                    let gone = self.pipeline.snapshot.gone();
                    let counters = self.probes.counters()?;
                    self.pipeline.tick(&gone, counters, monotonic_ns(), &mut self.sinks)?;
                }
                connection = accept(self.exporter.as_ref()) => match connection {
                    Ok((stream, _)) => self.scrape(stream)?,
                    // Out of file descriptors and the like: the next scrape may do better.
                    Err(err) => warn!("accepting a metrics connection: {err}"),
                },
                _ = self.sigint.recv() => break,
                _ = self.sigterm.recv() => break,
                _ = &mut deadline => break,
            }
        }
        Ok(())
    }

    /// Both rings, allocations first: a failure comes after the allocations that used the
    /// range up.
    fn drain_both(&mut self) -> std::io::Result<()> {
        drain(&mut self.pipeline, self.ring.get_mut(), &mut self.sinks)?;
        drain(&mut self.pipeline, self.failures.get_mut(), &mut self.sinks)
    }

    /// Frees tracked ports with no socket left in the kernel (their release was lost), when
    /// the reconciler says it is time: its period, or events lost since it last asked.
    fn reconcile(&mut self, reconciler: &mut Reconciler) -> Result<(), Fatal> {
        let lost = self.probes.counters()?.lost.total();
        if !reconciler.due(monotonic_ns(), lost) {
            return Ok(());
        }
        // Releases already delivered settle their ports first, not the dump.
        self.drain_both()?;
        let at_ns = monotonic_ns();
        let looks = reconcile::look_at(self.pipeline.tracker.namespaces());
        let gone = reconciler.judge(self.pipeline.tracker.tracked(), &looks, at_ns);
        tracing::debug!(
            namespaces = looks.len(),
            gone = gone.len(),
            lost,
            "reconciled tracked ports with the kernel's sockets"
        );
        self.pipeline
            .reconciled(&gone, monotonic_ns(), &mut self.sinks)?;
        self.sinks.console.flush()?;
        Ok(())
    }

    /// Answers one connection to the metrics endpoint.
    fn scrape(&mut self, stream: TcpStream) -> Result<(), Fatal> {
        // What the kernel has not woken us for yet counts in this scrape.
        self.drain_both()?;
        let counters = self.probes.counters()?;
        let interval = Default::default();
        let view = self.pipeline.view(monotonic_ns(), &interval);
        if let Some(metrics) = self.sinks.metrics.as_mut() {
            let body = metrics.scrape(&view, &counters);
            tokio::spawn(metrics_server::answer(
                stream,
                body,
                prometheus::CONTENT_TYPE,
            ));
        }
        Ok(())
    }

    /// Drains what the kernel wrote before we stopped, hands the sinks their last look, and
    /// detaches.
    fn finish(mut self) -> Result<(), Fatal> {
        self.drain_both()?;
        let counters = self.probes.counters()?;
        self.pipeline
            .finish(counters, monotonic_ns(), &mut self.sinks)?;
        // Dropping the probes detaches every program.
        drop(self.ring);
        drop(self.probes);
        Ok(())
    }
}

/// Hands every event waiting in `ring` to the pipeline, then flushes the event lines.
fn drain<W: Write>(
    pipeline: &mut Pipeline,
    ring: &mut RingBuf<MapData>,
    sinks: &mut Sinks<W>,
) -> std::io::Result<()> {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => pipeline.apply(&event, sinks)?,
            Err(err) => warn!("skipping an undecodable event: {err}"),
        }
    }
    sinks.console.flush()
}

/// How often the ring buffer is drained when the kernel has not woken us for a full batch:
/// how late an event line or a warning can be on a quiet host.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// How often TIME_WAIT sockets are checked (while any port is in TIME_WAIT): the error on a
/// TIME_WAIT lifetime is at most this.
const TIME_WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the reconciler is asked whether it is time to look (its period, or a loss).
const RECONCILE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

fn watch(ring: RingBuf<MapData>) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd owns the ring buffer, so the fd stays open as long as it is
    // registered.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("watching a ring buffer")
}

/// The next connection to the metrics endpoint; never, when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => pending().await,
    }
}
