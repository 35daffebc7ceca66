//! The human summary printed every `--interval` and on exit.

use std::{fmt::Write as _, sync::Arc};

use super::{events::FindingRecord, human_ns};
use crate::event::{comm::Comm, workload::Workload};
use crate::{
    exhaustion::level::Level,
    exhaustion::scope::{ScopeKey, Usage},
    findings::Finding,
    stats::{DISTRIBUTION_EDGES_NS, LifetimeSummary, Lifetimes, Stats},
};

/// How many processes, workloads and destinations the summary lists.
const TOP_PROCESSES: usize = 5;
const TOP_WORKLOADS: usize = 5;
const TOP_DESTINATIONS: usize = 5;
/// Width of the distribution bars.
const DISTRIBUTION_WIDTH: usize = 30;
/// The distribution's bucket labels, one per `DISTRIBUTION_EDGES_NS` edge.
const DISTRIBUTION_LABELS: [&str; DISTRIBUTION_EDGES_NS.len()] = [
    "<10us", "10-100us", "0.1-1ms", "1-10ms", "10-100ms", "0.1-1s", "1-10s", "10s-1m", "1-10m",
    "10m-1h", ">1h",
];
/// How many of the fullest scopes the summary shows.
pub const FULLEST_SCOPES: usize = 5;
const BAR_WIDTH: usize = 20;

/// `[#########-----------]`: how full, at a glance.
fn bar(usage: &Usage) -> String {
    let filled = ((usage.ratio().min(1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

/// `tcp netns 4026532181 (pod shop/api) to 10.0.0.5:443`.
pub fn scope_name(key: &ScopeKey, owner: Option<&Workload>) -> String {
    let owner = owner.map(|o| format!(" ({o})")).unwrap_or_default();
    match key.destination() {
        None => format!("{} netns {}{owner}", key.proto, key.netns),
        Some(d) => format!(
            "{} netns {}{owner} to {}",
            key.proto,
            key.netns,
            std::net::SocketAddr::new(d.raddr, d.rport)
        ),
    }
}

/// A lifetime figure: `-` where nothing was released, so no lifetime is known (not `0ns`).
fn lifetime(s: &LifetimeSummary, ns: u64) -> String {
    if s.count == 0 {
        "-".to_string()
    } else {
        human_ns(ns)
    }
}

fn row(out: &mut String, label: &str, s: &LifetimeSummary) {
    let _ = writeln!(
        out,
        "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        label,
        s.count,
        lifetime(s, s.p50),
        lifetime(s, s.p90),
        lifetime(s, s.p99),
        lifetime(s, s.p999),
        lifetime(s, s.max)
    );
}

/// `owner` names the workload that owns a namespace, where one does.
/// The fullest scopes, with what names and splits them.
pub struct Scopes<'a> {
    pub scopes: &'a [(ScopeKey, Usage, Level)],
    /// The workload that owns a namespace, where one does.
    pub owner: &'a dyn Fn(u32) -> Option<Arc<Workload>>,
    /// A scope's ports in TIME_WAIT.
    pub time_wait: &'a dyn Fn(&ScopeKey) -> u32,
}

/// `held` is (all, of which in TIME_WAIT); `findings` the findings in force.
pub fn render(
    stats: &Stats,
    elapsed_ns: u64,
    held: (usize, usize),
    scopes: &Scopes<'_>,
    findings: &[&Finding],
) -> String {
    let Scopes {
        scopes,
        owner,
        time_wait: scope_time_wait,
    } = *scopes;
    let t = &stats.totals;
    let (held, held_time_wait) = held;
    let time_wait = if held_time_wait > 0 {
        format!(" ({held_time_wait} TIME_WAIT)")
    } else {
        String::new()
    };
    let mut out = format!(
        "port-trace after {}: {} allocated, {} released, {} held now{time_wait}, {} failed, {} \
         lost",
        human_ns(elapsed_ns),
        t.alloc,
        t.release,
        held,
        t.fail,
        t.lost
    );
    if t.lost > 0 {
        let _ = write!(
            out,
            " (ring buffer full: {}, socket table full: {}, failure ring full: {}",
            stats.lost.ring_buffer_full, stats.lost.socket_table_full, stats.lost.failure_ring_full
        );
        if stats.lost.program_skipped > 0 {
            let _ = write!(
                out,
                ", eBPF program runs skipped: {}",
                stats.lost.program_skipped
            );
        }
        out.push(')');
    }
    // Ports whose release was lost, found free in the kernel's sockets.
    if t.reconciled > 0 {
        let _ = write!(out, ", {} reconciled", t.reconciled);
    }
    if t.output_lines_dropped > 0 {
        let _ = write!(
            out,
            ", {} output lines dropped (not taken by stdout)",
            t.output_lines_dropped
        );
    }
    if t.fail > 0 {
        let by_error: Vec<String> = stats
            .fails_by_error
            .iter()
            .map(|(error, n)| format!("{error}: {n}"))
            .collect();
        let _ = write!(out, "\n  failed allocations: {}", by_error.join(", "));
    }
    // Only when it happened: a failed program run may mean a missing or incomplete event.
    let probe_errors = stats.probe_errors.total();
    if probe_errors > 0 {
        let by_program: Vec<String> = stats
            .probe_errors
            .failing()
            .map(|(program, count)| format!("{program}: {count}"))
            .collect();
        let _ = write!(
            out,
            "\n  failed eBPF program runs: {probe_errors} ({})",
            by_program.join(", ")
        );
    }
    out.push('\n');
    // First what to change, then the numbers.
    if !findings.is_empty() {
        let _ = writeln!(out, "  findings");
        for finding in findings {
            let record = FindingRecord::from(*finding);
            let _ = writeln!(out, "  {}", record.to_text());
        }
    }
    if !scopes.is_empty() {
        let _ = writeln!(out, "  fullest ephemeral ranges");
        for (key, usage, level) in scopes {
            let mark = match level {
                Level::Critical => "  CRITICAL",
                Level::Warn => "  WARNING",
                Level::Ok => "",
            };
            let time_wait = match scope_time_wait(key) {
                0 => String::new(),
                n => format!(" ({n} TIME_WAIT)"),
            };
            let _ = writeln!(
                out,
                "  {:<44} {} {:>6}/{:<6} {:>4.0}%{mark}{time_wait}",
                scope_name(key, owner(key.netns).as_deref()),
                bar(usage),
                usage.used,
                usage.capacity,
                usage.ratio() * 100.0
            );
        }
    }
    let all = stats.all();
    if all.summary().count == 0 {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "lifetime", "released", "p50", "p90", "p99", "p99.9", "max"
    );
    row(&mut out, "all", &all.summary());
    for (proto, lifetimes) in stats.by_proto() {
        row(&mut out, &proto.to_string(), &lifetimes.summary());
    }
    for (kind, lifetimes) in stats.by_kind() {
        row(&mut out, &kind.to_string(), &lifetimes.summary());
    }
    distribution(&mut out, &all);
    top_processes(&mut out, stats);
    top_workloads(&mut out, stats);
    top_destinations(&mut out, stats);
    out
}

/// The lifetime distribution as bars over log-scaled buckets, from the first bucket with
/// anything in it to the last, with the bucket of each percentile marked.
fn distribution(out: &mut String, lifetimes: &Lifetimes) {
    let counts = lifetimes.distribution();
    let (Some(first), Some(last)) = (
        counts.iter().position(|&c| c > 0),
        counts.iter().rposition(|&c| c > 0),
    ) else {
        return;
    };
    let s = lifetimes.summary();
    let most = counts.iter().copied().max().unwrap_or(1).max(1);
    let _ = writeln!(out, "  lifetime distribution, all {} released", s.count);
    for bucket in first..=last {
        let low = bucket
            .checked_sub(1)
            .map_or(0, |b| DISTRIBUTION_EDGES_NS[b]);
        let high = DISTRIBUTION_EDGES_NS[bucket];
        let last_bucket = bucket + 1 == DISTRIBUTION_EDGES_NS.len();
        let marks: Vec<&str> = [
            ("p50", s.p50),
            ("p90", s.p90),
            ("p99", s.p99),
            ("p99.9", s.p999),
            ("max", s.max),
        ]
        .into_iter()
        .filter(|&(_, v)| v >= low && (v < high || last_bucket))
        .map(|(name, _)| name)
        .collect();
        // Any count at all shows at least one mark: a rare long hold must not vanish.
        let width = match counts[bucket] {
            0 => 0,
            n => ((n as f64 / most as f64 * DISTRIBUTION_WIDTH as f64).round() as usize)
                .clamp(1, DISTRIBUTION_WIDTH),
        };
        let line = format!(
            "  {:>10} |{}{}| {:>9}  {}",
            DISTRIBUTION_LABELS[bucket],
            "#".repeat(width),
            " ".repeat(DISTRIBUTION_WIDTH - width),
            counts[bucket],
            marks.join(" ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn top_processes(out: &mut String, stats: &Stats) {
    let mut processes: Vec<(Comm, u64)> = stats
        .allocs_by_process()
        .iter()
        .map(|(c, n)| (*c, *n))
        .collect();
    for comm in stats.fails_by_process.keys() {
        if !stats.allocs_by_process().contains_key(comm) {
            processes.push((*comm, 0));
        }
    }
    if processes.is_empty() {
        return;
    }
    let fails = |comm: &Comm| stats.fails_by_process.get(comm).copied().unwrap_or(0);
    processes.sort_by(|a, b| {
        (b.1 + fails(&b.0))
            .cmp(&(a.1 + fails(&a.0)))
            .then_with(|| a.0.cmp(&b.0))
    });
    let _ = writeln!(
        out,
        "  {:<22} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "top processes", "allocated", "failed", "released", "p50", "p99", "max"
    );
    for (comm, allocated) in processes.into_iter().take(TOP_PROCESSES) {
        let s = stats
            .by_process()
            .get(&comm)
            .map(Lifetimes::summary)
            .unwrap_or_else(|| Lifetimes::default().summary());
        let _ = writeln!(
            out,
            "  {:<22} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            comm,
            allocated,
            fails(&comm),
            s.count,
            lifetime(&s, s.p50),
            lifetime(&s, s.p99),
            lifetime(&s, s.max)
        );
    }
}

/// Containers, pods and services, where the `workload` stage named any.
fn top_workloads(out: &mut String, stats: &Stats) {
    if !stats.has_workloads() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:<44} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "top workloads", "allocated", "failed", "released", "p50", "p99", "max"
    );
    let other = &stats.other_workloads;
    let rows = stats
        .top_workloads(TOP_WORKLOADS)
        .into_iter()
        .map(|(cgroup, w)| {
            let name = match w.workload.as_deref() {
                Some(workload) if !workload.to_string().is_empty() => workload.to_string(),
                _ if cgroup.is_known() => format!("cgroup id {cgroup}"),
                _ => "(cgroup unknown)".to_string(),
            };
            (name, w)
        })
        .chain((other.alloc + other.fail > 0).then(|| ("(others)".to_string(), other)));
    for (name, w) in rows {
        let s = w.lifetimes.summary();
        let _ = writeln!(
            out,
            "  {:<44} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            name,
            w.alloc,
            w.fail,
            s.count,
            lifetime(&s, s.p50),
            lifetime(&s, s.p99),
            lifetime(&s, s.max)
        );
    }
}

fn top_destinations(out: &mut String, stats: &Stats) {
    let top = stats.top_destinations(TOP_DESTINATIONS);
    if top.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:<22} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "top destinations", "allocated", "failed", "released", "mean", "max"
    );
    let other = stats.other_destinations;
    let rows = top
        .iter()
        .map(|(addr, d)| (addr.to_string(), *d))
        .chain((other.alloc + other.fail > 0).then(|| ("(others)".to_string(), other)));
    for (name, d) in rows {
        let _ = writeln!(
            out,
            "  {:<22} {:>9} {:>7} {:>9} {:>9} {:>9}",
            name,
            d.alloc,
            d.fail,
            d.release,
            human_ns(d.mean_lifetime_ns()),
            human_ns(d.max_lifetime_ns)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_owner(_: u32) -> Option<Arc<Workload>> {
        None
    }

    fn no_time_wait(_: &ScopeKey) -> u32 {
        0
    }

    /// Scopes with no owner and nothing in TIME_WAIT.
    fn plain(scopes: &[(ScopeKey, Usage, Level)]) -> Scopes<'_> {
        Scopes {
            scopes,
            owner: &no_owner,
            time_wait: &no_time_wait,
        }
    }
    use crate::stats::tests::one_connect_held_for;

    #[test]
    fn distribution_bars_mark_the_percentiles() {
        let mut lifetimes = Lifetimes::default();
        // 85 short (~50 us) holds, 14 of ~5 ms, one TIME_WAIT-long (61 s).
        for _ in 0..85 {
            lifetimes.record(50_000);
        }
        for _ in 0..14 {
            lifetimes.record(5_000_000);
        }
        lifetimes.record(61_000_000_000);
        let mut out = String::new();
        distribution(&mut out, &lifetimes);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0], "  lifetime distribution, all 100 released",
            "{out}"
        );
        // From the first bucket with anything in it to the last: 10us-100us .. 1-10m.
        assert!(lines[1].trim_start().starts_with("10-100us |"), "{out}");
        assert!(lines[1].ends_with("85  p50"), "{out}");
        assert!(
            lines[1].contains(&"#".repeat(DISTRIBUTION_WIDTH)),
            "the fullest is full: {out}"
        );
        assert!(lines[3].trim_start().starts_with("1-10ms |"), "{out}");
        assert!(lines[3].ends_with("14  p90 p99"), "{out}");
        assert!(lines[3].contains("|#####"), "{out}");
        // Empty buckets in between show as empty; one hold out of 100 still gets a mark.
        assert!(lines[2].contains("|      "), "{out}");
        let last = lines.last().expect("a line");
        assert!(last.trim_start().starts_with("1-10m |#"), "{out}");
        assert!(last.ends_with("1  p99.9 max"), "{out}");
        assert_eq!(lines.len(), 1 + 8, "{out}");
    }

    #[test]
    fn shows_dropped_output_lines_apart_from_lost_events_and_only_when_any() {
        let (mut stats, _) = one_connect_held_for(2_000_000);
        assert!(!render(&stats, 1, (0, 0), &plain(&[]), &[]).contains("dropped"));
        stats.set_output_lines_dropped(7);
        let text = render(&stats, 1, (0, 0), &plain(&[]), &[]);
        assert!(
            text.contains("0 lost, 7 output lines dropped (not taken by stdout)"),
            "{text}"
        );
    }

    #[test]
    fn names_workloads_and_namespace_owners_where_known() {
        use crate::{
            event::workload::fixtures::in_container, stats::tests::one_connect_held_for,
            track::Outcome,
        };
        let (mut stats, mut event) = one_connect_held_for(2_000_000);
        // Nothing named yet: no workload table, no owner.
        let key = ScopeKey {
            netns: 7,
            proto: crate::event::Proto::Tcp,
            scope: crate::exhaustion::scope::Scope::Namespace,
        };
        let usage = Usage {
            used: 9,
            capacity: 10,
        };
        let scopes = [(key, usage, Level::Warn)];
        let text = render(&stats, 1, (0, 0), &plain(&scopes), &[]);
        assert!(!text.contains("top workloads"), "{text}");
        in_container(&mut event, 42, "web");
        stats.record(&event, Outcome::Allocated);
        stats.record(&event, Outcome::Allocated);
        let owner = event.workload.clone();
        let text = render(
            &stats,
            1,
            (0, 0),
            &Scopes {
                scopes: &scopes,
                owner: &|netns| (netns == 7).then(|| owner.clone()).flatten(),
                time_wait: &|_| 0,
            },
            &[],
        );
        assert!(
            text.contains("tcp netns 7 (container web (000000000000))"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("container web") && !l.contains("netns"))
            .expect("the container in the top workloads");
        // Two allocations named; the first (unnamed cgroup) is its own row.
        assert_eq!(row.split_whitespace().nth(3), Some("2"), "{row}");
        assert!(text.contains("(cgroup unknown)"), "{text}");
    }

    #[test]
    fn shows_totals_groups_and_lost_reasons() {
        let (mut stats, _) = one_connect_held_for(2_000_000);
        stats.set_lost(crate::probes::LostCounts {
            ring_buffer_full: 3,
            ..Default::default()
        });
        let key = ScopeKey {
            netns: 7,
            proto: crate::event::Proto::Tcp,
            scope: crate::exhaustion::scope::Scope::Namespace,
        };
        let usage = Usage {
            used: 9,
            capacity: 10,
        };
        let text = render(
            &stats,
            1_000_000_000,
            (0, 0),
            &Scopes {
                scopes: &[(key, usage, Level::Warn)],
                owner: &no_owner,
                time_wait: &|_| 3,
            },
            &[],
        );
        assert!(
            text.contains("tcp netns 7")
                && text.contains("[##################--]")
                && text.contains("90%  WARNING (3 TIME_WAIT)"),
            "{text}"
        );
        assert!(
            text.contains("9/10") && text.contains("90%  WARNING"),
            "{text}"
        );
        assert!(text.contains("1 allocated, 1 released"), "{text}");
        assert!(text.contains("3 lost (ring buffer full: 3"), "{text}");
        assert!(
            !text.contains("reconciled") && !text.contains("skipped"),
            "{text}"
        );
        stats.set_lost(crate::probes::LostCounts {
            program_skipped: 2,
            ..Default::default()
        });
        stats.totals.reconciled = 4;
        let text = render(&stats, 1_000_000_000, (0, 0), &plain(&[]), &[]);
        assert!(
            text.contains(
                "2 lost (ring buffer full: 0, socket table full: 0, failure ring full: 0, \
                 eBPF program runs skipped: 2), 4 reconciled\n"
            ),
            "{text}"
        );
        let process = text
            .lines()
            .find(|l| l.trim_start().starts_with("curl"))
            .expect("curl in the top processes");
        assert_eq!(
            process.split_whitespace().collect::<Vec<_>>(),
            ["curl", "1", "0", "1", "2.0ms", "2.0ms", "2.0ms"],
            "{text}"
        );
        let destination = text
            .lines()
            .find(|l| l.trim_start().starts_with("10.1.2.3:443"))
            .expect("the destination in the top destinations");
        assert_eq!(
            destination.split_whitespace().collect::<Vec<_>>(),
            ["10.1.2.3:443", "1", "0", "1", "2.0ms", "2.0ms"],
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("tcp")),
            "{text}"
        );
    }

    #[test]
    fn nothing_released_shows_no_lifetime_and_names_are_harmless() {
        let (mut stats, mut event) = one_connect_held_for(1_000);
        // A process that allocated and released nothing yet, with a hostile name.
        event.comm = Comm::new(b"\x1b]0;x\x07\r\nFAKE");
        stats.record(&event, crate::track::Outcome::Allocated);
        let text = render(&stats, 1, (1, 0), &plain(&[]), &[]);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        let process = text
            .lines()
            .find(|l| l.trim_start().starts_with(r"\x1b]0;x"))
            .expect("the process, escaped, on one line");
        assert_eq!(
            process.split_whitespace().collect::<Vec<_>>(),
            [r"\x1b]0;x\x07\x0d\x0aFAKE", "1", "0", "0", "-", "-", "-"],
            "{text}"
        );
    }

    #[test]
    fn failed_program_runs_show_only_when_there_are_some() {
        use crate::probes::{Backend, ProbeErrors, counters::ProgramErrors};
        let (mut stats, _) = one_connect_held_for(1_000);
        assert!(!render(&stats, 1, (0, 0), &plain(&[]), &[]).contains("failed eBPF"));
        stats.probe_errors = ProbeErrors {
            programs: vec![ProgramErrors {
                program: "tcp_state",
                backend: Backend::Tracepoint,
                count: 2,
            }],
        };
        let text = render(&stats, 1, (0, 0), &plain(&[]), &[]);
        assert!(
            text.contains("\n  failed eBPF program runs: 2 (tcp_state: 2)\n"),
            "{text}"
        );
    }

    #[test]
    fn findings_come_first_and_time_wait_is_counted_in_the_totals() {
        let stats = Stats::new(false);
        let churn = crate::findings::fixtures::churn();
        let text = render(&stats, 1, (800, 780), &plain(&[]), &[&churn]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("800 held now (780 TIME_WAIT)"), "{text}");
        assert_eq!(lines[1], "  findings");
        assert!(
            lines[2].starts_with(
                "  FINDING warn time_wait_churn (appeared) netns 7 to 10.0.0.5:443, curl[42]: \
                 780 of 800 held ports in TIME_WAIT (98%)"
            ),
            "{text}"
        );
        assert!(lines[2].contains("fix: reuse connections"), "{text}");
        let quiet = render(&stats, 1, (5, 0), &plain(&[]), &[]);
        assert!(quiet.contains("5 held now, "), "{quiet}");
        assert!(!quiet.contains("findings"), "{quiet}");
    }
}
