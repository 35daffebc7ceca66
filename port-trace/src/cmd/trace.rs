//! `port-trace` (no subcommand): trace until a signal or `--duration` ends it. This is where
//! the I/O is: the probes' ring buffers, the clock, the TIME_WAIT watcher's and snapshot's
//! sock_diag reads, the metrics endpoint; the rules are the pipeline's.

use std::{future::pending, time::Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    sync::oneshot,
};
use tracing::{debug, warn};

use crate::{
    cli::Cli,
    error::Fatal,
    event::decode,
    exhaustion::{Exhaustion, level::Thresholds, scope::Destination},
    findings::SynSent,
    pipeline::{self, Pipeline},
    probes::{Backend, KernelCounters, ProbeConfig, Probes},
    sinks::{
        self, Sinks,
        console::Console,
        events::ReadyRecord,
        hdr_log::HdrLog,
        html::{self, HtmlFile},
        metrics_server,
        prometheus::Metrics,
        report::ReportFile,
        stdout::{Ended, QueuedStdout},
    },
    sys::{
        clock::{WallClock, monotonic_ns},
        netns, procfs, sock_diag,
    },
    track::{
        reconcile::{self, Matching, Reconciler},
        snapshot::Snapshot,
        time_wait::TimeWaitWatcher,
    },
    workload::Resolver,
};

pub async fn run(cli: Cli) -> Result<(), Fatal> {
    let mut trace = Trace::start(&cli).await?;
    // From `ready` on, however tracing stops (a signal, the deadline, stdout gone), the
    // sinks have their last look: the report is written.
    let ran = async {
        trace.begin()?;
        trace.run(&cli).await
    }
    .await;
    let finished = trace.finish();
    // A reader that went away ends the trace as wanted (exit 0); a failed write does not.
    let ran = ran.and_then(|stdout_ended| match stdout_ended {
        Some(Ended::Failed(err)) => {
            Err(anyhow::Error::new(err).context("writing to stdout").into())
        }
        Some(Ended::ReaderGone) | None => Ok(()),
    });
    ran.and(finished).map_err(sinks::output_fatal)
}

/// A trace in progress: what is attached, the rings it reads, the pipeline and its sinks.
struct Trace {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    failures: AsyncFd<RingBuf<MapData>>,
    pipeline: Pipeline,
    /// Names each event's workload before the pipeline sees it.
    workloads: Resolver,
    sinks: Sinks<QueuedStdout>,
    /// CLOCK_MONOTONIC to the wall clock, for `ready`'s time.
    clock: WallClock,
    exporter: Option<metrics_server::Exporter>,
    sigint: Signal,
    sigterm: Signal,
    /// The terminal or ssh session went away: the same orderly end as SIGTERM.
    sighup: Signal,
    /// Fires if stdout's writer stops first: its reader gone, or a failed write.
    stdout_ended: oneshot::Receiver<Ended>,
}

impl Trace {
    /// Attaches and takes the start-up snapshot.
    async fn start(cli: &Cli) -> Result<Self, Fatal> {
        // Before attaching anything: an address in use is the operator's to fix first.
        let exporter = cli.prometheus.map(metrics_server::listen).transpose()?;
        // So is an output we cannot write, rather than a report lost at the end.
        let report = cli
            .report
            .as_deref()
            .map(|path| sinks::prepare_output("--report", path))
            .transpose()?;
        let hdr_log = cli
            .hdr_log
            .as_deref()
            .map(|path| sinks::prepare_output("--hdr-log", path))
            .transpose()?;
        let html = cli
            .html
            .as_deref()
            .map(|path| sinks::prepare_output("--html", path))
            .transpose()?;
        let filter = cli.filter();
        let mut probes = Probes::attach(&ProbeConfig {
            backend: cli.backend,
            strict: true,
            max_sockets: cli.max_sockets,
            ring_buffer_bytes: cli.ring_buffer_kib * 1024,
            filter: filter.kernel(),
            count_map_ops: cli.count_map_ops,
            empty_programs: cli.empty_programs,
            fallback_programs: cli.fallback_programs,
        })?;
        let ring = watch(probes.take_events()?)?;
        let failures = watch(probes.take_failures()?)?;
        let clock = WallClock::now();
        let started = Instant::now();
        let started_ns = monotonic_ns();
        // HdrHistogram interval log: in place before `ready`, one interval per summary, and
        // the last one at exit.
        let hdr_log = hdr_log
            .map(|output| HdrLog::create(output, started))
            .transpose()?;
        // Before `ready`: whoever waits for it may signal us at once.
        let sigint = signal(SignalKind::interrupt())?;
        let sigterm = signal(SignalKind::terminate())?;
        let sighup = signal(SignalKind::hangup())?;

        // Sockets that hold ports already: counted from the first second.
        let mut workloads = Resolver::new(&cli.host_root);
        let snapshot = Snapshot::take(&filter, &mut workloads);
        // Start-up parsed megabytes of kernel BTF and dumped every socket: give that memory
        // back, so what the daemon holds from here on is what it keeps.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        let thresholds = Thresholds {
            warn: cli.warn_at / 100.0,
            critical: cli.critical_at / 100.0,
        };
        let (console, stdout_ended) =
            Console::stdout(cli.events, cli.quiet, clock).context("starting the stdout writer")?;
        let sinks = Sinks {
            console,
            hdr_log,
            metrics: match exporter {
                Some(_) => Some(
                    Metrics::new(probes.backend.as_str(), env!("CARGO_PKG_VERSION"))
                        .context("setting up the Prometheus metrics")?,
                ),
                None => None,
            },
            report: report.map(|output| ReportFile {
                output: Some(output),
                backend: probes.backend,
            }),
            html: html.map(|output| {
                HtmlFile::new(
                    output,
                    html::Meta {
                        host: procfs::hostname(),
                        kernel: procfs::kernel_release(),
                        backend: Some(probes.backend),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        started_epoch_ns: Some(clock.to_epoch_ns(started_ns)),
                        thresholds,
                        source: html::Source::Live,
                    },
                    true,
                )
            }),
        };
        let pipeline = Pipeline::new(
            pipeline::Config {
                filter,
                keep_intervals: cli.hdr_log.is_some(),
                started_ns,
                host_netns: netns::host(),
                own_pid: Some(std::process::id()),
            },
            snapshot,
            Exhaustion::new(thresholds).with_host_netns(netns::host()),
        );
        Ok(Self {
            probes,
            ring,
            failures,
            pipeline,
            workloads,
            sinks,
            clock,
            exporter,
            sigint,
            sigterm,
            sighup,
            stdout_ended,
        })
    }

    /// Says `ready` and checks every range once.
    fn begin(&mut self) -> Result<(), Fatal> {
        let prometheus = match &self.exporter {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        self.sinks.console.start(&ReadyRecord {
            record: "ready",
            ts_ns: self.clock.to_epoch_ns(self.pipeline.started_ns()),
            pid: std::process::id(),
            backend: self.probes.backend,
            programs: &self.probes.programs,
            version: env!("CARGO_PKG_VERSION"),
            host: &procfs::hostname(),
            kernel: &procfs::kernel_release(),
            prometheus,
        })?;
        self.pipeline.begin(monotonic_ns(), &mut self.sinks)?;
        Ok(self.sinks.console.flush()?)
    }

    /// Until a signal, the deadline, or stdout's writer stopping (then, why).
    async fn run(&mut self, cli: &Cli) -> Result<Option<Ended>, Fatal> {
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
        // Only a stdout that carries something can end the trace by going away: with
        // `--quiet` and no event lines (the service), a journal or terminal that hangs up
        // is nobody's loss, and a restart-on-failure unit would not bring us back.
        let stdout_used = cli.events.is_some() || !cli.quiet;
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
                    drain(
                        &mut self.pipeline,
                        &mut self.workloads,
                        guard.get_inner_mut(),
                        &mut self.sinks,
                    )?;
                    guard.clear_ready();
                    drain(
                        &mut self.pipeline,
                        &mut self.workloads,
                        self.failures.get_mut(),
                        &mut self.sinks,
                    )?;
                }
                guard = self.failures.readable_mut() => {
                    drain(
                        &mut self.pipeline,
                        &mut self.workloads,
                        self.ring.get_mut(),
                        &mut self.sinks,
                    )?;
                    let mut guard = guard.context("waiting on the failure ring buffer")?;
                    drain(
                        &mut self.pipeline,
                        &mut self.workloads,
                        guard.get_inner_mut(),
                        &mut self.sinks,
                    )?;
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
                    let looked = syn_sent_in(
                        self.pipeline.findings.syn_sent_namespaces(&self.pipeline.exhaustion),
                    );
                    self.pipeline.syn_sent(&looked, &mut self.sinks)?;
                    let gone = self.pipeline.snapshot.gone();
                    let counters = self.probes.counters()?;
                    self.pipeline.tick(&gone, counters, monotonic_ns(), &mut self.sinks)?;
                }
                // Connections are served inside; this wakes when a scraper waits for the page.
                _ = render_due(self.exporter.as_mut()) => self.scrape()?,
                _ = self.sigint.recv() => break,
                _ = self.sigterm.recv() => break,
                _ = self.sighup.recv() => break,
                ended = &mut self.stdout_ended, if stdout_used => {
                    // No message: the writer thread ended without one (it panicked).
                    let ended = ended.unwrap_or_else(|_| {
                        Ended::Failed(std::io::Error::other("the stdout writer stopped"))
                    });
                    debug!("stdout's writer stopped ({ended:?}): ending the trace");
                    return Ok(Some(ended));
                }
                _ = &mut deadline => break,
            }
        }
        Ok(None)
    }

    /// Both rings, allocations first: a failure comes after the allocations that used the
    /// range up.
    fn drain_both(&mut self) -> std::io::Result<()> {
        drain(
            &mut self.pipeline,
            &mut self.workloads,
            self.ring.get_mut(),
            &mut self.sinks,
        )?;
        drain(
            &mut self.pipeline,
            &mut self.workloads,
            self.failures.get_mut(),
            &mut self.sinks,
        )
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

    /// Renders the metrics page for the scrapers waiting for it.
    fn scrape(&mut self) -> Result<(), Fatal> {
        // What the kernel has not woken us for yet counts in this scrape.
        self.drain_both()?;
        let counters = self.probes.counters()?;
        let interval = Default::default();
        let view = self.pipeline.view(monotonic_ns(), &interval);
        if let Some(exporter) = self.exporter.as_mut() {
            // Every waiting scraper gets an answer, or it would be asked for again at once.
            let page = match self.sinks.metrics.as_mut() {
                Some(metrics) => {
                    metrics.set_connections_refused(exporter.refused());
                    metrics.scrape(&view, &counters)
                }
                None => String::new(),
            };
            exporter.answer(page);
        }
        Ok(())
    }

    /// Drains what the kernel wrote before we stopped, hands the sinks their last look, and
    /// detaches.
    fn finish(mut self) -> Result<(), Fatal> {
        // A console gone (EPIPE) fails the drain, not the report.
        let drained = self.drain_both();
        // What stdout's reader has not taken after a moment is dropped, and counted so.
        self.sinks.console.settle();
        self.pipeline
            .stats
            .set_output_lines_dropped(self.sinks.console.dropped_lines());
        // Counters that cannot be read do not cost the report: it has the last ones read.
        let (counters, read) = match self.probes.counters() {
            Ok(counters) => (counters, Ok(())),
            Err(err) => (
                KernelCounters {
                    lost: self.pipeline.stats.lost,
                    probe_errors: self.pipeline.stats.probe_errors.clone(),
                },
                Err(err),
            ),
        };
        let finished = self
            .pipeline
            .finish(counters, monotonic_ns(), &mut self.sinks);
        drained?;
        finished?;
        read?;
        // Dropping the probes detaches every program.
        drop(self.ring);
        drop(self.probes);
        Ok(())
    }
}

/// Hands every event waiting in `ring` to the pipeline, named by its workload, then flushes
/// the event lines (and counts those stdout's reader did not keep up with).
fn drain(
    pipeline: &mut Pipeline,
    workloads: &mut Resolver,
    ring: &mut RingBuf<MapData>,
    sinks: &mut Sinks<QueuedStdout>,
) -> std::io::Result<()> {
    while let Some(item) = ring.next() {
        prefetch_next(&item);
        match decode(&item) {
            Ok(mut event) => {
                workloads.attribute(&mut event);
                pipeline.apply(&event, sinks)?
            }
            Err(err) => warn!("skipping an undecodable event: {err}"),
        }
    }
    sinks.console.flush()?;
    pipeline
        .stats
        .set_output_lines_dropped(sinks.console.dropped_lines());
    Ok(())
}

/// Asks the CPU for the records after `record` while this one goes through the pipeline:
/// the kernel wrote them on another CPU, and reading each cold was the drain's largest cost
/// (a profile of the daemon under churn). Records lie one after another in the ring, whose
/// pages are mapped twice over, so the addresses after the last record are mapped too; a
/// prefetch never faults in any case.
#[inline(always)]
fn prefetch_next(record: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = record.as_ptr().wrapping_add(record.len());
        for line in 1..=4 {
            // SAFETY: a prefetch is a hint: it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * 64).cast()) };
        }
    }
}

/// The TCP sockets in SYN_SENT in each of `namespaces`, by destination (one dump each,
/// filtered by state in the kernel).
fn syn_sent_in(namespaces: Vec<u32>) -> Vec<SynSent> {
    let mut found = Vec::new();
    for netns in namespaces {
        for socket in sock_diag::syn_sent(netns).unwrap_or_default() {
            found.push(SynSent {
                netns,
                destination: Destination {
                    laddr: socket.src,
                    raddr: socket.dst,
                    rport: socket.dport,
                },
                count: 1,
            });
        }
    }
    found
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

/// When the metrics page is to be rendered; never, without `--prometheus`.
async fn render_due(exporter: Option<&mut metrics_server::Exporter>) {
    match exporter {
        Some(exporter) => exporter.render_due().await,
        None => pending().await,
    }
}
