//! `port-trace analyze FILE`: a capture made with `--events json` replayed through the same
//! pipeline, without eBPF or root: the summary, report or metrics a live trace gives at its
//! end.
//!
//! Replay works in the capture's Unix-epoch nanoseconds throughout: lifetimes are
//! differences, the same in either clock. Namespace ranges come from the capture's `range`
//! records, the start-up snapshot from its `existing` records. A `time_wait` record parks
//! a port in TIME_WAIT as the live tracker did, and the release line with `time_wait_ns`
//! frees it; so a port still in TIME_WAIT at the end is held in TIME_WAIT, as it was live. A
//! capture without `time_wait` records (an older port-trace's) still gives the same held
//! counts and lifetimes: the release line's `time_wait_ns` says when the socket closed, and
//! replay parks the port then and frees it at once.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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
    exhaustion::{
        Exhaustion, level::Thresholds, range::PortRange, scope::Destination, warning::Warning,
    },
    findings::SynSent,
    pipeline::{self, Pipeline, Sink, View},
    probes::{Backend, KernelCounters},
    sinks::{
        self, Sinks,
        console::Console,
        html::{self, HtmlFile},
        prometheus::Metrics,
        report::ReportFile,
    },
    sys::clock::WallClock,
    track::{Outcome, snapshot::Snapshot},
};

pub fn run(args: &AnalyzeArgs) -> Result<(), Fatal> {
    let report = args
        .report
        .as_deref()
        .map(|path| sinks::prepare_output("--report", path))
        .transpose()?;
    let html = args
        .html
        .as_deref()
        .map(|path| sinks::prepare_output("--html", path))
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
    replay.sinks.html = html.map(|output| {
        HtmlFile::new(
            output,
            html::Meta {
                // Until the capture's `ready` says.
                host: String::new(),
                kernel: String::new(),
                backend: None,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_epoch_ns: None,
                thresholds: replay.thresholds,
                source: html::Source::Capture(name.clone()),
            },
            false,
        )
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
    /// Sockets the capture's `time_wait` records parked (netns, cookie), until released.
    parked: HashSet<(u32, u64)>,
    /// Records of types replay does not know, by type.
    unknown: BTreeMap<String, u64>,
    /// From the `ready` record: when the live trace started (its first interval's start)
    /// and its pid.
    live_started_ns: Option<u64>,
    live_pid: Option<u32>,
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
                html: None,
            },
            backend: Backend::Kprobe,
            interval_ns: u64::try_from(args.interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            next_tick_ns: 0,
            first_ns: 0,
            last_ns: 0,
            elapsed_ns: None,
            parked: HashSet::new(),
            unknown: BTreeMap::new(),
            live_started_ns: None,
            live_pid: None,
        })
    }

    /// The pipeline, made at the first event: the snapshot's sockets and the ranges seen
    /// before it are in by then, as they were live.
    fn pipeline(&mut self, first_ns: u64) -> &mut Pipeline {
        // As live: from the trace's start where the capture says it.
        let started_ns = self.live_started_ns.unwrap_or(first_ns).min(first_ns);
        let own_pid = self.live_pid;
        let ranges = Arc::clone(&self.ranges);
        let thresholds = self.thresholds;
        let existing = std::mem::take(&mut self.existing);
        if self.pipeline.is_none() {
            self.next_tick_ns = started_ns.saturating_add(self.interval_ns);
            self.first_ns = started_ns;
            self.last_ns = started_ns;
            // Replay's clock is the capture's: Unix-epoch ns.
            if let Some(html) = self.sinks.html.as_mut() {
                html.meta.started_epoch_ns = Some(started_ns);
            }
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
                    // A capture does not say which namespace was the host's.
                    host_netns: None,
                    own_pid,
                },
                Snapshot::from_events(existing),
                Exhaustion::with_range_reader(thresholds, read),
            )
        })
    }

    fn take(&mut self, record: Record) -> Result<(), Fatal> {
        match record {
            Record::Ready {
                backend,
                ts_ns,
                pid,
                host,
                kernel,
            } => {
                if let Some(html) = self.sinks.html.as_mut() {
                    html.meta.backend = backend;
                    html.meta.host = host.unwrap_or_default();
                    html.meta.kernel = kernel.unwrap_or_default();
                }
                self.live_started_ns = ts_ns;
                self.live_pid = pid;
                // Absent or unknown: taken as the kprobe backend, as before.
                self.backend = backend.unwrap_or(Backend::Kprobe);
                if let Some(report) = self.sinks.report.as_mut() {
                    report.backend = self.backend;
                }
            }
            Record::Range(line) => {
                let range = PortRange {
                    low: line.low,
                    high: line.high,
                    reserved: line.reserved,
                    unprivileged_start: line.unprivileged_start,
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
            Record::ExistingGone(event) => match self.pipeline.as_mut() {
                // Freed as the live tick freed it.
                Some(pipeline) => {
                    if let Some(copy) = pipeline.snapshot.take_over(event.netns, event.cookie) {
                        pipeline.exhaustion.free_existing(&copy);
                    }
                }
                None => self
                    .existing
                    .retain(|e| (e.netns, e.cookie) != (event.netns, event.cookie)),
            },
            Record::TimeWait(event) => {
                self.pipeline(event.ts_ns);
                self.tick_until(event.ts_ns)?;
                self.last_ns = self.last_ns.max(event.ts_ns);
                self.parked.insert((event.netns, event.cookie));
                if let Some(pipeline) = self.pipeline.as_mut() {
                    pipeline.apply(&event, &mut self.sinks)?;
                }
            }
            Record::Reconciled(event) => {
                self.pipeline(event.ts_ns);
                self.tick_until(event.ts_ns)?;
                self.last_ns = self.last_ns.max(event.ts_ns);
                if let Some(pipeline) = self.pipeline.as_mut() {
                    pipeline.reconciled(&[event.cookie], event.ts_ns, &mut self.sinks)?;
                }
            }
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
            Record::SynSent(line) => {
                if let Some(pipeline) = self.pipeline.as_mut() {
                    pipeline.findings.syn_sent_changed(&[SynSent {
                        netns: line.netns,
                        destination: Destination {
                            laddr: line.laddr,
                            raddr: line.raddr,
                            rport: line.rport,
                        },
                        count: line.count,
                    }]);
                }
            }
            Record::End { elapsed_ns } => self.elapsed_ns = Some(elapsed_ns),
            // Replay raises its own, from the events.
            Record::Skipped(kind) if kind == "warning" || kind == "finding" => {}
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
            // Ended TIME_WAIT, parked by the capture's `time_wait` record: freed now.
            (EventType::Release, Some(_), Some(_))
                if self.parked.remove(&(event.netns, event.cookie)) =>
            {
                let mut ended = event;
                ended.time_wait_end = true;
                pipeline.apply(&ended, &mut self.sinks)?;
            }
            // Ended TIME_WAIT, in a capture without `time_wait` records: parked when the
            // socket closed (`ts_ns - time_wait_ns`), freed now.
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
        // A capture with no event and no `ready` says nothing of when it was made.
        let dated = self.pipeline.is_some() || self.live_started_ns.is_some();
        self.pipeline(self.last_ns);
        if !dated && let Some(html) = self.sinks.html.as_mut() {
            html.meta.started_epoch_ns = None;
        }
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

    fn findings(&mut self, findings: &[crate::findings::Finding]) -> io::Result<()> {
        self.0.findings(findings)
    }

    /// The page takes its sample of the interval (and writes only at the finish).
    fn tick(&mut self, view: &View<'_>) -> anyhow::Result<()> {
        match self.0.html.as_mut() {
            Some(html) => html.tick(view),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay() -> Replay {
        let args = AnalyzeArgs {
            file: "-".into(),
            report: None,
            html: None,
            metrics: false,
            warn_at: 80.0,
            critical_at: 95.0,
            interval: std::time::Duration::from_secs(10),
        };
        Replay::new(&args).expect("replay")
    }

    fn take(replay: &mut Replay, lines: &[String]) {
        for line in lines {
            replay
                .take(decode_line(line).expect("decodes"))
                .expect("replays");
        }
    }

    fn line(kind: &str, ts: u64, extra: &str) -> String {
        format!(
            r#"{{"type":"{kind}","ts_ns":{ts},"proto":"tcp","family":"ipv4","port":40001,"kind":"connect","pid":7,"comm":"curl","netns":9,"laddr":"127.0.0.1","raddr":"10.0.0.1","rport":80,"cookie":5{extra}}}"#
        )
    }

    /// The namespace scope's (used, capacity).
    fn namespace(r: &Replay) -> (u32, u32) {
        let p = r.pipeline.as_ref().expect("a pipeline");
        p.exhaustion
            .fullest(usize::MAX)
            .iter()
            .find(|(key, _, _)| key.kind() == crate::exhaustion::scope::ScopeKind::Namespace)
            .map_or((0, 0), |(_, usage, _)| (usage.used, usage.capacity))
    }

    const RANGE: &str = r#"{"type":"range","netns":9,"low":40000,"high":40009,"reserved":[]}"#;

    #[test]
    fn a_time_wait_record_parks_the_port_until_its_release() {
        let mut r = replay();
        take(
            &mut r,
            &[
                RANGE.into(),
                line("alloc", 1_000, ""),
                line("time_wait", 2_000, ""),
            ],
        );
        assert_eq!(namespace(&r), (1, 10), "the capture's range");
        let p = r.pipeline.as_ref().expect("a pipeline");
        assert_eq!(p.tracker.held(), 1, "held in TIME_WAIT");
        assert!(p.tracker.time_wait_namespaces().contains(&9));
        let release = line(
            "release",
            5_000,
            r#","lifetime_ns":4000,"time_wait_ns":3000"#,
        );
        take(&mut r, &[release]);
        let p = r.pipeline.as_ref().expect("a pipeline");
        assert_eq!(p.tracker.held(), 0);
        assert_eq!(
            (p.stats.totals.release, p.stats.totals.unmatched_release),
            (1, 0),
            "one release, matched"
        );
    }

    #[test]
    fn without_time_wait_records_the_release_still_matches() {
        let mut r = replay();
        let release = line(
            "release",
            5_000,
            r#","lifetime_ns":4000,"time_wait_ns":3000"#,
        );
        take(&mut r, &[RANGE.into(), line("alloc", 1_000, ""), release]);
        let p = r.pipeline.as_ref().expect("a pipeline");
        assert_eq!(p.tracker.held(), 0);
        assert_eq!(
            (p.stats.totals.release, p.stats.totals.unmatched_release),
            (1, 0)
        );
    }

    #[test]
    fn unknown_records_are_counted_and_existing_ones_held() {
        let mut r = replay();
        let existing = line("existing", 0, "")
            .replace("40001", "40002")
            .replace(r#""cookie":5"#, r#""cookie":6"#);
        take(
            &mut r,
            &[
                RANGE.into(),
                existing,
                r#"{"type":"from_the_future","kind":"x"}"#.into(),
                r#"{"type":"warning"}"#.into(),
                r#"{"type":"finding"}"#.into(),
                line("alloc", 1_000, ""),
            ],
        );
        assert_eq!(r.unknown.get("from_the_future"), Some(&1));
        assert_eq!(
            r.unknown.len(),
            1,
            "warnings and findings are recomputed, not unknown"
        );
        assert_eq!(
            namespace(&r),
            (2, 10),
            "the snapshot's socket and the new one"
        );
        let gone = line("existing_gone", 0, "")
            .replace("40001", "40002")
            .replace(r#""cookie":5"#, r#""cookie":6"#);
        take(&mut r, &[gone]);
        assert_eq!(namespace(&r), (1, 10), "the snapshot's socket is gone");
    }
}
