//! The daemon's core: decoded events in, and out to the sinks what they need. It does no I/O
//! of its own: the time comes in as arguments, the snapshot's dumps are the caller's, and the
//! one OS read left, a namespace's range, goes through the exhaustion stage's range reader,
//! which a test replaces; so every rule here runs in a unit test without root.
//!
//! Per event: the tracker matches it (freeing, first, a TIME_WAIT port that a connect() took
//! over); a live allocation replaces the start-up snapshot's copy of the same socket; the
//! exhaustion model counts every traced socket, and its warnings go to the sinks whoever
//! holds the ports; the stats and the sinks' `event` see only what the report filters let
//! through, and never a port asked for by number.

use std::{collections::BTreeMap, io};

use hdrhistogram::Histogram;

use crate::{
    event::{Event, Proto, filter::Filter},
    exhaustion::{Exhaustion, range::PortRange, warning::Warning},
    findings::{Finding, Findings, SynSent},
    probes::KernelCounters,
    stats::Stats,
    track::{Held, HeldSockets, Outcome, Tracker, snapshot::Snapshot},
};

/// Where the pipeline's output goes: every sink takes the same four calls, and
/// `sinks::Sinks` fans them out.
pub trait Sink {
    /// One event that the report filters let through, with what it meant.
    fn event(&mut self, _event: &Event, _outcome: Outcome) -> io::Result<()> {
        Ok(())
    }

    /// Warnings raised by the last event or check.
    fn warnings(&mut self, _warnings: &[Warning]) -> io::Result<()> {
        Ok(())
    }

    /// A namespace's range, first seen or changed (a capture records it for replay).
    fn range(&mut self, _netns: u32, _range: &PortRange) -> io::Result<()> {
        Ok(())
    }

    /// A socket of the start-up snapshot (a capture records it for replay).
    fn existing(&mut self, _event: &Event) -> io::Result<()> {
        Ok(())
    }

    /// A socket of the start-up snapshot is gone (found at a tick).
    fn existing_gone(&mut self, _event: &Event) -> io::Result<()> {
        Ok(())
    }

    /// What changes the ports held but is no event line: a TCP socket closed actively (its
    /// port held on in TIME_WAIT until its release), a port reconciliation found free, and
    /// a port asked for by number (any outcome). A capture records them for replay.
    fn held(&mut self, _event: &Event, _outcome: Outcome) -> io::Result<()> {
        Ok(())
    }

    /// SYN_SENT counts per destination that changed at a look (a capture records them for
    /// replay).
    fn syn_sent(&mut self, _changes: &[SynSent]) -> io::Result<()> {
        Ok(())
    }

    /// Findings that appeared, changed or cleared (judged once an interval and at the
    /// finish).
    fn findings(&mut self, _findings: &[Finding]) -> io::Result<()> {
        Ok(())
    }

    /// Once an interval (`--interval`).
    fn tick(&mut self, _view: &View<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Once, when tracing stops.
    fn finish(&mut self, _view: &View<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The state every sink may read, as of one moment.
pub struct View<'a> {
    pub stats: &'a Stats,
    pub exhaustion: &'a Exhaustion,
    /// The findings in force, most severe first.
    pub findings: Vec<&'a Finding>,
    /// The findings stage, for its counts (TIME_WAIT per scope); None in sinks' tests.
    pub causes: Option<&'a Findings>,
    /// Ephemeral ports held now, TIME_WAIT included.
    pub held: usize,
    /// Of `held`, in TIME_WAIT.
    pub held_time_wait: usize,
    /// Since tracing started.
    pub elapsed_ns: u64,
    /// Every socket holding a port now, to name who holds a scope's ports (a walk: once an
    /// interval, not per event).
    pub sockets: &'a dyn HeldSockets,
    /// Now, in the pipeline's clock (CLOCK_MONOTONIC live, the capture's time in replay).
    pub now_ns: u64,
    /// Lifetimes released since the last tick, all (None) and per protocol; empty unless
    /// the pipeline keeps intervals.
    pub interval: &'a BTreeMap<Option<Proto>, Histogram<u64>>,
}

pub struct Pipeline {
    pub tracker: Tracker,
    pub stats: Stats,
    pub exhaustion: Exhaustion,
    pub findings: Findings,
    /// Sockets found at start-up, until they are gone.
    pub snapshot: Snapshot,
    /// What is traced (netns, proto) and reported (pid, comm, family).
    filter: Filter,
    /// CLOCK_MONOTONIC when tracing started.
    started_ns: u64,
}

/// How the pipeline is set up.
pub struct Config {
    pub filter: Filter,
    /// Keep per-interval lifetimes for the sinks (`--hdr-log`).
    pub keep_intervals: bool,
    /// CLOCK_MONOTONIC when tracing started.
    pub started_ns: u64,
    /// The host's namespace, whose range the range lint compares others with.
    pub host_netns: Option<u32>,
    /// port-trace's own process: its sockets found at start-up (the metrics listener, on a
    /// port the kernel chose for `--prometheus :0`) are no service in the range.
    pub own_pid: Option<u32>,
}

/// The tracker's sockets and the start-up snapshot's, for the sinks' view.
impl HeldSockets for Pipeline {
    fn for_each_held(&self, f: &mut dyn FnMut(&Event, u16)) {
        self.held().for_each_held(f);
    }
}

impl Pipeline {
    /// A pipeline whose exhaustion model holds the snapshot's sockets from the start.
    pub fn new(config: Config, snapshot: Snapshot, exhaustion: Exhaustion) -> Self {
        let mut pipeline = Self {
            tracker: Tracker::default(),
            stats: Stats::new(config.keep_intervals),
            exhaustion,
            findings: Findings::new(Default::default(), config.host_netns, config.started_ns),
            snapshot,
            filter: config.filter,
            started_ns: config.started_ns,
        };
        for event in pipeline.snapshot.events() {
            pipeline.exhaustion.hold_existing(event);
            if Some(event.pid) != config.own_pid {
                pipeline.findings.existing(event);
            }
        }
        pipeline
    }

    /// When tracing started (CLOCK_MONOTONIC).
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// Once, before the first event: hands the sinks the start-up snapshot's sockets and
    /// the ranges known so far, then checks every range.
    pub fn begin(&mut self, now_ns: u64, sink: &mut impl Sink) -> io::Result<()> {
        self.new_ranges(sink)?;
        for event in self.snapshot.events() {
            sink.existing(event)?;
        }
        self.check_ranges(now_ns, sink)
    }

    /// Checks every scope against its range (read anew) and raises what is over a line.
    pub fn check_ranges(&mut self, now_ns: u64, sink: &mut impl Sink) -> io::Result<()> {
        let mut warnings = self.exhaustion.refresh(now_ns);
        self.new_ranges(sink)?;
        self.name_holders(&mut warnings, now_ns);
        sink.warnings(&warnings)
    }

    /// Every socket holding a port now: the tracker's and the start-up snapshot's.
    fn held(&self) -> Held<'_> {
        Held {
            tracker: &self.tracker,
            snapshot: &self.snapshot,
        }
    }

    /// Names who holds the ports in each warning's scope (a walk of the held sockets: only
    /// when there is a warning).
    fn name_holders(&mut self, warnings: &mut [Warning], now_ns: u64) {
        if !warnings.is_empty() {
            let held = Held {
                tracker: &self.tracker,
                snapshot: &self.snapshot,
            };
            self.exhaustion.name_holders(warnings, &held, now_ns);
        }
    }

    /// Ranges first seen or changed, before the events and warnings that follow from them.
    fn new_ranges(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        // Asked after every event; nearly always none.
        if !self.exhaustion.has_new_ranges() {
            return Ok(());
        }
        for (netns, range) in self.exhaustion.take_new_ranges() {
            sink.range(netns, &range)?;
        }
        Ok(())
    }

    /// Takes one event from the kernel.
    pub fn apply(&mut self, event: &Event, sink: &mut impl Sink) -> io::Result<()> {
        let applied = self.tracker.apply(event);
        // A connect() that took over a TIME_WAIT socket's connection freed that port first.
        if let Some((freed, outcome)) = &applied.freed {
            self.emit(freed, *outcome, sink)?;
        }
        if applied.outcome == Outcome::Allocated
            && let Some(copy) = self.snapshot.take_over(event.netns, event.cookie)
        {
            self.exhaustion.free_existing(&copy);
        }
        self.emit(event, applied.outcome, sink)
    }

    /// Counts one matched event (from `apply`, or a release the TIME_WAIT watcher found)
    /// and hands it on.
    pub fn emit(
        &mut self,
        event: &Event,
        outcome: Outcome,
        sink: &mut impl Sink,
    ) -> io::Result<()> {
        // Namespaces beyond what the kernel filter holds are left out here.
        if !self.filter.traces(event.netns, event.proto) {
            return Ok(());
        }
        let mut warnings = self.exhaustion.observe(event, outcome);
        self.new_ranges(sink)?;
        self.findings.observe(event, outcome);
        // A port bound by number inside the range, and bind before connect, are said at
        // once: a connect() may take the port, or the range run out, before the next interval.
        let found = self.findings.at_once(event, outcome, &self.exhaustion);
        if !found.is_empty() {
            sink.findings(&found)?;
        }
        if self.filter.matches(event) {
            // A port asked for by number counts in occupancy only: it is no allocation.
            if event.explicit {
                sink.held(event, outcome)?;
            } else {
                self.stats.record(event, outcome);
                // The port is still held while in TIME_WAIT; its release comes when that
                // ends. A port found free by reconciliation is counted, not an event line:
                // its release was never seen.
                match outcome {
                    Outcome::EnteredTimeWait | Outcome::Reconciled => sink.held(event, outcome)?,
                    _ => sink.event(event, outcome)?,
                }
            }
        }
        if warnings.is_empty() {
            return Ok(());
        }
        self.name_holders(&mut warnings, event.ts_ns);
        sink.warnings(&warnings)
    }

    /// What a SYN_SENT look (sock_diag, in `findings.syn_sent_namespaces()`) found; before
    /// the tick that judges it.
    pub fn syn_sent(&mut self, found: &[SynSent], sink: &mut impl Sink) -> io::Result<()> {
        let changes = self.findings.syn_sent_look(found);
        if changes.is_empty() {
            return Ok(());
        }
        sink.syn_sent(&changes)
    }

    /// Frees the ports reconciliation found with no socket left (`gone`, by cookie) as of
    /// `now_ns`: their release was lost.
    pub fn reconciled(
        &mut self,
        gone: &[u64],
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> io::Result<()> {
        for &cookie in gone {
            if let Some(event) = self.tracker.vanished(cookie, now_ns) {
                self.emit(&event, Outcome::Reconciled, sink)?;
            }
        }
        Ok(())
    }

    /// Once an interval: frees the snapshot's sockets that are `gone`, re-checks every
    /// range, takes the kernel's counters, and lets the sinks look.
    pub fn tick(
        &mut self,
        gone: &[Event],
        counters: KernelCounters,
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> anyhow::Result<()> {
        for event in gone {
            self.exhaustion.free_existing(event);
            sink.existing_gone(event)?;
            self.findings.existing_gone(event);
        }
        self.check_ranges(now_ns, sink)?;
        self.judge(now_ns, sink)?;
        self.stats.set_counters(counters);
        let interval = self.stats.take_interval();
        sink.tick(&self.view(now_ns, &interval))
    }

    /// When tracing stops: the kernel's final counters, the last interval.
    pub fn finish(
        &mut self,
        counters: KernelCounters,
        now_ns: u64,
        sink: &mut impl Sink,
    ) -> anyhow::Result<()> {
        self.judge(now_ns, sink)?;
        self.stats.set_counters(counters);
        let interval = self.stats.take_interval();
        sink.finish(&self.view(now_ns, &interval))
    }

    /// Judges the findings' rules and hands on what appeared, changed or cleared.
    pub fn judge(&mut self, now_ns: u64, sink: &mut impl Sink) -> io::Result<()> {
        let held = Held {
            tracker: &self.tracker,
            snapshot: &self.snapshot,
        };
        // Not `self.held()`: `findings` is borrowed mutably beside it.
        let emitted = self.findings.evaluate(&self.exhaustion, &held, now_ns);
        if emitted.is_empty() {
            return Ok(());
        }
        sink.findings(&emitted)
    }

    /// The state as of `now_ns`.
    pub fn view<'a>(
        &'a self,
        now_ns: u64,
        interval: &'a BTreeMap<Option<Proto>, Histogram<u64>>,
    ) -> View<'a> {
        View {
            stats: &self.stats,
            exhaustion: &self.exhaustion,
            findings: self.findings.active(),
            causes: Some(&self.findings),
            held: self.tracker.held(),
            held_time_wait: self.tracker.held_time_wait(),
            elapsed_ns: now_ns.saturating_sub(self.started_ns),
            sockets: self,
            now_ns,
            interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use port_trace_common::{EVENT_FAIL, EVENT_RELEASE, FLAG_EXPLICIT, FLAG_TIME_WAIT};

    use super::*;
    use crate::{
        event::{decode_raw, tests::raw_connect},
        exhaustion::{level::Thresholds, range::PortRange, scope::ScopeKind, warning::Reason},
    };

    /// Everything the sinks were handed, in order.
    #[derive(Default)]
    struct Recorded {
        events: Vec<(u64, Outcome)>,
        warnings: Vec<Warning>,
        order: Vec<&'static str>,
        ticks: usize,
        finished: Option<(u64, u64, usize)>,
        findings: Vec<Finding>,
    }

    impl Sink for Recorded {
        fn event(&mut self, event: &Event, outcome: Outcome) -> io::Result<()> {
            self.events.push((event.cookie, outcome));
            self.order.push("event");
            Ok(())
        }

        fn warnings(&mut self, warnings: &[Warning]) -> io::Result<()> {
            self.warnings.extend_from_slice(warnings);
            self.order.push("warnings");
            Ok(())
        }

        fn findings(&mut self, findings: &[Finding]) -> io::Result<()> {
            self.findings.extend_from_slice(findings);
            self.order.push("findings");
            Ok(())
        }

        fn tick(&mut self, _view: &View<'_>) -> anyhow::Result<()> {
            self.ticks += 1;
            Ok(())
        }

        fn finish(&mut self, view: &View<'_>) -> anyhow::Result<()> {
            self.finished = Some((view.stats.totals.alloc, view.stats.totals.lost, view.held));
            Ok(())
        }
    }

    fn tiny(_: u32) -> Option<PortRange> {
        PortRange::parse("40000 40009", "")
    }

    fn pipeline_with(filter: Filter, snapshot: Snapshot) -> Pipeline {
        let thresholds = Thresholds {
            warn: 0.8,
            critical: 0.95,
        };
        let exhaustion = Exhaustion::with_range_reader(thresholds, tiny);
        Pipeline::new(
            Config {
                filter,
                keep_intervals: false,
                started_ns: 0,
                host_netns: None,
                own_pid: None,
            },
            snapshot,
            exhaustion,
        )
    }

    fn pipeline() -> Pipeline {
        pipeline_with(Filter::default(), Snapshot::default())
    }

    fn connect(cookie: u64, port: u16, ts_ns: u64) -> Event {
        let mut raw = raw_connect();
        raw.cookie = cookie;
        raw.lport = port;
        raw.ts_ns = ts_ns;
        decode_raw(&raw).expect("decodes")
    }

    fn release(alloc: &Event, ts_ns: u64, flags: u8) -> Event {
        let mut release = alloc.clone();
        release.event = crate::event::EventType::Release;
        release.ts_ns = ts_ns;
        release.time_wait = flags & FLAG_TIME_WAIT != 0;
        release
    }

    fn ns_used(p: &Pipeline) -> u32 {
        p.exhaustion
            .fullest(usize::MAX)
            .iter()
            .find(|(key, _, _)| key.kind() == ScopeKind::Namespace)
            .map_or(0, |(_, usage, _)| usage.used)
    }

    #[test]
    fn a_report_filter_hides_events_but_occupancy_counts_them() {
        let filter = Filter {
            pids: vec![1234],
            ..Default::default()
        };
        let mut p = pipeline_with(filter, Snapshot::default());
        let mut out = Recorded::default();
        for i in 0..8 {
            p.apply(&connect(i, 40000 + i as u16, i), &mut out)
                .expect("sink");
        }
        assert!(out.events.is_empty(), "pid 7 is not reported");
        assert_eq!(p.stats.totals.alloc, 0);
        assert_eq!(ns_used(&p), 8, "its ports still fill the range");
        // ... and the warning about the range is raised all the same.
        assert!(
            out.warnings
                .iter()
                .any(|w| w.reason == Reason::Threshold && w.usage.used == 8)
        );
    }

    #[test]
    fn a_namespace_or_protocol_not_traced_is_left_out_entirely() {
        let filter = Filter {
            netns: vec![1],
            ..Default::default()
        };
        let mut p = pipeline_with(filter, Snapshot::default());
        let mut out = Recorded::default();
        p.apply(&connect(1, 40000, 1), &mut out).expect("sink");
        assert!(out.events.is_empty());
        assert_eq!(ns_used(&p), 0);
    }

    #[test]
    fn explicit_ports_count_only_towards_occupancy() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        let mut raw = raw_connect();
        raw.flags = FLAG_EXPLICIT;
        raw.lport = 40005;
        let explicit = decode_raw(&raw).expect("decodes");
        p.apply(&explicit, &mut out).expect("sink");
        assert!(out.events.is_empty(), "a port asked for is no allocation");
        assert_eq!(p.stats.totals.alloc, 0);
        assert_eq!(ns_used(&p), 1);
        let mut raw = raw_connect();
        raw.flags = FLAG_EXPLICIT;
        raw.lport = 40005;
        raw.event = EVENT_RELEASE;
        p.apply(&decode_raw(&raw).expect("decodes"), &mut out)
            .expect("sink");
        assert!(out.events.is_empty());
        assert_eq!(ns_used(&p), 0);
    }

    #[test]
    fn a_take_over_reports_the_freed_port_before_the_new_allocation() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        let first = connect(1, 40000, 1_000);
        p.apply(&first, &mut out).expect("sink");
        p.apply(&release(&first, 2_000, FLAG_TIME_WAIT), &mut out)
            .expect("sink");
        assert_eq!(
            out.events.len(),
            1,
            "entering TIME_WAIT is not a release line"
        );
        assert_eq!(ns_used(&p), 1, "TIME_WAIT still holds the port");
        // tcp_tw_reuse: the same connection again, by a new socket.
        p.apply(&connect(2, 40000, 5_000), &mut out).expect("sink");
        assert_eq!(
            out.events,
            vec![
                (1, Outcome::Allocated),
                (
                    1,
                    Outcome::Released {
                        lifetime_ns: 4_000,
                        time_wait_ns: Some(3_000)
                    }
                ),
                (2, Outcome::Allocated),
            ]
        );
        assert_eq!(ns_used(&p), 1, "one port, held by the new socket");
        assert_eq!(p.tracker.held(), 1);
    }

    #[test]
    fn a_live_allocation_replaces_the_snapshots_copy() {
        // The socket was made between attaching and the snapshot: both saw it.
        let seen = connect(9, 40003, 0);
        let snapshot = Snapshot::from_events(vec![seen.clone()]);
        let mut p = pipeline_with(Filter::default(), snapshot);
        assert_eq!(ns_used(&p), 1);
        let mut out = Recorded::default();
        p.apply(&connect(9, 40003, 10), &mut out).expect("sink");
        assert_eq!(ns_used(&p), 1, "counted once");
        // Its release frees it; nothing of the snapshot's copy is left behind.
        p.apply(&release(&seen, 20, 0), &mut out).expect("sink");
        assert_eq!(ns_used(&p), 0);
        assert!(p.snapshot.events().next().is_none());
    }

    #[test]
    fn snapshot_sockets_that_are_gone_are_freed_at_the_tick() {
        let old = connect(5, 40001, 0);
        let mut p = pipeline_with(Filter::default(), Snapshot::from_events(vec![old.clone()]));
        assert_eq!(ns_used(&p), 1);
        let mut out = Recorded::default();
        let gone = p.snapshot.retain_present(&Default::default());
        assert_eq!(gone, vec![old]);
        p.tick(&gone, KernelCounters::default(), 1, &mut out)
            .expect("sink");
        assert_eq!(ns_used(&p), 0);
        assert_eq!(out.ticks, 1);
    }

    #[test]
    fn a_reconciled_port_is_freed_and_counted_without_an_event_line() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        for i in 0..8 {
            p.apply(&connect(i, 40000 + i as u16, i), &mut out)
                .expect("sink");
        }
        assert_eq!(ns_used(&p), 8);
        p.reconciled(&[3, 4, 99], 1_000, &mut out).expect("sink");
        assert_eq!(ns_used(&p), 6, "their ports are free");
        assert_eq!(p.tracker.held(), 6);
        assert_eq!(p.stats.totals.reconciled, 2);
        assert_eq!(
            p.stats.totals.release, 0,
            "not releases: their lifetime is unknown"
        );
        assert_eq!(out.events.len(), 8, "the allocations only");
    }

    /// A failure's warning names who holds the scope's ports from every held socket: open
    /// ones, one in TIME_WAIT, the start-up snapshot's, one bound by number in the range;
    /// not a port outside the range, nor another namespace's.
    #[test]
    fn a_failure_names_the_holders_of_every_held_socket() {
        let named = |comm: &str, pid: u32, mut event: Event| {
            event.comm = comm.into();
            event.pid = pid;
            event
        };
        let bind = |cookie: u64, port: u16, explicit: bool| {
            let mut raw = raw_connect();
            raw.kind = port_trace_common::KIND_BIND;
            raw.rport = 0;
            raw.cookie = cookie;
            raw.lport = port;
            raw.flags = if explicit { FLAG_EXPLICIT } else { 0 };
            decode_raw(&raw).expect("decodes")
        };
        let snapshot = Snapshot::from_events(vec![named("nginx", 8, bind(100, 40008, false))]);
        let mut p = pipeline_with(Filter::default(), snapshot);
        let mut out = Recorded::default();
        let opened: Vec<Event> = (0..4).map(|i| connect(i, 40000 + i as u16, 10)).collect();
        for event in &opened {
            p.apply(event, &mut out).expect("sink");
        }
        p.apply(&release(&opened[3], 20, FLAG_TIME_WAIT), &mut out)
            .expect("sink");
        for event in [
            named("fixed", 9, bind(200, 40005, true)),
            named("fixed", 9, bind(201, 50000, true)),
        ] {
            p.apply(&event, &mut out).expect("sink");
        }
        let mut elsewhere = named("other", 10, connect(300, 40006, 30));
        elsewhere.netns = 99;
        p.apply(&elsewhere, &mut out).expect("sink");
        out.warnings.clear();
        // bind(0) found no port: the namespace's scope.
        let mut raw = raw_connect();
        raw.event = EVENT_FAIL;
        raw.errno = 98;
        raw.kind = port_trace_common::KIND_BIND;
        raw.rport = 0;
        raw.lport = 0;
        raw.ts_ns = 40;
        p.apply(&decode_raw(&raw).expect("decodes"), &mut out)
            .expect("sink");
        let failure = out
            .warnings
            .iter()
            .find(|w| w.reason == Reason::Failure)
            .expect("a failure's warning");
        let top: Vec<(String, u32)> = failure
            .top
            .iter()
            .map(|t| (t.holder.comm.as_str().to_string(), t.ports))
            .collect();
        assert_eq!(
            top,
            [("curl".into(), 4), ("nginx".into(), 1), ("fixed".into(), 1)],
            "3 open + 1 in TIME_WAIT; the snapshot's listener; 40005 but not 50000 (ties by pid)"
        );
        assert_eq!(failure.usage.used, 6);
    }

    #[test]
    fn a_failure_is_reported_with_a_critical_warning_after_its_event() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        let mut raw = raw_connect();
        raw.event = EVENT_FAIL;
        raw.errno = 99;
        p.apply(&decode_raw(&raw).expect("decodes"), &mut out)
            .expect("sink");
        assert_eq!(out.order, ["event", "warnings"]);
        assert_eq!(out.warnings[0].reason, Reason::Failure);
        assert_eq!(p.stats.totals.fail, 1);
    }

    #[test]
    fn finish_hands_the_sinks_the_final_counts() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        p.apply(&connect(1, 40000, 0), &mut out).expect("sink");
        let counters = KernelCounters {
            lost: crate::probes::LostCounts {
                ring_buffer_full: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        p.finish(counters, 10, &mut out).expect("sink");
        assert_eq!(out.finished, Some((1, 2, 1)));
    }

    /// port-trace's own socket found at start-up (its metrics listener on a port the kernel
    /// chose) is no listener in the range; another process's is.
    #[test]
    fn our_own_listener_at_start_up_is_no_finding() {
        let listener = |pid: u32, port: u16| {
            let mut e = connect(u64::from(port), port, 0);
            e.kind = crate::event::AllocKind::Bind;
            e.rport = 0;
            e.raddr = std::net::IpAddr::from([0, 0, 0, 0]);
            e.pid = pid;
            e
        };
        let snapshot = Snapshot::from_events(vec![listener(7, 40001), listener(8, 40002)]);
        let exhaustion = Exhaustion::with_range_reader(
            Thresholds {
                warn: 0.8,
                critical: 0.95,
            },
            tiny,
        );
        let mut p = Pipeline::new(
            Config {
                filter: Filter::default(),
                keep_intervals: false,
                started_ns: 0,
                host_netns: None,
                own_pid: Some(7),
            },
            snapshot,
            exhaustion,
        );
        let mut out = Recorded::default();
        p.begin(0, &mut out).expect("sink");
        p.tick(&[], KernelCounters::default(), 1_000, &mut out)
            .expect("sink");
        let listeners: Vec<u32> = out
            .findings
            .iter()
            .filter(|f| f.kind == crate::findings::Kind::ListenerInRange)
            .filter_map(|f| Some(f.who.as_ref()?.pid))
            .collect();
        assert_eq!(listeners, [8]);
    }

    #[test]
    fn findings_are_judged_at_the_tick_and_handed_on_once_a_listener_at_once() {
        let mut p = pipeline();
        let mut out = Recorded::default();
        // A listener on a port of the range (40000-40009), asked for by number.
        let mut raw = raw_connect();
        raw.flags = FLAG_EXPLICIT;
        raw.kind = port_trace_common::KIND_BIND;
        raw.lport = 40004;
        raw.rport = 0;
        p.apply(&decode_raw(&raw).expect("decodes"), &mut out)
            .expect("sink");
        // Said at once, not at the next interval.
        let kinds: Vec<_> = out.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [crate::findings::Kind::ListenerInRange]);
        p.tick(&[], KernelCounters::default(), 1, &mut out)
            .expect("sink");
        // The tick adds the range lint (10 ports), not the listener again.
        let listeners = out
            .findings
            .iter()
            .filter(|f| f.kind == crate::findings::Kind::ListenerInRange)
            .count();
        assert_eq!(listeners, 1, "{:?}", out.findings);
        let before = out.findings.len();
        p.tick(&[], KernelCounters::default(), 2, &mut out)
            .expect("sink");
        assert_eq!(out.findings.len(), before, "nothing new, nothing said");
        assert_eq!(p.view(2, &Default::default()).findings.len(), before);
    }
}
