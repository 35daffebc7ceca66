//! `port-trace analyze FILE`: a capture made with `--events json` replayed through the same
//! pipeline, without eBPF or root: the summary, report or metrics a live trace gives at its
//! end.
//!
//! Replay works in the capture's Unix-epoch nanoseconds throughout: lifetimes are
//! differences, the same in either clock. Namespace ranges come from the capture's `range`
//! records, the start-up snapshot from its `existing` records. A port's time in TIME_WAIT is
//! in the release line that ends it (`time_wait_ns`): replay parks the port at
//! `ts_ns - time_wait_ns` and frees it at `ts_ns`, so the port is held as long as it was
//! live and lifetimes come out the same. A port still in TIME_WAIT at the end has no release
//! line and stays held, as it did live.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, BufRead, BufReader, IsTerminal as _, Write as _},
    path::Path,
    sync::{Arc, Mutex},
};

use crate::{
    cli::AnalyzeArgs,
    error::Fatal,
    event::{
        Event, EventType,
        capture::{Record, decode_line},
        filter::Filter,
    },
    exhaustion::{Exhaustion, level::Thresholds, range::PortRange, warning::Warning},
    pipeline::{self, Pipeline, Sink, View},
    probes::{Backend, KernelCounters},
    sinks::{self, Sinks, console::Console, prometheus::Metrics, report::ReportFile},
    sys::clock::WallClock,
    track::{Outcome, snapshot::Snapshot},
};

pub fn run(args: &AnalyzeArgs) -> Result<(), Fatal> {
    let report = args
        .report
        .as_deref()
        .map(|path| sinks::prepare_output("--report", path))
        .transpose()?;
    let name = args.file.display().to_string();
    let input: Box<dyn BufRead> = if args.file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.file)
            .map_err(|err| Fatal::BadInput(format!("cannot read {name}: {err}")))?;
        Box::new(BufReader::new(file))
    };
    let mut replay = Replay::new(args)?;
    replay.sinks.report = report.map(|output| ReportFile {
        output: Some(output),
        backend: Backend::Kprobe,
    });
    // Line by line: a capture may be larger than memory.
    for (index, line) in input.lines().enumerate() {
        let at = |err: &dyn std::fmt::Display| {
            Fatal::BadInput(format!("{name}: line {}: {err}", index + 1))
        };
        let line = line.map_err(|err| at(&err))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = decode_line(&line).map_err(|err| at(&err))?;
        replay.take(record)?;
    }
    replay.finish(args.metrics)
}

/// A replay in progress.
struct Replay {
    /// The capture's ranges by namespace, as the exhaustion stage reads them.
    ranges: Arc<Mutex<HashMap<u32, PortRange>>>,
    thresholds: Thresholds,
    /// Until the first event: the snapshot's sockets.
    existing: Vec<Event>,
    pipeline: Option<Pipeline>,
    sinks: Sinks<io::Stdout>,
    backend: Backend,
    interval_ns: u64,
    next_tick_ns: u64,
    /// The first event's time: replay's start.
    first_ns: u64,
    last_ns: u64,
    /// The `end` record's elapsed time, where the capture has one.
    elapsed_ns: Option<u64>,
    /// Records of types replay does not know, by type.
    unknown: BTreeMap<String, u64>,
}

impl Replay {
    fn new(args: &AnalyzeArgs) -> Result<Self, Fatal> {
        let metrics = if args.metrics {
            Some(
                Metrics::new(Backend::Kprobe.as_str(), env!("CARGO_PKG_VERSION"))
                    .map_err(|err| Fatal::Other(err.into()))?,
            )
        } else {
            None
        };
        Ok(Self {
            ranges: Arc::default(),
            thresholds: Thresholds {
                warn: args.warn_at / 100.0,
                critical: args.critical_at / 100.0,
            },
            existing: Vec::new(),
            pipeline: None,
            sinks: Sinks {
                // The metrics text replaces the summary on stdout.
                console: Console::new(
                    io::stdout(),
                    None,
                    args.metrics,
                    WallClock::now(),
                    io::stderr().is_terminal(),
                ),
                hdr_log: None,
                metrics,
                report: None,
            },
            backend: Backend::Kprobe,
            interval_ns: u64::try_from(args.interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            next_tick_ns: 0,
            first_ns: 0,
            last_ns: 0,
            elapsed_ns: None,
            unknown: BTreeMap::new(),
        })
    }

    /// The pipeline, made at the first event: the snapshot's sockets and the ranges seen
    /// before it are in by then, as they were live.
    fn pipeline(&mut self, started_ns: u64) -> &mut Pipeline {
        let ranges = Arc::clone(&self.ranges);
        let thresholds = self.thresholds;
        let existing = std::mem::take(&mut self.existing);
        if self.pipeline.is_none() {
            self.next_tick_ns = started_ns.saturating_add(self.interval_ns);
            self.first_ns = started_ns;
            self.last_ns = started_ns;
        }
        self.pipeline.get_or_insert_with(|| {
            let read = move |netns: u32| {
                ranges
                    .lock()
                    .ok()
                    .and_then(|ranges| ranges.get(&netns).cloned())
            };
            Pipeline::new(
                pipeline::Config {
                    // The capture holds what the live trace's filters let through.
                    filter: Filter::default(),
                    keep_intervals: false,
                    started_ns,
                },
                Snapshot::from_events(existing),
                Exhaustion::with_range_reader(thresholds, read),
            )
        })
    }

    fn take(&mut self, record: Record) -> Result<(), Fatal> {
        match record {
            Record::Ready { backend } => {
                self.backend = match backend.as_str() {
                    "tracepoint" => Backend::Tracepoint,
                    _ => Backend::Kprobe,
                };
                if let Some(report) = self.sinks.report.as_mut() {
                    report.backend = self.backend;
                }
            }
            Record::Range(line) => {
                let range = PortRange {
                    low: line.low,
                    high: line.high,
                    reserved: line.reserved,
                };
                let old = self
                    .ranges
                    .lock()
                    .ok()
                    .and_then(|mut ranges| ranges.insert(line.netns, range.clone()));
                // A range that changed was found at a live re-check: re-check here too.
                if old.is_some_and(|old| old != range)
                    && let Some(pipeline) = self.pipeline.as_mut()
                {
                    pipeline.check_ranges(self.last_ns, &mut self.sinks)?;
                }
            }
            Record::Existing(event) if self.pipeline.is_none() => self.existing.push(event),
            Record::Existing(_) => *self.unknown.entry("existing (late)".into()).or_default() += 1,
            Record::Event {
                event,
                lifetime_ns,
                time_wait_ns,
            } => {
                self.pipeline(event.ts_ns);
                self.tick_until(event.ts_ns)?;
                self.last_ns = self.last_ns.max(event.ts_ns);
                self.apply(event, lifetime_ns, time_wait_ns)?;
            }
            Record::End { elapsed_ns } => self.elapsed_ns = Some(elapsed_ns),
            // Replay raises its own.
            Record::Skipped(kind) if kind == "warning" => {}
            Record::Skipped(kind) => *self.unknown.entry(kind).or_default() += 1,
        }
        Ok(())
    }

    /// One event; a release that ended TIME_WAIT as the socket's close and its end.
    fn apply(
        &mut self,
        event: Event,
        lifetime_ns: Option<u64>,
        time_wait_ns: Option<u64>,
    ) -> Result<(), Fatal> {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return Ok(());
        };
        match (event.event, lifetime_ns, time_wait_ns) {
            // Ended TIME_WAIT: parked when the socket closed, freed now.
            (EventType::Release, Some(_), Some(time_wait_ns)) => {
                let mut closed = event.clone();
                closed.ts_ns = event.ts_ns.saturating_sub(time_wait_ns);
                closed.time_wait = true;
                pipeline.apply(&closed, &mut self.sinks)?;
                let mut ended = event;
                ended.time_wait_end = true;
                pipeline.apply(&ended, &mut self.sinks)?;
            }
            _ => pipeline.apply(&event, &mut self.sinks)?,
        }
        Ok(())
    }

    /// Ticks at the interval boundaries before `ts_ns`: ranges re-checked, no summaries.
    fn tick_until(&mut self, ts_ns: u64) -> Result<(), Fatal> {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return Ok(());
        };
        while ts_ns >= self.next_tick_ns {
            pipeline.tick(
                &[],
                KernelCounters::default(),
                self.next_tick_ns,
                &mut NoSummary(&mut self.sinks),
            )?;
            self.next_tick_ns = self.next_tick_ns.saturating_add(self.interval_ns);
        }
        Ok(())
    }

    fn finish(mut self, metrics: bool) -> Result<(), Fatal> {
        self.pipeline(self.last_ns);
        // As long as the live trace ran, where the capture's `end` says so (rates are per
        // that time); else from its first event to its last.
        let now_ns = match self.elapsed_ns {
            Some(elapsed) => self.first_ns.saturating_add(elapsed),
            None => self.last_ns,
        };
        let counters = KernelCounters::default();
        let Some(pipeline) = self.pipeline.as_mut() else {
            return Ok(());
        };
        pipeline
            .finish(counters.clone(), now_ns, &mut self.sinks)
            .map_err(|err| sinks::output_fatal(Fatal::Other(err)))?;
        if let Some(metrics) = self.sinks.metrics.as_mut().filter(|_| metrics) {
            let interval = BTreeMap::new();
            let page = metrics.scrape(&pipeline.view(now_ns, &interval), &counters);
            io::stdout().write_all(page.as_bytes())?;
        }
        if !self.unknown.is_empty() {
            let kinds: Vec<String> = self
                .unknown
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            crate::sys::stdio::eprint(format_args!(
                "port-trace: skipped records of types this version does not replay: {}\n",
                kinds.join(", ")
            ));
        }
        Ok(())
    }
}

/// The sinks at a replayed tick: warnings from the re-check, but no interval summary.
struct NoSummary<'a>(&'a mut Sinks<io::Stdout>);

impl Sink for NoSummary<'_> {
    fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
        self.0.event(event, outcome)
    }

    fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
        self.0.warnings(warnings)
    }

    fn tick(&mut self, _view: &View<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}
