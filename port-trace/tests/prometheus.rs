//! `--prometheus` against the real thing: Debian's Prometheus scrapes port-trace, PromQL's
//! `histogram_quantile` over the lifetime histogram gives the hold the test made, promtool
//! lints the exposition, and every expression in deploy/ (alerts, dashboard) evaluates.

mod common;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, http_get, on_path, repo_root, skip_unless_root, url_encode};
use serde_json::Value;

/// Debian's prometheus and promtool, or None (with the reason printed) where they are not
/// installed. `cargo xtask test` installs them and sets PORT_TRACE_REQUIRE_PROMETHEUS, so in
/// CI a missing Prometheus fails instead of skipping; the VM matrix carries no Prometheus.
fn prometheus() -> Option<(PathBuf, PathBuf)> {
    match (on_path("prometheus"), on_path("promtool")) {
        (Some(server), Some(tool)) => Some((server, tool)),
        _ if std::env::var_os("PORT_TRACE_REQUIRE_PROMETHEUS").is_some() => {
            panic!("prometheus/promtool not on PATH, though `cargo xtask test` installs them")
        }
        _ => {
            eprintln!(
                "skipped: Debian's prometheus package is not installed here \
                 (`cargo xtask test` installs it; the VM images do not carry it)"
            );
            None
        }
    }
}

/// A Prometheus server on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Server {
    fn start(binary: &Path, dir: &Path) -> Server {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let server = Server {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        server.wait_for("Prometheus is ready", || {
            matches!(http_get(&server.addr, "/-/ready"), Ok((200, _)))
        });
        server
    }

    /// Polls `done` until it holds; panics with Prometheus's log after a minute.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                panic!("timed out waiting until {what}; prometheus log:\n{log}");
            }
            sleep(Duration::from_millis(250));
        }
    }

    /// An instant query: the API's `data.result`, or the error it gave.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_get(&self.addr, &path).map_err(|e| e.to_string())?;
        let reply: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || reply["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every PromQL expression in deploy/: the alert rules' and the dashboard's, with Grafana's
/// variables given values.
fn deploy_expressions() -> Vec<(String, String)> {
    let root = repo_root().join("deploy");
    let mut exprs = Vec::new();
    let alerts =
        std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("deploy alerts");
    for line in alerts.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            exprs.push(("alert".to_string(), expr.trim().to_string()));
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/port-trace.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("an expr")
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            exprs.push((format!("panel {}", panel["title"]), expr));
        }
    }
    assert!(
        exprs.len() >= 10,
        "deploy/ has its alerts and panels: {exprs:?}"
    );
    exprs
}

/// The name of the thread whose connections the test counts (comm is per thread).
const HOLDER: &str = "pt-holder";

#[test]
fn real_prometheus_scrapes_and_queries_lifetimes() {
    if skip_unless_root("real_prometheus_scrapes_and_queries_lifetimes") {
        return;
    }
    let Some((server_binary, promtool)) = prometheus() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("port-trace-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    // Only the holds below, made by a thread of that name: the scrapes and this test's
    // queries allocate ports too.
    let tracer = Tracer::start(&["--prometheus", "127.0.0.1:0", "--comm", HOLDER]);
    let exporter = tracer.ready["prometheus"]
        .as_str()
        .expect("ready names the metrics address")
        .to_string();

    // 20 connections, each held ~15 ms and reset: the 10-25 ms bucket.
    std::thread::Builder::new()
        .name(HOLDER.to_string())
        .spawn(|| {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
            let target = listener.local_addr().expect("addr");
            for _ in 0..20 {
                let client = TcpStream::connect(target).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                sleep(Duration::from_millis(15));
                socket2::SockRef::from(&client)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER");
                drop((client, server));
            }
        })
        .expect("a thread")
        .join()
        .expect("the holds were made");

    // The exposition as Prometheus will read it, linted by promtool.
    let (status, metrics) = http_get(&exporter, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{metrics}");
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write as _;
        let mut stdin = lint.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).expect("to promtool");
    }
    let lint = lint.wait_with_output().expect("promtool ends");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A Prometheus that scrapes port-trace every second and evaluates deploy/'s alerts.
    std::fs::copy(
        repo_root().join("deploy/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .expect("alerts copied");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: port-trace\n    static_configs:\n      - targets: ['{exporter}']\n"
        ),
    )
    .expect("config written");
    let check = Command::new(&promtool)
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .expect("promtool runs");
    assert!(check.status.success(), "{check:?}");
    let server = Server::start(&server_binary, &dir);

    // Enough scrapes for rate() over a minute to have two points.
    server.wait_for("three scrapes are stored", || {
        server
            .query("count_over_time(port_trace_ports_held[1m])")
            .is_ok_and(|r| r.first().is_some_and(|s| sample_value(s) >= 3.0))
    });
    let p50 = server
        .query(&format!(
            "histogram_quantile(0.5, sum by (le) (port_trace_port_lifetime_seconds_bucket{{process=\"{HOLDER}\"}}))"
        ))
        .expect("the quantile query");
    assert_eq!(p50.len(), 1, "{p50:?}");
    let seconds = sample_value(&p50[0]);
    assert!(
        (0.010..=0.025).contains(&seconds),
        "p50 of 20 holds of ~15 ms is in the 10-25 ms bucket: {seconds}"
    );
    let allocations = server
        .query(&format!(
            "sum(port_trace_allocations_total{{kind=\"connect\",process=\"{HOLDER}\"}})"
        ))
        .expect("the counter query");
    assert_eq!(
        allocations.first().map(sample_value),
        Some(20.0),
        "{allocations:?}"
    );

    // Every expression of the alerts and the dashboard is valid PromQL over our metrics;
    // those over metrics this run produced return series.
    for (source, expr) in deploy_expressions() {
        let result = server
            .query(&expr)
            .unwrap_or_else(|err| panic!("{source}: `{expr}` failed: {err}"));
        // No failure and no finding in this run: those series exist only when there are.
        let may_be_empty = source == "alert"
            || expr.contains("failures_total")
            || expr.contains("port_trace_findings");
        assert!(
            may_be_empty || !result.is_empty(),
            "{source}: `{expr}` returned nothing"
        );
    }
    // And Prometheus evaluates the alert rules without error: every one in deploy/.
    let alert_rules = deploy_expressions()
        .iter()
        .filter(|(source, _)| source == "alert")
        .count();
    server.wait_for("every alert rule has been evaluated", || {
        http_get(&server.addr, "/api/v1/rules")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|rules| {
                let rules: Vec<&Value> = rules["data"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                    .collect();
                rules.len() == alert_rules && rules.iter().all(|r| r["health"] == "ok")
            })
    });

    drop(server);
    let (_, report) = tracer.stop();
    // The 20 connects, and the listener's bind(0).
    assert_eq!(
        report["lifetime_ns"]["by_kind"]["connect"]["count"], 20,
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze (systemd) is not installed here");
        return;
    };
    let unit = std::fs::read_to_string(repo_root().join("deploy/port-trace.service"))
        .expect("deploy/port-trace.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/port-trace "));
    // systemd's default soft limit (1024) is too close to what a busy host needs.
    let nofile: Option<u64> = unit
        .lines()
        .find_map(|line| line.strip_prefix("LimitNOFILE="))
        .and_then(|value| value.trim().parse().ok());
    assert!(
        nofile.is_some_and(|n| n >= 16_384),
        "the unit sets LimitNOFILE to room for the daemon's fds: {nofile:?}"
    );
    // As `cargo xtask install` writes it, with ExecStart at a binary that exists.
    let dir = std::env::temp_dir().join(format!("port-trace-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("port-trace.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/port-trace", common::binary()),
    )
    .expect("unit written");
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !said.contains("port-trace.service"),
        "systemd-analyze verify: {said}"
    );
}
