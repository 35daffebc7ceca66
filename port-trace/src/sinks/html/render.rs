//! The page model (`model::Page`) as one self-contained HTML page: inline CSS and SVG, one
//! small inline script (times in the reader's zone), nothing fetched. Every text that comes
//! from the trace goes through `chart::esc`.

use std::fmt::Write as _;

use super::{
    chart::{
        Linear, Log10, Svg, bar_height, bucket_bounds, duration_label, esc, nice_step, px,
        time_step_ns,
    },
    model::{Distribution, Page, RateSeries, ScopeView},
};
use crate::{
    exhaustion::level::Level,
    findings::Severity,
    sinks::human_ns,
    stats::{DISTRIBUTION_EDGES_NS, LifetimeSummary},
};

const CSS: &str = include_str!("page.css");

/// Runs once: times in the reader's zone, and marks that it ran without an error and how
/// long after navigation (the tests read them from the DOM).
const SCRIPT: &str = "window.addEventListener('error',function(e){\
document.documentElement.setAttribute('data-script-error',String(e.message));});\
document.querySelectorAll('time[datetime]').forEach(function(t){\
var d=new Date(t.getAttribute('datetime'));\
if(!isNaN(d.getTime())){t.title=t.textContent;t.textContent=d.toLocaleString();}});\
var r=document.documentElement;\
r.setAttribute('data-script-ms',String(Math.round(performance.now())));\
r.setAttribute('data-script','ran');";

/// Timeline charts' size in SVG units (they scale to the page's width).
const WIDE: (f64, f64) = (720.0, 200.0);
const SMALL: (f64, f64) = (360.0, 150.0);
/// Room for the axes' labels.
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// `n` with thousands separated by commas.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Unix-epoch ns as RFC 3339 UTC, to the second.
fn utc(epoch_ns: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(epoch_ns);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A time axis: where tracing started (if known) and how long the chart spans.
#[derive(Clone, Copy)]
pub struct TimeAxis {
    started_epoch_ns: Option<u64>,
    span_ns: u64,
}

impl TimeAxis {
    /// The label of `t_ns` after the start: the UTC clock where the start is known (with
    /// the date when the span is days), else the offset.
    fn label(&self, t_ns: u64, step_ns: u64) -> String {
        match self.started_epoch_ns {
            Some(start) => {
                let text = utc(start.saturating_add(t_ns));
                // 2024-01-02T03:04:05Z
                if self.span_ns >= 2 * 86_400_000_000_000 {
                    format!("{} {}", &text[5..10], &text[11..16])
                } else if step_ns < 60_000_000_000 {
                    text[11..19].to_string()
                } else {
                    text[11..16].to_string()
                }
            }
            None => format!("+{}", duration_label(t_ns)),
        }
    }
}

/// A chart's plotting area and scales.
struct Frame {
    x: Linear,
    y: Linear,
    x0: f64,
    x1: f64,
    y0: f64,
}

/// Draws the grid, the y axis (0 to `y_max`, labelled by `y_fmt`) and the time axis (0 to
/// `x_max_ns`), and hands back the frame to plot in.
fn time_frame(
    svg: &mut Svg,
    (w, h): (f64, f64),
    axis: TimeAxis,
    x_max_ns: u64,
    y_max: f64,
) -> Frame {
    let (x0, x1, y0, y1) = (LEFT, w - RIGHT, h - BOTTOM, TOP);
    let (y_step, y_top) = nice_step(y_max, 4);
    let x_max = x_max_ns.max(1) as f64;
    let frame = Frame {
        x: Linear::new((0.0, x_max), (x0, x1)),
        y: Linear::new((0.0, y_top), (y0, y1)),
        x0,
        x1,
        y0,
    };
    let mut v = 0.0;
    while v <= y_top + y_step / 2.0 {
        let y = frame.y.at(v);
        svg.line((x0, y), (x1, y), "grid");
        svg.text((x0 - 4.0, y + 3.5), "end", "ax", &axis_number(v, y_step));
        v += y_step;
    }
    let step = time_step_ns(x_max_ns, if w > 500.0 { 7 } else { 4 });
    let mut t = 0u64;
    while t <= x_max_ns {
        let x = frame.x.at(t as f64);
        svg.line((x, y0), (x, y0 + 4.0), "tick");
        svg.text((x, h - 6.0), "middle", "ax", &axis.label(t, step));
        t = match t.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    svg.line((x0, y0), (x1, y0), "axis");
    frame
}

/// An axis label: as many decimals as the step between labels needs.
pub fn axis_number(v: f64, step: f64) -> String {
    if step >= 1.0 || v == 0.0 {
        return count(v.round().max(0.0) as u64);
    }
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

fn rate((start, end, n): (u64, u64, u64)) -> f64 {
    let seconds = end.saturating_sub(start) as f64 / 1e9;
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// One scope's occupancy over time: used against capacity, the warn and critical lines,
/// failures where they happened, the forecast where there is one.
fn scope_chart(out: &mut String, page: &Page, scope: &ScopeView, axis: TimeAxis) {
    let capacity = f64::from(scope.capacity.max(1));
    let forecast_ns = scope
        .forecast_s
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| (s * 1e9) as u64);
    // The forecast gets a quarter of the span at most, past the end.
    let extra = forecast_ns.map_or(0, |f| f.min(axis.span_ns / 4).max(1));
    let x_max = axis.span_ns.saturating_add(extra);
    let label = format!("occupancy of {}", scope.name);
    let mut svg = Svg::new(WIDE.0 as u32, WIDE.1 as u32, &label);
    let frame = time_frame(
        &mut svg,
        WIDE,
        TimeAxis {
            span_ns: x_max,
            ..axis
        },
        x_max,
        capacity,
    );
    let (warn, critical) = (page.meta.thresholds.warn, page.meta.thresholds.critical);
    let y = frame.y.at(capacity);
    svg.line((frame.x0, y), (frame.x1, y), "cap");
    // Labelled under their lines, at the left: the right end is where the scope fills.
    for (ratio, class, name) in [(critical, "crit", "critical"), (warn, "warn", "warn")] {
        let y = frame.y.at(capacity * ratio);
        svg.line((frame.x0, y), (frame.x1, y), class);
        svg.text(
            (frame.x0 + 4.0, y + 10.0),
            "start",
            class,
            &format!("{name} {:.0}%", ratio * 100.0),
        );
    }
    let points: Vec<(f64, f64)> = scope
        .points
        .iter()
        .map(|p| (frame.x.at(p.end_ns as f64), frame.y.at(f64::from(p.used))))
        .collect();
    svg.polyline(&points, "used", Some(&label));
    for p in scope.points.iter().filter(|p| p.fails > 0) {
        let x = frame.x.at(p.end_ns as f64);
        svg.line((x, frame.y.at(capacity)), (x, frame.y0), "failline");
        svg.dot(
            (x, frame.y.at(f64::from(p.fail_used))),
            5.0,
            "fail",
            &format!(
                "{} failed at {}/{} ports ({})",
                p.fails,
                p.fail_used,
                scope.capacity,
                axis.label(p.end_ns, 1)
            ),
        );
    }
    if let (Some(forecast), Some(&last)) = (forecast_ns, points.last()) {
        // From the last point towards full, as far as the chart goes.
        let shown = extra.min(forecast) as f64 / forecast as f64;
        let used = f64::from(scope.used);
        let end = (
            frame.x.at(x_max as f64),
            frame.y.at(used + (capacity - used) * shown),
        );
        svg.polyline(
            &[last, end],
            "forecast",
            Some(&format!(
                "full in {} at the current pace",
                human_ns(forecast)
            )),
        );
    }
    let level = match scope.level {
        Level::Critical => r#" <span class="badge critical">critical</span>"#,
        Level::Warn => r#" <span class="badge warn">warning</span>"#,
        Level::Ok => "",
    };
    let forecast = forecast_ns
        .map(|f| format!(", full in {} at the current pace", human_ns(f)))
        .unwrap_or_default();
    let fails = match scope.fails {
        0 => String::new(),
        n => format!(r#", <strong class="bad">{} failed</strong>"#, count(n)),
    };
    let _ = write!(
        out,
        r#"<figure class="scope"><figcaption><b>{}</b>{level}: {} of {} ports ({:.0}%){fails}{}</figcaption>{}</figure>"#,
        esc(&scope.name),
        count(u64::from(scope.used)),
        count(u64::from(scope.capacity)),
        f64::from(scope.used) / capacity * 100.0,
        esc(&forecast),
        svg.finish()
    );
}

/// Lines of per-second rates, with a legend; failures as red marks on the time axis.
fn rates_chart(
    out: &mut String,
    title: &str,
    series: &[RateSeries],
    fails: Option<&RateSeries>,
    axis: TimeAxis,
) {
    let most = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| rate(*p)))
        .fold(0.0, f64::max);
    let mut svg = Svg::new(WIDE.0 as u32, WIDE.1 as u32, title);
    let frame = time_frame(&mut svg, WIDE, axis, axis.span_ns, most);
    let mut legend = String::new();
    for (i, s) in series.iter().enumerate() {
        let class = format!("s s{}", i % 8);
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&p| {
                let mid = (p.0 + p.1) / 2;
                (frame.x.at(mid as f64), frame.y.at(rate(p)))
            })
            .collect();
        svg.polyline(&points, &class, Some(&s.label));
        let _ = write!(
            legend,
            r#"<li><span class="sw s{}"></span>{}</li>"#,
            i % 8,
            esc(&s.label)
        );
    }
    if let Some(fails) = fails {
        for p in fails.points.iter().filter(|p| p.2 > 0) {
            let x = frame.x.at(((p.0 + p.1) / 2) as f64);
            svg.rect(
                (x - 2.0, frame.y0 - 8.0),
                (4.0, 8.0),
                "fail",
                &format!("{} failed ({})", count(p.2), axis.label(p.1, 1)),
            );
        }
        if fails.points.iter().any(|p| p.2 > 0) {
            legend.push_str(r#"<li><span class="sw failsw"></span>failed allocations</li>"#);
        }
    }
    let _ = write!(
        out,
        r#"<figure><figcaption>{}</figcaption>{}<ul class="legend">{legend}</ul></figure>"#,
        esc(title),
        svg.finish()
    );
}

/// Ports held over time, with the part in TIME_WAIT.
fn held_chart(out: &mut String, page: &Page, axis: TimeAxis) {
    let most = page.held_points.iter().map(|p| p.2).max().unwrap_or(0) as f64;
    let title = "ports held (peak per point)";
    let mut svg = Svg::new(WIDE.0 as u32, WIDE.1 as u32, title);
    let frame = time_frame(&mut svg, WIDE, axis, axis.span_ns, most);
    let at = |t: u64, v: u64| (frame.x.at(t as f64), frame.y.at(v as f64));
    let held: Vec<_> = page.held_points.iter().map(|p| at(p.1, p.2)).collect();
    let tw: Vec<_> = page.held_points.iter().map(|p| at(p.1, p.3)).collect();
    svg.polyline(&held, "s s0", Some("held"));
    svg.polyline(&tw, "s tw", Some("in TIME_WAIT"));
    let _ = write!(
        out,
        r#"<figure><figcaption>{title}</figcaption>{}<ul class="legend"><li><span class="sw s0"></span>held</li><li><span class="sw twsw"></span>of which in TIME_WAIT</li></ul></figure>"#,
        svg.finish()
    );
}

/// The lifetime distribution on a log axis: a bar per bucket (the part through TIME_WAIT
/// stacked in its own colour), the percentiles marked where they fall.
fn distribution_chart(out: &mut String, d: &Distribution, (w, h): (f64, f64)) {
    let (Some(first), Some(last)) = (
        d.counts.iter().position(|&c| c > 0),
        d.counts.iter().rposition(|&c| c > 0),
    ) else {
        return;
    };
    let s = &d.summary;
    let title = format!("lifetimes, {}: {} released", d.label, count(s.count));
    let mut svg = Svg::new(w as u32, h as u32, &title);
    let (x0, x1, y0, y1) = (LEFT - 20.0, w - RIGHT, h - BOTTOM, TOP + 14.0);
    // A bucket of context on each side, where there is one.
    let (first, last) = (
        first.saturating_sub(1),
        (last + 1).min(DISTRIBUTION_EDGES_NS.len() - 1),
    );
    let x = Log10::new(
        (bucket_bounds(first).0 as f64, bucket_bounds(last).1 as f64),
        (x0, x1),
    );
    let most = d.counts.iter().copied().max().unwrap_or(0);
    for i in first..=last {
        let (low, high) = bucket_bounds(i);
        let (bx0, bx1) = (x.at(low as f64) + 1.0, x.at(high as f64) - 1.0);
        let height = bar_height(d.counts[i], most, y0 - y1, 2.0);
        let range = format!(
            "{}{}",
            if i == 0 {
                "<".to_string()
            } else {
                format!("{}-", duration_label(low))
            },
            if i + 1 == DISTRIBUTION_EDGES_NS.len() {
                format!("{}+", duration_label(low))
            } else {
                duration_label(high)
            }
        );
        let tw = d.time_wait.map_or(0, |tw| tw[i]);
        let tip = if tw > 0 {
            format!(
                "{range}: {} ({} through TIME_WAIT)",
                count(d.counts[i]),
                count(tw)
            )
        } else {
            format!("{range}: {}", count(d.counts[i]))
        };
        if d.counts[i] > 0 {
            svg.rect((bx0, y0 - height), (bx1 - bx0, height), "bar", &tip);
        }
        if tw > 0 {
            let tw_height = height * tw as f64 / d.counts[i].max(1) as f64;
            svg.rect((bx0, y0 - tw_height), (bx1 - bx0, tw_height), "twbar", &tip);
        }
        if d.counts[i] > 0 {
            svg.text(
                ((bx0 + bx1) / 2.0, y0 - height - 3.0),
                "middle",
                "ax",
                &count(d.counts[i]),
            );
        }
        svg.line((x.at(low as f64), y0), (x.at(low as f64), y0 + 4.0), "tick");
        svg.text(
            (x.at(low as f64), h - 6.0),
            "middle",
            "ax",
            &duration_label(low),
        );
    }
    let high = bucket_bounds(last).1;
    svg.text(
        (x.at(high as f64), h - 6.0),
        "end",
        "ax",
        &duration_label(high),
    );
    svg.line((x0, y0), (x1, y0), "axis");
    // The percentiles: equal ones share a mark, and labels are staggered so that close
    // ones stay readable.
    for (i, (names, v)) in percentile_marks(s).into_iter().enumerate() {
        let at = x.at(v.max(1) as f64);
        svg.line((at, y1 - 2.0), (at, y0), "pct");
        svg.text(
            (at + 2.0, y1 - 4.0 + (i % 3) as f64 * 9.0),
            "start",
            "pctl",
            &format!("{names} {}", human_ns(v)),
        );
    }
    let tw_total: u64 = d.time_wait.map_or(0, |tw| tw.iter().sum());
    let tw_share = if tw_total > 0 && s.count > 0 {
        format!(
            r#"; <span class="twtext">{} ({:.0}%) held through TIME_WAIT</span>"#,
            count(tw_total),
            tw_total as f64 / s.count as f64 * 100.0
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        r#"<figure class="dist"><figcaption><b>{}</b>: {} released, p50 {}, p99 {}, max {}{tw_share}</figcaption>{}</figure>"#,
        esc(&d.label),
        count(s.count),
        human_ns(s.p50),
        human_ns(s.p99),
        human_ns(s.max),
        svg.finish()
    );
}

/// The percentiles to mark, those of equal value together (`p50 p90 5.0ms`).
pub fn percentile_marks(s: &LifetimeSummary) -> Vec<(String, u64)> {
    let mut marks: Vec<(String, u64)> = Vec::new();
    for (name, v) in [
        ("p50", s.p50),
        ("p90", s.p90),
        ("p99", s.p99),
        ("p99.9", s.p999),
        ("max", s.max),
    ] {
        match marks.last_mut() {
            Some((names, last)) if *last == v => {
                names.push(' ');
                names.push_str(name);
            }
            _ => marks.push((name.to_string(), v)),
        }
    }
    marks
}

fn table(out: &mut String, class: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(
        out,
        r#"<div class="tw-wrap"><table class="{class}"><thead>"#
    );
    row(out, "th", head);
    out.push_str("</thead><tbody>");
    for cells in rows {
        row(out, "td", cells);
    }
    out.push_str("</tbody></table></div>");
}

/// One table row of `tag` cells; all but the first are numbers, aligned right.
fn row(out: &mut String, tag: &str, cells: &[impl AsRef<str>]) {
    out.push_str("<tr>");
    for (i, cell) in cells.iter().enumerate() {
        let class = if i > 0 { r#" class="n""# } else { "" };
        let _ = write!(out, "<{tag}{class}>{}</{tag}>", esc(cell.as_ref()));
    }
    out.push_str("</tr>");
}

fn headline(out: &mut String, page: &Page) {
    let m = &page.meta;
    let t = &page.totals;
    let span = match m.started_epoch_ns {
        Some(start) => format!(
            r#"<time datetime="{0}">{0}</time> to <time datetime="{1}">{1}</time> ({2})"#,
            utc(start),
            utc(start.saturating_add(page.elapsed_ns)),
            human_ns(page.elapsed_ns)
        ),
        None => human_ns(page.elapsed_ns),
    };
    let _ = write!(
        out,
        r#"<header><h1>Ephemeral ports on <span id="host">{}</span></h1><p class="meta">kernel <b>{}</b> · backend <b>{}</b> · {span} · {} · port-trace {}</p>"#,
        esc(if m.host.is_empty() {
            "an unnamed host"
        } else {
            &m.host
        }),
        esc(if m.kernel.is_empty() {
            "unknown"
        } else {
            &m.kernel
        }),
        m.backend.map_or("unknown", |b| b.as_str()),
        esc(&m.source.to_string()),
        esc(&m.version),
    );
    let tw = if page.held_time_wait > 0 {
        format!(" ({} TIME_WAIT)", count(page.held_time_wait as u64))
    } else {
        String::new()
    };
    let cells = [
        ("allocated", count(t.alloc), ""),
        ("released", count(t.release), ""),
        ("held now", format!("{}{tw}", count(page.held as u64)), ""),
        (
            "failed",
            count(t.fail),
            if t.fail > 0 { " bad" } else { "" },
        ),
        ("lost", count(t.lost), if t.lost > 0 { " bad" } else { "" }),
    ];
    out.push_str(r#"<div class="totals" id="totals">"#);
    for (name, value, class) in cells {
        let _ = write!(
            out,
            r#"<div class="total{class}" data-total="{}"><span class="name">{name}</span><span class="value">{}</span></div>"#,
            name.split(' ').next().unwrap_or(name),
            esc(&value)
        );
    }
    out.push_str("</div></header>");
}

fn findings(out: &mut String, page: &Page) {
    if page.findings.is_empty() {
        return;
    }
    out.push_str(r#"<section id="findings"><h2>Findings: why the range fills</h2>"#);
    for f in &page.findings {
        let severity = match f.severity {
            Severity::Critical => "critical",
            Severity::Warn => "warn",
            Severity::Info => "info",
        };
        let who = if f.who.is_empty() {
            String::new()
        } else {
            format!(r#"<p><span class="k">who</span> {}</p>"#, esc(&f.who))
        };
        let _ = write!(
            out,
            r#"<article class="finding {severity}"><h3><span class="badge {severity}">{severity}</span> {} <small>{}</small></h3>{who}<p><span class="k">evidence</span> {}</p><p><span class="k">remedy</span> {}</p></article>"#,
            esc(&f.kind),
            esc(&f.place),
            esc(&f.evidence),
            esc(&f.remedy)
        );
    }
    if page.more_findings > 0 {
        let _ = write!(
            out,
            "<p>and {} more (the JSON report has them all)</p>",
            count(page.more_findings as u64)
        );
    }
    out.push_str("</section>");
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let axis = TimeAxis {
        started_epoch_ns: page.meta.started_epoch_ns,
        span_ns: page.elapsed_ns,
    };
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="generator" content="port-trace {}"><title>port-trace: {}, {}</title><style>{CSS}</style></head><body><main>"#,
        esc(&page.meta.version),
        esc(&page.meta.host),
        human_ns(page.elapsed_ns)
    );
    headline(&mut out, page);
    findings(&mut out, page);

    out.push_str(r#"<section id="occupancy"><h2>Occupancy of the fullest ranges</h2>"#);
    if page.scopes.is_empty() {
        out.push_str("<p>No port was held in any traced range.</p>");
    }
    for scope in &page.scopes {
        scope_chart(&mut out, page, scope, axis);
    }
    out.push_str("</section>");

    out.push_str(r#"<section id="rates"><h2>Allocations and releases over time</h2>"#);
    rates_chart(
        &mut out,
        "allocations per second, by protocol and kind",
        &page.alloc_rates,
        Some(&page.fail_rates),
        axis,
    );
    rates_chart(
        &mut out,
        "releases per second, by protocol and kind",
        &page.release_rates,
        None,
        axis,
    );
    held_chart(&mut out, page, axis);
    out.push_str("</section>");

    out.push_str(r#"<section id="lifetimes"><h2>How long ports are held</h2>"#);
    let mut distributions = page.lifetimes.iter();
    if let Some(all) = distributions.next() {
        if all.summary.count == 0 {
            out.push_str("<p>No port was released yet.</p>");
        }
        distribution_chart(&mut out, all, WIDE);
    }
    out.push_str(r#"<div class="grid">"#);
    for d in distributions {
        distribution_chart(&mut out, d, SMALL);
    }
    out.push_str("</div></section>");

    out.push_str(r#"<section id="held"><h2>Held now</h2>"#);
    let other = page.held.saturating_sub(page.held_time_wait);
    let held = page.held.max(1) as f64;
    let _ = write!(
        out,
        r#"<div class="stack" role="img" aria-label="held by state"><span class="other" style="width:{}%"></span><span class="twfill" style="width:{}%"></span></div><p class="legend"><span class="sw s0"></span>open sockets {} · <span class="sw twsw"></span>TIME_WAIT {}</p>"#,
        px(other as f64 / held * 100.0),
        px(page.held_time_wait as f64 / held * 100.0),
        count(other as u64),
        count(page.held_time_wait as u64),
    );
    if !page.holders.is_empty() {
        let rows: Vec<Vec<String>> = page
            .holders
            .iter()
            .map(|h| {
                vec![
                    h.scope.clone(),
                    h.process.clone(),
                    h.workload.clone(),
                    count(u64::from(h.ports)),
                ]
            })
            .collect();
        table(
            &mut out,
            "holders",
            &["range", "process", "workload", "ports"],
            &rows,
        );
    }
    out.push_str("</section>");

    out.push_str(r#"<section id="destinations"><h2>Top destinations</h2>"#);
    if page.destinations.is_empty() {
        out.push_str("<p>No connect() to any destination.</p>");
    } else {
        let rows: Vec<Vec<String>> = page
            .destinations
            .iter()
            .map(|d| {
                vec![
                    d.destination.clone(),
                    count(d.alloc),
                    count(d.release),
                    count(d.fail),
                    human_ns(d.mean_ns),
                    human_ns(d.max_ns),
                ]
            })
            .collect();
        table(
            &mut out,
            "destinations",
            &[
                "destination",
                "allocated",
                "released",
                "failed",
                "mean",
                "max",
            ],
            &rows,
        );
    }
    out.push_str("</section>");

    out.push_str(r#"<section id="failures"><h2>Failed allocations</h2>"#);
    if page.fails_by_error.is_empty() {
        out.push_str("<p>None: every allocation found a port.</p>");
    } else {
        out.push_str(r#"<div class="grid">"#);
        let rows: Vec<Vec<String>> = page
            .fails_by_error
            .iter()
            .map(|(e, n)| vec![e.clone(), count(*n)])
            .collect();
        table(&mut out, "by-errno", &["errno", "failed"], &rows);
        let rows: Vec<Vec<String>> = page
            .fails_by_process
            .iter()
            .map(|(p, n)| vec![p.clone(), count(*n)])
            .collect();
        table(&mut out, "by-process", &["process", "failed"], &rows);
        out.push_str("</div>");
    }
    out.push_str("</section>");

    let _ = write!(
        out,
        r#"<footer>Made by port-trace {} from a {}. Warn at {:.0}%, critical at {:.0}% of a range. Chart times are UTC. Each point of a chart spans one or more intervals; occupancy and held ports are as at the end of each interval, the highest where a point spans several.</footer></main><script>{SCRIPT}</script></body></html>"#,
        esc(&page.meta.version),
        esc(&page.meta.source.to_string()),
        page.meta.thresholds.warn * 100.0,
        page.meta.thresholds.critical * 100.0,
    );
    out.push('\n');
    out
}
