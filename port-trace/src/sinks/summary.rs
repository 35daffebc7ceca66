//! The human summary printed every `--interval` and on exit.

use std::fmt::Write as _;

use super::human_ns;
use crate::{
    occupancy::{ScopeKey, Usage},
    stats::{LifetimeSummary, Stats},
    warnings::Level,
};

/// How many processes the summary lists.
const TOP_PROCESSES: usize = 5;
/// How many of the fullest scopes the summary shows.
pub const FULLEST_SCOPES: usize = 5;
const BAR_WIDTH: usize = 20;

/// `[#########-----------]`: how full, at a glance.
fn bar(usage: &Usage) -> String {
    let filled = ((usage.ratio().min(1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

fn scope_name(key: &ScopeKey) -> String {
    match key.destination() {
        None => format!("{} netns {}", key.proto, key.netns),
        Some(d) => format!(
            "{} netns {} to {}",
            key.proto,
            key.netns,
            std::net::SocketAddr::new(d.raddr, d.rport)
        ),
    }
}

fn row(out: &mut String, label: &str, s: &LifetimeSummary) {
    let _ = writeln!(
        out,
        "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        label,
        s.count,
        human_ns(s.p50),
        human_ns(s.p90),
        human_ns(s.p99),
        human_ns(s.p999),
        human_ns(s.max)
    );
}

pub fn render(
    stats: &Stats,
    elapsed_ns: u64,
    held: usize,
    scopes: &[(ScopeKey, Usage, Level)],
) -> String {
    let t = &stats.totals;
    let mut out = format!(
        "port-trace after {}: {} allocated, {} released, {} held now, {} failed, {} lost",
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
            " (ring buffer full: {}, socket table full: {}, failure ring full: {})",
            stats.lost.ring_buffer_full, stats.lost.socket_table_full, stats.lost.failure_ring_full
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
    out.push('\n');
    if !scopes.is_empty() {
        let _ = writeln!(out, "  fullest ephemeral ranges");
        for (key, usage, level) in scopes {
            let mark = match level {
                Level::Critical => "  CRITICAL",
                Level::Warn => "  WARNING",
                Level::Ok => "",
            };
            let _ = writeln!(
                out,
                "  {:<44} {} {:>6}/{:<6} {:>4.0}%{mark}",
                scope_name(key),
                bar(usage),
                usage.used,
                usage.capacity,
                usage.ratio() * 100.0
            );
        }
    }
    if stats.all.summary().count == 0 {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "lifetime", "released", "p50", "p90", "p99", "p99.9", "max"
    );
    row(&mut out, "all", &stats.all.summary());
    for (proto, lifetimes) in &stats.by_proto {
        row(&mut out, &proto.to_string(), &lifetimes.summary());
    }
    for (kind, lifetimes) in &stats.by_kind {
        row(&mut out, &kind.to_string(), &lifetimes.summary());
    }
    let mut processes: Vec<_> = stats.by_process.iter().collect();
    processes.sort_by_key(|(_, l)| std::cmp::Reverse(l.summary().count));
    for (comm, lifetimes) in processes.into_iter().take(TOP_PROCESSES) {
        row(&mut out, &format!("[{comm}]"), &lifetimes.summary());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::one_connect_held_for;

    #[test]
    fn shows_totals_groups_and_lost_reasons() {
        let (mut stats, _) = one_connect_held_for(2_000_000);
        stats.set_lost(crate::stats::LostCounts {
            ring_buffer_full: 3,
            ..Default::default()
        });
        let key = ScopeKey {
            netns: 7,
            proto: crate::events::Proto::Tcp,
            scope: crate::occupancy::Scope::Namespace,
        };
        let usage = Usage {
            used: 9,
            capacity: 10,
        };
        let text = render(&stats, 1_000_000_000, 0, &[(key, usage, Level::Warn)]);
        assert!(
            text.contains("tcp netns 7") && text.contains("[##################--]"),
            "{text}"
        );
        assert!(
            text.contains("9/10") && text.contains("90%  WARNING"),
            "{text}"
        );
        assert!(text.contains("1 allocated, 1 released"), "{text}");
        assert!(text.contains("3 lost (ring buffer full: 3"), "{text}");
        assert!(text.contains("[curl]"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("tcp")),
            "{text}"
        );
    }
}
