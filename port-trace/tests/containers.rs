//! Workloads named for real, under Docker: two named containers each in a network namespace
//! of its own (one with a 10-port range that a client fills), and one on the host's network.
//! Every allocation must name its container (id, name, runtime); the warnings in the small
//! range must name the container that owns the namespace and holds the ports; the summary,
//! the report and the metrics must name them too; `explain PORT` must name the holder's
//! container; and `--container` must report one container's ports only.
//!
//! Skips, saying why, without a Docker engine; `cargo xtask test` starts one and sets
//! PORT_TRACE_REQUIRE_DOCKER, and then a missing engine fails.

mod common;

use std::{
    fs::File,
    io::Read as _,
    net::{Ipv4Addr, TcpListener},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Container, Tracer, binary, docker, http_get};
use serde_json::Value;

/// The small range of the first container: 9 held connections fill 90% of it.
const SMALL_RANGE: &str = "net.ipv4.ip_local_port_range=40000 40009";

/// Nine clients that hold their connections to a local httpd (which waits a minute for a
/// request that never comes).
const HOLDER: &str = "httpd -f -p 8080 & sleep 1; \
                      for i in 1 2 3 4 5 6 7 8 9; do sleep 120 | nc 127.0.0.1 8080 & done; \
                      sleep 120";

/// Three short requests to a local httpd: allocations and releases.
const CHURNER: &str = "httpd -f -p 8080 & sleep 1; \
                       for i in 1 2 3; do wget -q -O /dev/null http://127.0.0.1:8080/ ; done; \
                       sleep 120";

/// The local ports of `container`'s clients connected to its httpd (busybox netstat).
fn client_ports(container: &Container) -> Vec<u16> {
    let table = container.exec("netstat -tn").unwrap_or_default();
    table
        .lines()
        .filter(|l| l.contains("ESTABLISHED"))
        .filter_map(|l| {
            let mut fields = l.split_whitespace().skip(3);
            let local = fields.next()?;
            let remote = fields.next()?;
            remote.ends_with(":8080").then_some(())?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

fn alloc_in(events: &[Value], netns: u64) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "alloc" && e["netns"].as_u64() == Some(netns))
        .collect()
}

fn assert_names(record: &Value, container: &Container) {
    assert_eq!(record["container"]["id"], container.id.as_str(), "{record}");
    assert_eq!(
        record["container"]["name"],
        container.name.as_str(),
        "{record}"
    );
    assert_eq!(record["container"]["runtime"], "docker", "{record}");
    let cgroup = record["cgroup"].as_str().unwrap_or_default();
    assert!(cgroup.contains(&container.id), "{record}");
}

/// Waits until `done` holds, or panics after `limit` saying `what`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn containers_are_named_everywhere() {
    let Some(docker) = docker("containers_are_named_everywhere") else {
        return;
    };
    let image = docker.busybox_image();
    let stderr_path =
        std::env::temp_dir().join(format!("port-trace-containers-{}.log", std::process::id()));
    let stderr = File::create(&stderr_path).expect("a log file");
    let tracer = Tracer::start_with_stderr(&["--prometheus", "127.0.0.1:0"], Stdio::from(stderr));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a listener");
    let port = listener.local_addr().expect("its address").port();

    let web = docker.run(
        "pt-web",
        &["--network", "none", "--sysctl", SMALL_RANGE],
        image,
        &["sh", "-c", HOLDER],
    );
    let api = docker.run_isolated("pt-api", CHURNER);
    let hostnet = docker.run(
        "pt-hostnet",
        &["--network", "host"],
        image,
        &["sh", "-c", &format!("sleep 120 | nc 127.0.0.1 {port}")],
    );
    let (_accepted, _) = listener
        .accept()
        .expect("the host-network container connects");
    let web_netns = web.netns();
    let api_netns = api.netns();
    // All nine held (ss in the container's namespace), and the three requests done.
    wait_for(Duration::from_secs(60), "pt-web's nine connections", || {
        client_ports(&web).len() >= 9
    });
    sleep(Duration::from_secs(2));

    // The metrics, while the ports are held.
    let addr = tracer.ready["prometheus"]
        .as_str()
        .expect("the metrics address")
        .to_string();
    let (status, metrics) = http_get(&addr, "/metrics").expect("a scrape");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("port_trace_allocations_total{")
                && l.contains("container=\"pt-web\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("port_trace_scope_ports_used{")
                && l.contains("container=\"pt-web\"")
                && l.contains(&format!("netns=\"{web_netns}\""))),
        "the small range's gauge names its owner: {metrics}"
    );

    // explain names the holder's container.
    let held = client_ports(&web)[0];
    let explained = Command::new(binary())
        .args(["explain", &held.to_string(), "--proto", "tcp"])
        .output()
        .expect("explain runs");
    let explained = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.lines().any(|l| l.contains("held by:")
            && l.contains("nc[")
            && l.contains("in container pt-web (")),
        "explain {held} names the container: {explained}"
    );

    let (events, report) = {
        let mut tracer = tracer;
        tracer.stop_with(libc::SIGINT)
    };

    // Events: each container's allocations name it.
    let web_allocs = alloc_in(&events, web_netns);
    assert!(web_allocs.len() >= 9, "pt-web's connects: {web_allocs:?}");
    for record in &web_allocs {
        assert_names(record, &web);
    }
    let api_allocs = alloc_in(&events, api_netns);
    assert!(api_allocs.len() >= 3, "pt-api's connects: {api_allocs:?}");
    for record in &api_allocs {
        assert_names(record, &api);
    }
    let api_releases: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "release" && e["netns"].as_u64() == Some(api_netns))
        .collect();
    assert!(!api_releases.is_empty(), "pt-api's releases");
    for record in &api_releases {
        assert_names(record, &api);
    }
    let host_alloc = events
        .iter()
        .find(|e| e["type"] == "alloc" && e["rport"].as_u64() == Some(u64::from(port)))
        .expect("the host-network container's connect");
    assert_names(host_alloc, &hostnet);

    // Warnings in the small range name its owner and the container holding its ports.
    let warning = events
        .iter()
        .find(|e| e["type"] == "warning" && e["netns"].as_u64() == Some(web_netns))
        .expect("a warning in pt-web's 10-port range");
    assert_eq!(warning["owner"]["container"]["name"], "pt-web", "{warning}");
    assert_names(&warning["top"][0], &web);

    // The report groups per workload and names the range's owner.
    let workloads = report["workloads"]
        .as_array()
        .expect("workloads in the report");
    for container in [&web, &api, &hostnet] {
        let entry = workloads
            .iter()
            .find(|w| w["container"]["name"] == container.name.as_str())
            .unwrap_or_else(|| panic!("{} in the report: {workloads:?}", container.name));
        assert!(entry["alloc"].as_u64() >= Some(1), "{entry}");
    }
    let scope = report["scopes"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["netns"].as_u64() == Some(web_netns)))
        .expect("pt-web's range in the report");
    assert_eq!(scope["owner"]["container"]["name"], "pt-web", "{scope}");

    // The summary (on stderr with JSON events) lists the containers.
    let mut summary = String::new();
    File::open(&stderr_path)
        .and_then(|mut f| f.read_to_string(&mut summary))
        .expect("the log");
    let _ = std::fs::remove_file(&stderr_path);
    assert!(summary.contains("top workloads"), "{summary}");
    for container in [&web, &api, &hostnet] {
        assert!(
            summary.contains(&format!("container {} (", container.name)),
            "{} in the summary: {summary}",
            container.name
        );
    }
    assert!(
        summary.contains(&format!("netns {web_netns} (container pt-web (")),
        "the fullest range named by its owner: {summary}"
    );
}

#[test]
fn the_container_filter_reports_one_containers_ports() {
    let Some(docker) = docker("the_container_filter_reports_one_containers_ports") else {
        return;
    };
    let tracer = Tracer::start(&["--container", "pt-filter-a"]);
    let a = docker.run_isolated("pt-filter-a", CHURNER);
    let b = docker.run_isolated("pt-filter-b", CHURNER);
    let (a_netns, b_netns) = (a.netns(), b.netns());
    // Both containers' requests done: three each.
    sleep(Duration::from_secs(4));
    let (events, report) = {
        let mut tracer = tracer;
        tracer.stop_with(libc::SIGINT)
    };
    assert!(
        alloc_in(&events, a_netns).len() >= 3,
        "pt-filter-a reported"
    );
    assert!(
        alloc_in(&events, b_netns).is_empty(),
        "pt-filter-b left out"
    );
    for record in events.iter().filter(|e| e["type"] == "alloc") {
        assert_names(record, &a);
    }
    assert_eq!(
        report["totals"]["alloc"].as_u64(),
        Some(alloc_in(&events, a_netns).len() as u64)
    );
}
