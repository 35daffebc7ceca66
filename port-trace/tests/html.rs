//! `--html` and `analyze --html` in a real browser: a trace that fills a 10-port range and
//! fails, its capture replayed into a page that Debian's headless Chromium renders (no script
//! error, the sections and numbers in its DOM, a screenshot under target/html/) and tidy
//! finds valid; the live page rewritten while tracing; and a synthetic 24 h capture whose
//! page stays small and quick to render.

mod common;

use std::{
    io::Write as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, binary, on_path, repo_root, skip_unless_root};
use port_trace::sinks::html::render::count;

const RANGE: (u16, u16) = (40_000, 40_009);
const REQUIRE: &str = "PORT_TRACE_REQUIRE_CHROMIUM";

/// Debian's chromium and tidy, or None (with the reason) where they are not installed.
/// `cargo xtask test` installs both and sets PORT_TRACE_REQUIRE_CHROMIUM: then a missing one
/// fails instead of skipping.
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("tidy")) {
        (Some(chromium), Some(tidy)) => Some((chromium, tidy)),
        _ if std::env::var_os(REQUIRE).is_some() => {
            panic!("chromium/tidy not on PATH, though `cargo xtask test` installs them")
        }
        _ => {
            eprintln!(
                "skipped {test}: Debian's chromium and tidy packages are not installed here \
                 (`cargo xtask test` installs them)"
            );
            None
        }
    }
}

/// Where the test's files go: under target/, so a person can open the screenshot.
fn out_dir() -> PathBuf {
    let dir = repo_root().join("target/html");
    std::fs::create_dir_all(&dir).expect("target/html");
    dir
}

/// What headless Chromium made of a page.
struct Rendered {
    dom: String,
    console: String,
    took: Duration,
}

/// Loads `page` in headless Chromium: its DOM after scripts ran (and what the console
/// said), and a screenshot of the top of the page where asked.
fn chromium(chromium: &Path, page: &Path, screenshot: Option<&Path>) -> Rendered {
    let profile = out_dir().join(format!("profile-{}", std::process::id()));
    let url = format!("file://{}", page.display());
    let run = |extra: &[String]| -> (Output, Duration) {
        let started = Instant::now();
        let output = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .expect("chromium runs");
        (output, started.elapsed())
    };
    let (output, took) = run(&["--dump-dom".to_string()]);
    assert!(output.status.success(), "chromium: {output:?}");
    if let Some(shot) = screenshot {
        let (shot_out, _) = run(&[
            "--window-size=1000,1500".to_string(),
            format!("--screenshot={}", shot.display()),
        ]);
        assert!(shot_out.status.success(), "screenshot: {shot_out:?}");
        assert!(
            std::fs::metadata(shot).is_ok_and(|m| m.len() > 10_000),
            "a screenshot at {}",
            shot.display()
        );
    }
    let _ = std::fs::remove_dir_all(&profile);
    Rendered {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        console: String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    }
}

/// The page ran its script without an error and fetched nothing.
fn assert_rendered_cleanly(rendered: &Rendered) {
    let dom = &rendered.dom;
    assert!(
        dom.contains(r#"data-script="ran""#),
        "the script ran: {dom}"
    );
    // The attribute, not the script's own text naming it.
    assert!(
        !dom.contains(r#"data-script-error=""#),
        "a script error: {dom}"
    );
    for line in rendered.console.lines() {
        assert!(
            !line.contains("Uncaught") && !line.contains("CONSOLE"),
            "the console said: {line}"
        );
        assert!(
            !line.contains("net::ERR"),
            "the page fetched something: {line}"
        );
    }
}

/// tidy (HTML5) finds no error and no warning; empty elements (the legend's colour
/// swatches) are valid HTML and kept.
fn assert_valid(tidy: &Path, page: &Path) {
    let output = Command::new(tidy)
        .args(["-q", "-e", "--drop-empty-elements", "no"])
        .arg(page)
        .output()
        .expect("tidy runs");
    assert!(
        output.status.success(),
        "tidy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn analyze(capture: &Path, html: &Path, extra: &[&str]) -> Output {
    Command::new(binary())
        .arg("analyze")
        .arg(capture)
        .arg("--html")
        .arg(html)
        .args(extra)
        .output()
        .expect("port-trace analyze runs")
}

fn total(dom: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!(r#"data-total="{name}""#))?;
    let value = &dom[at..];
    let start = value.find(r#"<span class="value">"#)? + r#"<span class="value">"#.len();
    let end = value[start..].find("</span>")? + start;
    Some(value[start..end].to_string())
}

/// In the namespace: short connections released, one every 200 ms, then connections held
/// one every 300 ms until the range is full, and a few more that fail.
fn fill_the_range() -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 5_000)).expect("listener");
    let target = listener.local_addr().expect("addr");
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let client = TcpStream::connect(target).expect("connect");
        let server = listener.accept().expect("accept").0;
        sleep(Duration::from_millis(20));
        // The peer closes first: no TIME_WAIT here.
        drop(server);
        drop(client);
        sleep(Duration::from_millis(180));
    }
    let mut held = Vec::new();
    for _ in 0..13 {
        if let Ok(client) = TcpStream::connect(target) {
            accepted.push(listener.accept().expect("accept").0);
            held.push(client);
        }
        sleep(Duration::from_millis(300));
    }
    (held, accepted)
}

#[test]
fn a_trace_that_fills_its_range_makes_a_page_that_shows_it() {
    let test = "a_trace_that_fills_its_range_makes_a_page_that_shows_it";
    if skip_unless_root(test) {
        return;
    }
    let Some((chromium_bin, tidy)) = browser(test) else {
        return;
    };
    let dir = out_dir();
    let live_page = dir.join("live.html");
    let _ = std::fs::remove_file(&live_page);
    let netns = Netns::new();
    netns.sysctl(
        "net/ipv4/ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    let tracer = Tracer::start(&[
        "--netns",
        &netns.inode().to_string(),
        "--interval",
        "1s",
        "--html",
        live_page.to_str().expect("utf-8"),
        "-q",
    ]);
    let held = netns.run(fill_the_range);
    // The page is rewritten every interval, while tracing.
    sleep(Duration::from_millis(1_500));
    let during = std::fs::read_to_string(&live_page).expect("the live page, before exit");
    assert!(during.contains(r#"id="occupancy""#), "{during}");
    let ready = tracer.ready.clone();
    let (records, report) = tracer.stop();
    drop(held);
    assert!(
        report["totals"]["fail"].as_u64() > Some(0),
        "the range ran out: {report}"
    );

    let capture = dir.join("capture.jsonl");
    let mut file = std::fs::File::create(&capture).expect("capture file");
    for record in std::iter::once(&ready).chain(&records) {
        writeln!(file, "{record}").expect("write capture");
    }
    drop(file);
    let page = dir.join("report.html");
    // At the live trace's interval, as the README says.
    let out = analyze(&capture, &page, &["--interval", "1s"]);
    assert!(
        out.status.success(),
        "analyze: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let screenshot = dir.join("report.png");
    for (which, path, shot) in [
        ("analyze --html", &page, Some(screenshot.as_path())),
        ("--html", &live_page, None),
    ] {
        let rendered = chromium(&chromium_bin, path, shot);
        assert_rendered_cleanly(&rendered);
        assert_valid(&tidy, path);
        let dom = &rendered.dom;
        for section in [
            "totals",
            "findings",
            "occupancy",
            "rates",
            "lifetimes",
            "held",
            "destinations",
            "failures",
        ] {
            assert!(
                dom.contains(&format!(r#"id="{section}""#)),
                "{which}: {section}"
            );
        }
        // The same numbers as the live trace's report.
        for (name, field) in [
            ("allocated", "alloc"),
            ("released", "release"),
            ("failed", "fail"),
        ] {
            let expected = report["totals"][field].as_u64().expect("a count");
            assert_eq!(total(dom, name), Some(count(expected)), "{which}: {name}");
        }
        // The full range, critical, its failure marked where it happened, the lines drawn.
        let range = format!("tcp netns {}", netns.inode());
        assert!(dom.contains(&range), "{which}: the range's chart");
        assert!(
            dom.contains(r#"<span class="badge critical">critical</span>: 10 of 10 ports (100%)"#),
            "{which}: the full range"
        );
        assert!(
            dom.contains(r#"class="fail"><title>"#) && dom.contains(" failed at 10/10 ports"),
            "{which}: the failure marked"
        );
        assert!(dom.contains("critical 95%") && dom.contains("warn 80%"));
        assert!(dom.contains("<td>EADDRNOTAVAIL</td>"), "{which}: by errno");
        assert!(dom.contains("tcp connect</li>"), "{which}: rates by kind");
        assert!(
            dom.contains("127.0.0.1:5000"),
            "{which}: the top destination"
        );
        assert!(dom.contains(">all</b>: "), "{which}: the lifetimes");
        eprintln!(
            "{which}: {} B, rendered in {:?} (Chromium's start included)",
            std::fs::metadata(path).expect("page").len(),
            rendered.took
        );
    }
    eprintln!("screenshot: {}", screenshot.display());
}

/// A synthetic capture of a day: a 600-port range, an allocation every 4 s alternating
/// between two processes and destinations (one closes first: TIME_WAIT), and from 14:00 a
/// leak of one port a minute that fills the range just before midnight, then failures.
fn day_capture(path: &Path) {
    const S: u64 = 1_000_000_000;
    const DAY: u64 = 86_400;
    let start = 1_700_000_000 * S;
    let netns = 4_026_532_100u64;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("capture"));
    let mut put = |line: String| writeln!(out, "{line}").expect("write the capture");
    put(format!(
        r#"{{"type":"ready","ts_ns":{start},"pid":1,"backend":"tracepoint","programs":[],"version":"0.1.0","host":"synthetic","kernel":"6.1.0"}}"#
    ));
    put(format!(
        r#"{{"type":"range","netns":{netns},"low":40000,"high":40599,"reserved":[]}}"#
    ));
    let fields = |kind: &str, ts: u64, port: u64, cookie: u64, comm: &str, rport: u64| {
        format!(
            r#"{{"type":"{kind}","ts_ns":{ts},"proto":"tcp","family":"ipv4","port":{port},"kind":"connect","pid":{},"comm":"{comm}","netns":{netns},"laddr":"10.0.0.1","raddr":"10.0.0.2","rport":{rport},"cookie":{cookie}"#,
            comm.len()
        )
    };
    let mut cookie = 1u64;
    let mut leaked = 40_002u64;
    for second in (0..DAY).step_by(4) {
        let ts = start + second * S;
        let (comm, rport, port, hold, time_wait) = if second % 8 == 0 {
            ("worker", 443, 40_000, 40_000_000, Some(30_000_000))
        } else {
            (
                "api",
                5432,
                40_001,
                2_000_000 + second % 1_000 * 1_000,
                None,
            )
        };
        put(format!(
            "{}}}",
            fields("alloc", ts, port, cookie, comm, rport)
        ));
        let time_wait = time_wait
            .map(|tw: u64| format!(r#","time_wait_ns":{tw}"#))
            .unwrap_or_default();
        put(format!(
            r#"{},"lifetime_ns":{hold}{time_wait}}}"#,
            fields("release", ts + hold, port, cookie, comm, rport)
        ));
        cookie += 1;
        if second >= 50_400 && second % 60 == 0 && leaked < 40_599 {
            leaked += 1;
            put(format!(
                "{}}}",
                fields("alloc", ts + S, leaked, cookie, "leaky", 8080)
            ));
            cookie += 1;
        }
    }
    let end = start + DAY * S;
    for i in 0..5 {
        put(format!(
            r#"{},"errno":99,"error":"EADDRNOTAVAIL"}}"#,
            fields("fail", end - S + i, 0, 0, "leaky", 8080)
        ));
    }
    put(format!(
        r#"{{"type":"end","ts_ns":{end},"elapsed_ns":{}}}"#,
        DAY * S
    ));
}

#[test]
fn a_day_long_capture_makes_a_small_page_that_renders_quickly() {
    let test = "a_day_long_capture_makes_a_small_page_that_renders_quickly";
    let Some((chromium_bin, tidy)) = browser(test) else {
        return;
    };
    let dir = out_dir();
    let capture = dir.join("day.jsonl");
    day_capture(&capture);
    let page = dir.join("day.html");
    let started = Instant::now();
    let out = analyze(&capture, &page, &[]);
    let replayed = started.elapsed();
    assert!(
        out.status.success(),
        "analyze: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&page).expect("page").len();
    let rendered = chromium(&chromium_bin, &page, Some(&dir.join("day.png")));
    assert_rendered_cleanly(&rendered);
    assert_valid(&tidy, &page);
    let dom = &rendered.dom;
    assert!(dom.contains("synthetic"), "the host from the capture");
    assert!(dom.contains("EADDRNOTAVAIL"), "the failures at the end");
    assert!(dom.contains("process leaky") || dom.contains("leaky["));
    // The page's own measure: from navigation to its script, parsing and layout included.
    let script_ms: u64 = dom
        .split(r#"data-script-ms=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|ms| ms.parse().ok())
        .expect("the script's time");
    eprintln!(
        "24 h capture ({} B): replayed in {replayed:?}; page {size} B; parsed by its script \
         at {script_ms} ms; Chromium's whole run {:?}",
        std::fs::metadata(&capture).expect("capture").len(),
        rendered.took
    );
    assert!(size < 200_000, "the page is {size} B");
    assert!(script_ms < 2_000, "the page took {script_ms} ms to parse");
    let _ = std::fs::remove_file(&capture);
}

#[test]
fn an_html_path_that_cannot_be_written_exits_6_before_reading_the_capture() {
    let dir = out_dir();
    let missing = dir.join("no-such-dir/page.html");
    let out = Command::new(binary())
        .args(["analyze", "/nonexistent-capture", "--html"])
        .arg(&missing)
        .output()
        .expect("port-trace analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("--html"), "{stderr}");
    assert!(stderr.contains("page.html"), "{stderr}");
}
