//! The page from a pipeline driven with events, as the live trace and replay drive it: what
//! it shows, that text from the trace is escaped, that it stays bounded.

use port_trace_common::{EVENT_ALLOC, EVENT_FAIL, EVENT_RELEASE};

use super::*;
use crate::{
    event::{decode_raw, tests::raw_connect},
    exhaustion::{Exhaustion, level::Thresholds, range::PortRange},
    pipeline::{self, Pipeline},
    probes::{Backend, KernelCounters},
    track::snapshot::Snapshot,
};

const S: u64 = 1_000_000_000;

fn meta() -> Meta {
    Meta {
        host: "db-1 <&>".into(),
        kernel: "6.1.0".into(),
        backend: Some(Backend::Tracepoint),
        version: "0.1.0".into(),
        started_epoch_ns: Some(1_700_000_000 * S),
        thresholds: Thresholds {
            warn: 0.8,
            critical: 0.95,
        },
        source: Source::Live,
    }
}

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "port-trace-html-unit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a temp dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pipeline() -> Pipeline {
    let exhaustion = Exhaustion::with_range_reader(
        Thresholds {
            warn: 0.8,
            critical: 0.95,
        },
        |_| PortRange::parse("40000 40009", ""),
    );
    Pipeline::new(
        pipeline::Config {
            filter: Default::default(),
            keep_intervals: false,
            started_ns: 0,
            host_netns: None,
            own_pid: None,
        },
        Snapshot::default(),
        exhaustion,
    )
}

/// Short connections, in a namespace of their own.
const OTHER_NETNS: u32 = 4026532000;

fn event(kind: u8, cookie: u64, port: u16, ts_ns: u64, comm: &[u8]) -> crate::event::Event {
    let mut raw = raw_connect();
    raw.event = kind;
    raw.cookie = cookie;
    raw.lport = port;
    raw.ts_ns = ts_ns;
    raw.comm = [0; 16];
    raw.comm[..comm.len()].copy_from_slice(comm);
    if kind == EVENT_FAIL {
        raw.errno = 99;
    }
    decode_raw(&raw).expect("decodes")
}

/// A range of 10 filling over 12 intervals of 10 s, a connection released each interval,
/// and a failure once it is full.
fn filled(html: &mut HtmlFile) -> Pipeline {
    let mut p = pipeline();
    let evil = b"<script>x</scr";
    for i in 0..12u64 {
        let t = i * 10 * S + S;
        if i < 10 {
            let comm: &[u8] = if i == 3 { evil } else { b"client" };
            p.apply(&event(EVENT_ALLOC, i + 1, 40000 + i as u16, t, comm), html)
                .expect("sink");
        }
        let mut short = event(EVENT_ALLOC, 100 + i, 40000, t, b"short");
        short.netns = OTHER_NETNS;
        p.apply(&short, html).expect("sink");
        short.event = crate::event::EventType::Release;
        short.ts_ns = t + 5_000_000;
        p.apply(&short, html).expect("sink");
        if i == 11 {
            p.apply(&event(EVENT_FAIL, 999, 0, t + S, b"client"), html)
                .expect("sink");
        }
        p.tick(&[], KernelCounters::default(), (i + 1) * 10 * S, html)
            .expect("tick");
    }
    p
}

#[test]
fn the_page_shows_the_filling_range_its_failure_and_the_numbers() {
    let dir = Dir::new("page");
    let path = dir.0.join("page.html");
    let output = OutputFile::prepare(&path).expect("prepared");
    let mut html = HtmlFile::new(output, meta(), true);
    let mut p = filled(&mut html);
    // Rewritten at each interval already.
    let live = std::fs::read_to_string(&path).expect("written at the tick");
    assert!(live.contains("id=\"occupancy\""), "{live}");
    p.finish(KernelCounters::default(), 125 * S, &mut html)
        .expect("finish");
    let page = std::fs::read_to_string(&path).expect("written");

    for section in [
        "id=\"totals\"",
        "id=\"findings\"",
        "id=\"occupancy\"",
        "id=\"rates\"",
        "id=\"lifetimes\"",
        "id=\"held\"",
        "id=\"destinations\"",
        "id=\"failures\"",
    ] {
        assert!(page.contains(section), "{section} missing");
    }
    // 10 held by client, 12 by short, released.
    assert!(page.contains(
        r#"data-total="allocated"><span class="name">allocated</span><span class="value">22</span>"#
    ));
    assert!(page.contains(
        r#"data-total="failed"><span class="name">failed</span><span class="value">1</span>"#
    ));
    assert!(page.contains("<td>EADDRNOTAVAIL</td><td class=\"n\">1</td>"));
    // The full range, critical, with its failure marked where it happened.
    assert!(page.contains("10 of 10 ports (100%)"), "{page}");
    assert!(page.contains(r#"<span class="badge critical">critical</span>"#));
    assert!(page.contains(r#"class="fail"><title>1 failed at 10/10 ports"#));
    assert!(page.contains("warn 80%") && page.contains("critical 95%"));
    // The rates per protocol and kind, the lifetimes with their percentiles.
    assert!(page.contains("<li><span class=\"sw s0\"></span>tcp connect</li>"));
    assert!(page.contains("p50 p90 p99 p99.9 max 5.0ms"), "{page}");
    assert!(page.contains("process short"));
    // Text from the trace is escaped, wherever it shows.
    assert!(!page.contains("<script>x"), "a comm is escaped");
    assert!(page.contains("&lt;script&gt;x&lt;/scr"));
    assert!(page.contains("db-1 &lt;&amp;&gt;"));
    // Self-contained: nothing fetched.
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!page.contains(external), "{external} in the page");
    }
    assert_eq!(page.matches("<script>").count(), 1, "one inline script");
}

#[test]
fn an_interval_page_that_cannot_be_written_does_not_end_the_trace_but_the_last_one_does() {
    let dir = Dir::new("gone");
    let path = dir.0.join("page.html");
    let mut html = HtmlFile::new(OutputFile::prepare(&path).expect("prepared"), meta(), true);
    // The directory is removed while tracing: no new file can be made in it.
    std::fs::remove_dir_all(&dir.0).expect("removed");
    let mut p = filled(&mut html);
    let last = p.finish(KernelCounters::default(), 125 * S, &mut html);
    assert!(last.is_err(), "the last page's failure is the trace's");
}

#[test]
fn an_empty_trace_still_makes_a_page() {
    let dir = Dir::new("empty");
    let path = dir.0.join("page.html");
    let mut html = HtmlFile::new(OutputFile::prepare(&path).expect("prepared"), meta(), false);
    let mut p = pipeline();
    p.finish(KernelCounters::default(), 0, &mut html)
        .expect("finish");
    let page = std::fs::read_to_string(&path).expect("written");
    assert!(page.contains("No port was held in any traced range."));
    assert!(page.contains("None: every allocation found a port."));
    assert!(page.ends_with("</html>\n"));
}

#[test]
fn a_week_makes_a_page_the_size_of_an_hour() {
    let size = |intervals: u64| {
        let dir = Dir::new(&format!("size-{intervals}"));
        let path = dir.0.join("page.html");
        let mut html = HtmlFile::new(OutputFile::prepare(&path).expect("prepared"), meta(), false);
        let mut p = pipeline();
        for i in 0..intervals {
            let t = i * 10 * S + S;
            p.apply(&event(EVENT_ALLOC, i + 1, 40001, t, b"client"), &mut html)
                .expect("sink");
            p.apply(
                &event(EVENT_RELEASE, i + 1, 40001, t + 1_000, b"client"),
                &mut html,
            )
            .expect("sink");
            p.tick(&[], KernelCounters::default(), (i + 1) * 10 * S, &mut html)
                .expect("tick");
        }
        p.finish(KernelCounters::default(), intervals * 10 * S, &mut html)
            .expect("finish");
        std::fs::metadata(&path).expect("written").len()
    };
    let hour = size(360);
    let week = size(60_480);
    assert!(week < hour * 11 / 10, "hour {hour} B, week {week} B");
    assert!(week < 200_000, "week {week} B");
}

#[test]
fn axis_labels_have_the_decimals_their_step_needs() {
    use super::render::axis_number;
    assert_eq!(axis_number(0.0, 0.05), "0");
    assert_eq!(axis_number(0.15, 0.05), "0.15");
    assert_eq!(axis_number(0.2, 0.1), "0.2");
    assert_eq!(axis_number(20_000.0, 10_000.0), "20,000");
}

#[test]
fn equal_percentiles_share_a_mark() {
    use super::render::percentile_marks;
    let s = crate::stats::LifetimeSummary {
        count: 3,
        min: 1,
        mean: 2,
        p50: 5,
        p90: 5,
        p99: 9,
        p999: 9,
        max: 9,
    };
    assert_eq!(
        percentile_marks(&s),
        [("p50 p90".to_string(), 5), ("p99 p99.9 max".to_string(), 9)]
    );
}
