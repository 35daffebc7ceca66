//! `cargo xtask bench --soak MINUTES`: port-trace (`--prometheus`) under minutes of mixed
//! churn and network-namespace churn, watched for growth and drift.
//!
//! Every cycle (5 s): in one long-lived namespace, TCP connects closed normally (TIME_WAIT)
//! and with RST, UDP connect+send, listeners on bind(0); and two short-lived namespaces
//! made (`ip netns add`), churned (TCP with TIME_WAIT, UDP) and deleted. Sampled each cycle: the
//! daemon's RSS and open fds, its `held` gauge, the long-lived namespace's ports in use as
//! scraped (`port_trace_scope_ports_used`, TCP and UDP) against the kernel's truth (distinct
//! local ports in the ephemeral range, TIME_WAIT included, from `ss` in that namespace), and
//! ports still counted in the short-lived namespaces deleted so far (the kernel's count there
//! is 0: deleting a namespace drops its TIME_WAIT sockets). The host's own ports are not
//! compared: other work on the host moves them between a scrape and `ss`.
//!
//! Fails when, after the warm-up (TIME_WAIT's 60 s, so the namespace's TIME_WAIT population
//! is steady), RSS or fds keep growing past a tolerance, or at the end (once the counts
//! match, or at the latest when TIME_WAIT has drained after the churn) the scraped use of
//! the long-lived namespace differs from the kernel's, or a deleted namespace still has
//! ports counted.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bench, run, setup};

/// Time for the soak namespace's TIME_WAIT population to become steady (60 s in Linux) and
/// the daemon's tables to reach their working size.
const WARM_UP: Duration = Duration::from_secs(70);
const CYCLE: Duration = Duration::from_secs(5);
/// After the churn: TIME_WAIT (60 s), the daemon's TIME_WAIT poll, and slack.
const DRAIN: Duration = Duration::from_secs(75);
/// How long each churn runs per cycle, in ms: enough to keep thousands of ports in TIME_WAIT
/// without exhausting the namespace's range.
const CHURN_MILLIS: &str = "150";
/// Growth allowed after the warm-up, between the first and the last third of the samples.
const RSS_TOLERANCE_KIB: u64 = 4 * 1024;
const FD_TOLERANCE: usize = 4;

/// One row of the table.
#[derive(Debug, Clone, Default)]
struct Sample {
    seconds: f64,
    rss_kib: u64,
    fds: usize,
    held: Option<u64>,
    /// Scraped ports in use in the soak namespace, (tcp, udp).
    scraped: (u64, u64),
    /// The kernel's, (tcp, udp).
    truth: (u64, u64),
    /// Ports still counted in the short-lived namespaces deleted so far.
    in_dead_namespaces: u64,
    namespaces_made: u64,
}

pub fn soak(minutes: f64) -> Result<()> {
    if !setup::is_root() {
        bail!("the soak loads eBPF programs and makes namespaces: run it as root");
    }
    setup::ensure_build_toolchain()?;
    bench::build_release()?;
    bench::ensure_tracefs()?;
    let netns = Netns::new(&format!("pt-soak-{}", std::process::id()))?;
    let result = soak_in(&netns, Duration::from_secs_f64(minutes.max(0.1) * 60.0));
    drop(netns);
    result
}

fn soak_in(netns: &Netns, duration: Duration) -> Result<()> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("port-trace-soak-{}.log", std::process::id()));
    let mut tracer = Command::new("target/release/port-trace")
        .args(["--quiet", "--interval", "1h", "--prometheus", &addr])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting port-trace")?;
    let pid = tracer.id();
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while scrape(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("port-trace did not serve metrics within 2 minutes");
            }
            if let Some(status) = tracer.try_wait()? {
                bail!("port-trace exited during start-up: {status}");
            }
            thread::sleep(Duration::from_millis(200));
        }
        let range = netns.port_range()?;
        println!(
            "soak: {:.1} min of churn in namespace {} ({}, range {}-{}) and 2 new namespaces \
             every {} s, under port-trace --prometheus",
            duration.as_secs_f64() / 60.0,
            netns.name,
            netns.inode,
            range.0,
            range.1,
            CYCLE.as_secs()
        );
        println!(
            "{:>6} {:>8} {:>5} {:>7} {:>15} {:>13} {:>9} {:>6}",
            "t s", "RSS MiB", "fds", "held", "tcp used/truth", "udp used/truth", "deleted", "netns"
        );
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut made = 0u64;
        let mut deleted = BTreeSet::new();
        while started.elapsed() < duration {
            let cycle = Instant::now();
            let mut churns = Vec::new();
            let churn = |netns: &Netns, kind: &str| {
                netns.exec(&["target/release/churn", kind, "--millis", CHURN_MILLIS])
            };
            for kind in ["tcp-close", "tcp-rst", "udp"] {
                churns.push(churn(netns, kind)?);
            }
            let mut short_lived = Vec::new();
            for kind in ["tcp-close", "udp"] {
                made += 1;
                let netns = Netns::new(&format!("{}-{made}", netns.name))?;
                churns.push(churn(&netns, kind)?);
                short_lived.push(netns);
            }
            for mut churn in churns {
                churn.wait()?;
            }
            // Deleted with their TIME_WAIT sockets: the kernel drops those at once.
            deleted.extend(short_lived.iter().map(|n| n.inode));
            drop(short_lived);
            if let Some(status) = tracer.try_wait()? {
                bail!("port-trace exited during the soak: {status}");
            }
            let sample = measure(pid, &addr, netns, range, &deleted, (started, made))?;
            print_row(&sample);
            samples.push(sample);
            thread::sleep(CYCLE.saturating_sub(cycle.elapsed()));
        }
        // The churn has stopped: what is left in TIME_WAIT expires within DRAIN, and every
        // count should reach the kernel's by then.
        println!("churn stopped; until the counts match or TIME_WAIT has drained:");
        let drained_by = Instant::now() + DRAIN;
        let end = loop {
            thread::sleep(CYCLE);
            let sample = measure(pid, &addr, netns, range, &deleted, (started, made))?;
            print_row(&sample);
            let matches = sample.scraped == sample.truth && sample.in_dead_namespaces == 0;
            if matches || Instant::now() > drained_by {
                break sample;
            }
        };
        verdict(&samples, &end)
    })();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = tracer.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let lines = logged.lines().count();
    println!("port-trace logged {lines} lines ({})", log.display());
    for line in logged.lines().take(5) {
        println!("  {line}");
    }
    result
}

/// One sample; `deleted` are the short-lived namespaces deleted so far.
fn measure(
    pid: u32,
    addr: &str,
    netns: &Netns,
    range: (u16, u16),
    deleted: &BTreeSet<u64>,
    (started, made): (Instant, u64),
) -> Result<Sample> {
    // Truth before and after the scrape: the namespace is quiet now (its churn has ended),
    // but TIME_WAIT sockets expire meanwhile, so the scrape must lie between the two.
    let before = netns.ports_in_use(range)?;
    let page = scrape(addr).context("scraping port-trace")?;
    let after = netns.ports_in_use(range)?;
    let used = |proto: &str| {
        gauge(
            &page,
            "port_trace_scope_ports_used",
            &[
                ("netns", &netns.inode.to_string()),
                ("proto", proto),
                ("scope", "namespace"),
            ],
        )
        .unwrap_or(0)
    };
    let scraped = (used("tcp"), used("udp"));
    // Where the scrape is between the two, it is the truth; else the nearer one shows
    // the drift.
    let pick = |scraped: u64, a: u64, b: u64| {
        if (a.min(b)..=a.max(b)).contains(&scraped) {
            scraped
        } else if scraped.abs_diff(a) < scraped.abs_diff(b) {
            a
        } else {
            b
        }
    };
    let truth = (
        pick(scraped.0, before.0, after.0),
        pick(scraped.1, before.1, after.1),
    );
    // An inode may be reused by a namespace made since: only those not alive count.
    let alive = live_namespaces();
    let in_dead_namespaces = namespace_use(&page)
        .into_iter()
        .filter(|(inode, _)| deleted.contains(inode) && !alive.contains(inode))
        .map(|(_, used)| used)
        .sum();
    Ok(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: bench::status_kib(pid, "VmRSS"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| dir.count())
            .unwrap_or(0),
        held: gauge(&page, "port_trace_ports_held", &[]),
        scraped,
        truth,
        in_dead_namespaces,
        namespaces_made: made,
    })
}

fn print_row(s: &Sample) {
    println!(
        "{:>6.0} {:>8.1} {:>5} {:>7} {:>15} {:>13} {:>9} {:>6}",
        s.seconds,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.held.map_or("-".to_string(), |h| h.to_string()),
        format!("{}/{}", s.scraped.0, s.truth.0),
        format!("{}/{}", s.scraped.1, s.truth.1),
        s.in_dead_namespaces,
        s.namespaces_made,
    );
}

/// What the samples say: growth after the warm-up, drift at the end.
fn verdict(samples: &[Sample], end: &Sample) -> Result<()> {
    let mut failures = Vec::new();
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.seconds >= WARM_UP.as_secs_f64())
        .collect();
    if steady.len() >= 6 {
        let third = steady.len() / 3;
        let mean = |part: &[&Sample], f: &dyn Fn(&Sample) -> f64| {
            part.iter().map(|s| f(s)).sum::<f64>() / part.len() as f64
        };
        let (first, last) = (&steady[..third], &steady[steady.len() - third..]);
        let rss = |s: &Sample| s.rss_kib as f64;
        let fds = |s: &Sample| s.fds as f64;
        let rss_growth = mean(last, &rss) - mean(first, &rss);
        let fd_growth = mean(last, &fds) - mean(first, &fds);
        println!(
            "after the {} s warm-up: RSS {rss_growth:+.0} KiB, fds {fd_growth:+.1} (first third \
             to last third of {} samples)",
            WARM_UP.as_secs(),
            steady.len()
        );
        if rss_growth > RSS_TOLERANCE_KIB as f64 {
            failures.push(format!("RSS grew {rss_growth:.0} KiB after the warm-up"));
        }
        if fd_growth > FD_TOLERANCE as f64 {
            failures.push(format!("open fds grew {fd_growth:.1} after the warm-up"));
        }
    } else {
        println!(
            "too short to judge growth: a soak of at least {} s is needed",
            WARM_UP.as_secs() + 6 * CYCLE.as_secs()
        );
    }
    if end.scraped != end.truth {
        failures.push(format!(
            "at the end, port-trace counts {:?} ports (tcp, udp) in use in the soak \
             namespace, the kernel {:?}",
            end.scraped, end.truth
        ));
    }
    if end.in_dead_namespaces > 0 {
        failures.push(format!(
            "at the end, {} ports are counted in deleted namespaces",
            end.in_dead_namespaces
        ));
    }
    if failures.is_empty() {
        println!("soak: flat, and the counts match the kernel's");
        Ok(())
    } else {
        bail!("soak failed:\n  {}", failures.join("\n  "))
    }
}

/// A named network namespace (`ip netns add`) with loopback up, deleted when dropped.
struct Netns {
    name: String,
    inode: u64,
}

impl Netns {
    fn new(name: &str) -> Result<Netns> {
        use std::os::unix::fs::MetadataExt as _;
        run(Command::new("ip").args(["netns", "add", name]))?;
        // From here on, dropping it deletes it.
        let mut netns = Netns {
            name: name.to_string(),
            inode: 0,
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        netns.inode = std::fs::metadata(format!("/run/netns/{name}"))?.ino();
        Ok(netns)
    }

    fn exec(&self, command: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("ip netns exec {} {command:?}", self.name))
    }

    fn output(&self, command: &[&str]) -> Result<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(command)
            .output()?;
        if !output.status.success() {
            bail!(
                "ip netns exec {} {command:?}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn port_range(&self) -> Result<(u16, u16)> {
        let text = self.output(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"])?;
        let mut bounds = text.split_whitespace().map(str::parse::<u16>);
        match (bounds.next(), bounds.next()) {
            (Some(Ok(low)), Some(Ok(high))) => Ok((low, high)),
            _ => bail!("ip_local_port_range: {text:?}"),
        }
    }

    /// Distinct local ports inside `range` held by TCP (every state, TIME_WAIT included) and
    /// UDP sockets in the namespace, as the kernel has them.
    fn ports_in_use(&self, range: (u16, u16)) -> Result<(u64, u64)> {
        let count = |flags: &str| -> Result<u64> {
            let listing = self.output(&["ss", "-Hn", flags])?;
            let ports: BTreeSet<u16> = listing
                .lines()
                .filter_map(|line| {
                    let local = line.split_whitespace().nth(3)?;
                    local.rsplit_once(':')?.1.parse().ok()
                })
                .filter(|port| (range.0..=range.1).contains(port))
                .collect();
            Ok(ports.len() as u64)
        };
        Ok((count("-ta")?, count("-ua")?))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// The inodes of every network namespace that exists: those of processes and threads, and
/// those kept by a mount in /run/netns.
fn live_namespaces() -> BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut alive = BTreeSet::new();
    let inode = |path: std::path::PathBuf| std::fs::metadata(path).map(|m| m.ino()).ok();
    for process in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        alive.extend(inode(process.path().join("ns/net")));
        // Threads may sit in other namespaces than their process (setns, unshare).
        for task in std::fs::read_dir(process.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            alive.extend(inode(task.path().join("ns/net")));
        }
    }
    for mount in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        alive.extend(inode(mount.path()));
    }
    alive
}

/// Ports in use per namespace (summed over protocols), from the namespace scopes' gauges.
fn namespace_use(page: &str) -> BTreeMap<u64, u64> {
    let mut used = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("port_trace_scope_ports_used{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("scope").map(String::as_str) != Some("namespace") {
            continue;
        }
        if let (Some(inode), Ok(value)) = (
            labels.get("netns").and_then(|n| n.parse().ok()),
            value.trim().parse::<f64>(),
        ) {
            *used.entry(inode).or_default() += value as u64;
        }
    }
    used
}

/// The value of the series `name` whose labels include `want`.
fn gauge(page: &str, name: &str, want: &[(&str, &str)]) -> Option<u64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => {
                let (labels, value) = rest.rsplit_once("} ")?;
                (parse_labels(labels), value)
            }
            None => (BTreeMap::new(), rest.strip_prefix(' ')?),
        };
        want.iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            .then(|| value.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// `a="x",b="y"` (values without quotes or commas: ours are numbers and names).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_string(), value.trim_matches('"').to_string()))
        })
        .collect()
}

/// GET /metrics: the body of a 200.
fn scrape(addr: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("not a page: {}", reply.lines().next().unwrap_or("")),
    }
}
