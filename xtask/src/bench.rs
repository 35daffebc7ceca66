//! `cargo xtask bench`: port-trace's overhead side by side with no tracer and with
//! libbpf-tools' tcplife, in one interleaved series (A B C D A B C D ...), medians reported
//! as ratios to untraced; then the scale test (memory per held connection).
//!
//! Per run it reads, from /proc: the tracer's CPU time and peak RSS; and from port-trace's
//! report, the allocations it counted and the events it lost. Those runs have
//! kernel.bpf_stats_enabled off, as a production host has it: the stats read the clock twice
//! around every program run, which costs the traced workload more than some programs do. One
//! more run per tracer and workload, with the stats on, gives the programs' run time and count
//! (fdinfo of the tracer's program fds), and, for port-trace, its map operations and ring
//! records (its hidden `--count-map-ops`). A run of port-trace with empty programs at the
//! same hooks (`--empty-programs`) measures the floor: what the hooks cost by themselves.
//! From these it prints each workload's per-connection budget and, at the end, the targets'
//! verdicts.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use port_trace_common::{EMPTY_TWINS, MAP_OP_KINDS, MAP_OP_NAMES, OP_RING_RECORDS};
use serde_json::Value;

use crate::{cmd, run, setup};

pub struct Options {
    pub rounds: usize,
    pub millis: u64,
    pub hold: usize,
    /// A quick pass that checks everything runs (CI); no targets.
    pub smoke: bool,
    /// Another build of port-trace to run side by side with this one (e.g. main before a
    /// change), interleaved with the rest.
    pub baseline: Option<PathBuf>,
}

impl Options {
    /// One round of 300 ms per configuration and a small scale test: seconds, for CI.
    pub fn smoke() -> Self {
        Self {
            rounds: 1,
            millis: 300,
            hold: 2_000,
            smoke: true,
            baseline: None,
        }
    }

    /// Where the binaries measured are: the release builds, but for a smoke run the debug
    /// builds the tests made already (it measures nothing; a release build would add three
    /// minutes to CI).
    fn bin(&self, name: &str) -> PathBuf {
        let profile = if self.smoke { "debug" } else { "release" };
        Path::new("target").join(profile).join(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Untraced,
    /// port-trace with empty programs at its hooks (tracepoint backend): the floor.
    Floor,
    PortTrace,
    /// `--baseline`'s build, as `PortTrace` runs.
    Baseline,
    PortTraceJson,
    Tcplife,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::Untraced,
        Config::Floor,
        Config::PortTrace,
        Config::Baseline,
        Config::PortTraceJson,
        Config::Tcplife,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Floor => "empty programs (floor)",
            Config::PortTrace => "port-trace",
            Config::Baseline => "port-trace baseline",
            Config::PortTraceJson => "port-trace --events json",
            Config::Tcplife => "tcplife",
        }
    }
}

/// A workload: churn's arguments and which allocations it makes (for counting).
struct Workload {
    name: &'static str,
    args: Vec<String>,
    /// tcplife sees TCP only.
    tcp: bool,
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
struct Run {
    ops_per_s: f64,
    /// Operations the workload made (connections, or UDP sockets).
    ops: u64,
    /// What the tracer should count: port-trace every port chosen for the workload;
    /// tcplife every TCP session, both ends of each connection.
    expected: u64,
    /// Allocations the tracer counted for the workload (port-trace: its report; tcplife:
    /// output lines); None untraced.
    counted: Option<u64>,
    lost: Option<u64>,
    /// Average eBPF program run time, ns (all the tracer's programs together).
    bpf_ns_per_run: Option<f64>,
    bpf_runs: u64,
    /// Per program (by name): run time (ns) and runs, the profile of the kernel side.
    per_program: BTreeMap<String, (u64, u64)>,
    /// The tracer's CPU time over the workload's wall time, in % of one core.
    cpu_percent: Option<f64>,
    peak_rss_kib: Option<u64>,
    /// Events port-trace's report counts (allocations, releases, failures).
    events: Option<u64>,
    /// The tracer's CPU time over the run, seconds.
    cpu_seconds: Option<f64>,
    /// Map operations and ring records by `OP_*` (port-trace's profiled run only).
    map_ops: Vec<u64>,
}

const TCPLIFE: &str = "/usr/sbin/tcplife";

/// The release builds the bench and the soak run: port-trace and the churn workloads.
pub fn build_release() -> Result<()> {
    build(true)
}

/// port-trace and the churn workloads, release or debug builds.
fn build(release: bool) -> Result<()> {
    let mut cargo = cmd("cargo");
    cargo.arg("build");
    if release {
        cargo.arg("--release");
    }
    run(cargo.args(["--package", "port-trace", "--package", "port-trace-bench"]))
}

pub fn bench(options: &Options) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    setup::ensure_build_toolchain()?;
    setup::ensure_apt_packages(&["libbpf-tools"])?;
    let tcplife = find_tcplife()?;
    build(!options.smoke)?;
    ensure_tracefs()?;
    let stats_were = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    let result = series(options, &tcplife);
    // Leave the host as it was.
    let _ = std::fs::write(BPF_STATS, stats_were.trim());
    result
}

/// kernel.bpf_stats_enabled: on for the profiling runs only.
fn bpf_stats(on: bool) -> Result<()> {
    std::fs::write(BPF_STATS, if on { "1" } else { "0" })
        .context("setting kernel.bpf_stats_enabled")
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn find_tcplife() -> Result<PathBuf> {
    for candidate in [TCPLIFE, "/usr/bin/tcplife", "/usr/sbin/libbpf-tcplife"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    setup::which("tcplife").context("libbpf-tools is installed but tcplife is not on PATH")
}

/// tcplife attaches through tracefs; port-trace mounts it itself, tcplife does not.
pub(crate) fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn workloads(options: &Options) -> Vec<Workload> {
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let churn = |kind: &str, threads: usize| {
        vec![
            "--fresh-netns".to_string(),
            kind.to_string(),
            format!("--threads={threads}"),
            format!("--millis={}", options.millis),
        ]
    };
    vec![
        Workload {
            name: "tcp connect+RST, 1 thread",
            args: churn("tcp-rst", 1),
            tcp: true,
        },
        Workload {
            name: "tcp connect+RST, 1 thread/core",
            args: churn("tcp-rst", cores),
            tcp: true,
        },
        Workload {
            name: "tcp connect+close (TIME_WAIT)",
            args: churn("tcp-close", 1),
            tcp: true,
        },
        Workload {
            name: "udp connect+send+close",
            args: churn("udp", 1),
            tcp: false,
        },
    ]
}

fn series(options: &Options, tcplife: &Path) -> Result<()> {
    let machine = machine();
    println!("port-trace bench on {machine}");
    if options.smoke {
        println!("smoke run: checks that every workload and configuration runs; no targets");
    }
    println!(
        "{} rounds of {} ms per configuration, interleaved; medians; kernel.bpf_stats_enabled \
         off\n(bpf ns/run, the program profile and the budget: one more run per tracer with it \
         on)\n",
        options.rounds, options.millis
    );
    let mut failures = Vec::new();
    let mut summaries = Vec::new();
    for workload in workloads(options) {
        let configs: Vec<Config> = Config::ALL
            .into_iter()
            .filter(|c| *c != Config::Tcplife || workload.tcp)
            .filter(|c| *c != Config::Baseline || options.baseline.is_some())
            .collect();
        let mut runs: BTreeMap<Config, Vec<Run>> = BTreeMap::new();
        bpf_stats(false)?;
        for _ in 0..options.rounds {
            for &config in &configs {
                let measured = measure(config, &workload, tcplife, options, false)
                    .with_context(|| format!("{} under {}", workload.name, config.name()))?;
                runs.entry(config).or_default().push(measured);
            }
        }
        bpf_stats(true)?;
        let mut profiles = BTreeMap::new();
        for &config in configs.iter().filter(|c| **c != Config::Untraced) {
            let measured = measure(config, &workload, tcplife, options, true)
                .with_context(|| format!("{} under {}, profiled", workload.name, config.name()))?;
            profiles.insert(config, measured);
        }
        bpf_stats(false)?;
        let summary = print_table(&workload, &runs, &profiles, &mut failures);
        print_budget(&summary, &profiles);
        summaries.push(summary);
    }
    let bytes_per_held = scale(options)?;
    if !options.smoke {
        print_verdicts(&summaries, bytes_per_held);
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// A figure for the tables, `-` where there is none.
fn show(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// One workload's medians, for its budget and the targets.
struct Summary {
    name: &'static str,
    tcp: bool,
    /// ops/s by configuration.
    ops: BTreeMap<Config, f64>,
    /// port-trace's and --events json's: all counted, none lost, in every run.
    exact: BTreeMap<Config, bool>,
    /// port-trace's average eBPF program run time, ns (profiled run).
    ns_per_run: Option<f64>,
    /// port-trace's daemon CPU per event, us.
    daemon_us_per_event: Option<f64>,
    /// port-trace's daemon CPU in % of a core at 100k operations/s.
    cpu_per_100k: Option<f64>,
}

impl Summary {
    fn ratio(&self, config: Config) -> Option<f64> {
        Some(self.ops.get(&config)? / self.ops.get(&Config::Untraced)?)
    }

    /// What `config` adds to each operation, us of wall time, from the throughputs.
    fn added_us(&self, config: Config) -> Option<f64> {
        Some(1e6 / self.ops.get(&config)? - 1e6 / self.ops.get(&Config::Untraced)?)
    }
}

fn print_table(
    workload: &Workload,
    runs: &BTreeMap<Config, Vec<Run>>,
    profiles: &BTreeMap<Config, Run>,
    failures: &mut Vec<String>,
) -> Summary {
    let name = workload.name;
    println!("{name}");
    println!(
        "  {:<26} {:>10} {:>7} {:>18} {:>6} {:>9} {:>8} {:>12} {:>9}",
        "configuration",
        "ops/s",
        "ratio",
        "counted/expected",
        "lost",
        "bpf ns/run",
        "cpu %",
        "cpu%/100k/s",
        "peak RSS"
    );
    let mut summary = Summary {
        name,
        tcp: workload.tcp,
        ops: BTreeMap::new(),
        exact: BTreeMap::new(),
        ns_per_run: None,
        daemon_us_per_event: None,
        cpu_per_100k: None,
    };
    let mut profile = BTreeMap::new();
    let untraced = runs
        .get(&Config::Untraced)
        .and_then(|r| median(r.iter().map(|r| r.ops_per_s).collect()));
    for (config, runs) in runs {
        let pick = |f: &dyn Fn(&Run) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        let ops = pick(&|r| Some(r.ops_per_s)).unwrap_or(0.0);
        summary.ops.insert(*config, ops);
        let ratio = untraced.map(|u| ops / u);
        let counted: u64 = runs.iter().filter_map(|r| r.counted).sum();
        let expected: u64 = runs.iter().map(|r| r.expected).sum();
        let lost: u64 = runs.iter().filter_map(|r| r.lost).sum();
        let profiled = profiles.get(config);
        let bpf = profiled.and_then(|r| r.bpf_ns_per_run);
        let cpu = pick(&|r| r.cpu_percent);
        let cpu_per_100k = pick(&|r| r.cpu_percent.map(|c| c / (r.ops_per_s / 100_000.0)));
        let rss = pick(&|r| r.peak_rss_kib.map(|k| k as f64));
        let traces = matches!(
            config,
            Config::PortTrace | Config::PortTraceJson | Config::Baseline
        );
        let counted_text = if traces || *config == Config::Tcplife {
            format!("{counted}/{expected}")
        } else {
            "-".to_string()
        };
        println!(
            "  {:<26} {:>10.0} {:>7} {:>18} {:>6} {:>9} {:>8} {:>12} {:>9}",
            config.name(),
            ops,
            show(ratio, 3),
            counted_text,
            if traces {
                lost.to_string()
            } else {
                "-".to_string()
            },
            show(bpf, 0),
            show(cpu, 1),
            show(cpu_per_100k, 1),
            rss.map_or("-".to_string(), |k| format!("{:.1}M", k / 1024.0)),
        );
        // The targets are this build's; a baseline's losses are its own.
        if matches!(config, Config::PortTrace | Config::PortTraceJson) {
            summary
                .exact
                .insert(*config, lost == 0 && counted >= expected);
        }
        if *config == Config::PortTrace {
            summary.ns_per_run = bpf;
            summary.cpu_per_100k = cpu_per_100k;
            summary.daemon_us_per_event = pick(&|r| {
                let events = r.events.filter(|e| *e > 0)? as f64;
                Some(r.cpu_seconds? * 1e6 / events)
            });
            if let Some(profiled) = profiled {
                profile.clone_from(&profiled.per_program);
            }
        }
        if ops <= 0.0 {
            failures.push(format!("{name}: {} made no progress", config.name()));
        }
        if traces && counted == 0 {
            failures.push(format!("{name}: {} counted nothing", config.name()));
        }
    }
    // This build against the baseline's, from the same interleaved rounds.
    if let (Some(new), Some(base)) = (
        summary.ratio(Config::PortTrace),
        summary.ratio(Config::Baseline),
    ) {
        println!(
            "  port-trace vs baseline: ratio {new:.3} vs {base:.3} (difference {:+.3})",
            new - base
        );
    }
    // Where port-trace's kernel time goes, busiest first.
    let mut profile: Vec<(String, (u64, u64))> =
        profile.into_iter().filter(|(_, (_, n))| *n > 0).collect();
    profile.sort_by_key(|(_, (ns, _))| std::cmp::Reverse(*ns));
    let line: Vec<String> = profile
        .iter()
        .map(|(name, (ns, n))| format!("{name} {n}x{:.0}ns", *ns as f64 / *n as f64))
        .collect();
    println!("  port-trace programs: {}", line.join(", "));
    summary
}

/// port-trace's cost per operation (a connection, or a UDP socket): each program's runs and
/// time beside its empty twin's at the same hook, the map operations and ring records, the
/// daemon's CPU per event, and the wall time added, port-trace's and the floor's.
fn print_budget(summary: &Summary, profiles: &BTreeMap<Config, Run>) {
    let (Some(traced), Some(floor)) = (
        profiles.get(&Config::PortTrace),
        profiles.get(&Config::Floor),
    ) else {
        println!();
        return;
    };
    // Per operation of the profiled runs themselves.
    let per_op = |run: &Run, count: u64| count as f64 / run.ops.max(1) as f64;
    println!("  budget per operation (profiled runs; the floor: empty programs at the same hooks)");
    println!(
        "    {:<16} {:>9} {:>8} {:>10} {:>12} {:>11}",
        "program", "runs/op", "ns/run", "empty ns", "ns/op", "above empty"
    );
    let (mut total, mut total_floor) = (0.0, 0.0);
    for (program, twin) in EMPTY_TWINS {
        let (ns, n) = traced.per_program.get(program).copied().unwrap_or((0, 0));
        // The kernel keeps 15 bytes of a program's name.
        let short: String = twin.chars().take(15).collect();
        let (floor_ns, floor_n) = floor.per_program.get(&short).copied().unwrap_or((0, 0));
        if n == 0 && floor_n == 0 {
            continue;
        }
        let ns_per_run = ns as f64 / n.max(1) as f64;
        let floor_per_run = floor_ns as f64 / floor_n.max(1) as f64;
        let ns_op = per_op(traced, ns);
        let floor_op = per_op(floor, floor_ns);
        total += ns_op;
        total_floor += floor_op;
        println!(
            "    {:<16} {:>9.2} {:>8.0} {:>10.0} {:>12.0} {:>11.0}",
            program,
            per_op(traced, n),
            ns_per_run,
            floor_per_run,
            ns_op,
            ns_op - floor_op
        );
    }
    println!(
        "    {:<16} {:>9} {:>8} {:>10} {:>12.0} {:>11.0}",
        "all programs",
        "",
        "",
        "",
        total,
        total - total_floor
    );
    if traced.map_ops.len() == MAP_OP_KINDS as usize {
        let ops: Vec<String> = MAP_OP_NAMES
            .iter()
            .zip(&traced.map_ops)
            .map(|(name, count)| format!("{name} {:.2}", per_op(traced, *count)))
            .collect();
        println!("    per operation: {}", ops.join(", "));
        println!(
            "    (both tables are preallocated: an insert takes a free slot, no helper \
             allocates; {:.2} ring records per operation)",
            per_op(traced, traced.map_ops[OP_RING_RECORDS as usize])
        );
    }
    println!(
        "    daemon: {} us CPU per event; added per operation: port-trace {} us, empty programs \
         {} us, --events json {} us",
        show(summary.daemon_us_per_event, 2),
        show(summary.added_us(Config::PortTrace), 2),
        show(summary.added_us(Config::Floor), 2),
        show(summary.added_us(Config::PortTraceJson), 2),
    );
    println!();
}

/// The targets (issue 15), each workload's figure against each.
fn print_verdicts(summaries: &[Summary], bytes_per_held: f64) {
    println!("\ntargets");
    let verdict = |ok: bool| if ok { "met    " } else { "NOT met" };
    for s in summaries {
        let ratios = [Config::PortTrace, Config::PortTraceJson].map(|c| s.ratio(c));
        let ok = ratios.iter().all(|r| r.is_some_and(|r| r >= 0.95));
        println!(
            "  {} throughput >= 0.95 of untraced, {}: {} (--events json {}; the floor {})",
            verdict(ok),
            s.name,
            show(ratios[0], 3),
            show(ratios[1], 3),
            show(s.ratio(Config::Floor), 3)
        );
    }
    for s in summaries.iter().filter(|s| s.tcp) {
        let added = s.added_us(Config::PortTrace);
        println!(
            "  {} <= 2 us added per TCP connection, {}: {} us (the floor {} us)",
            verdict(added.is_some_and(|a| a <= 2.0)),
            s.name,
            show(added, 2),
            show(s.added_us(Config::Floor), 2)
        );
    }
    let exact = summaries
        .iter()
        .all(|s| !s.exact.is_empty() && s.exact.values().all(|ok| *ok));
    println!(
        "  {} 0 lost and every allocation counted, every workload",
        verdict(exact)
    );
    for s in summaries {
        println!(
            "  {} <= 300 ns per program run, {}: {}",
            verdict(s.ns_per_run.is_some_and(|ns| ns <= 300.0)),
            s.name,
            show(s.ns_per_run, 0)
        );
    }
    for s in summaries {
        println!(
            "  {} daemon <= 0.3 us per event, {}: {} us ({}% of a core at 100k/s)",
            verdict(s.daemon_us_per_event.is_some_and(|us| us <= 0.3)),
            s.name,
            show(s.daemon_us_per_event, 2),
            show(s.cpu_per_100k, 1)
        );
    }
    for s in summaries.iter().filter(|s| s.name.contains("TIME_WAIT")) {
        println!(
            "  {} daemon <= 15% of a core at 100k closes/s with TIME_WAIT, {}: {}%",
            verdict(s.cpu_per_100k.is_some_and(|c| c <= 15.0)),
            s.name,
            show(s.cpu_per_100k, 1)
        );
    }
    println!(
        "  {} <= 100 bytes of daemon memory per held socket: {bytes_per_held:.0}",
        verdict(bytes_per_held <= 100.0)
    );
}

/// Starts the tracer of `config` (none for untraced), runs the workload, stops the tracer.
fn measure(
    config: Config,
    workload: &Workload,
    tcplife: &Path,
    options: &Options,
    profiled: bool,
) -> Result<Run> {
    let report = std::env::temp_dir().join(format!("port-trace-bench-{}.json", std::process::id()));
    let mut tracer = match config {
        Config::Untraced => None,
        Config::PortTrace | Config::PortTraceJson | Config::Baseline | Config::Floor => {
            let binary = match (config, &options.baseline) {
                (Config::Baseline, Some(baseline)) => baseline.as_path(),
                _ => &options.bin("port-trace"),
            };
            let mut command = Command::new(binary);
            command
                .args(["--interval", "1h", "--report"])
                .arg(&report)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match config {
                Config::PortTraceJson => {
                    command.args(["--events", "json"]);
                }
                Config::Floor => {
                    command.args(["--empty-programs", "--backend", "tracepoint"]);
                }
                Config::PortTrace if profiled => {
                    command.arg("--count-map-ops");
                }
                _ => {}
            }
            Some(Tracer::start(command, false)?)
        }
        Config::Tcplife => {
            let mut command = Command::new(tcplife);
            command.stdout(Stdio::piped()).stderr(Stdio::null());
            Some(Tracer::start(command, true)?)
        }
    };
    let before = tracer.as_ref().map(Tracer::sample);
    let started = Instant::now();
    let out = Command::new(options.bin("churn"))
        .args(&workload.args)
        .output()
        .context("running churn")?;
    let wall = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("churn failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let result: Value = serde_json::from_slice(&out.stdout).context("churn's JSON line")?;
    let ops = result["ops"].as_u64().unwrap_or(0);
    let seconds = result["seconds"].as_f64().unwrap_or(f64::NAN);
    let mut measured = Run {
        expected: match config {
            Config::Tcplife => 2 * ops,
            _ => result["ports"].as_u64().unwrap_or(ops),
        },
        ops_per_s: ops as f64 / seconds,
        ops,
        ..Run::default()
    };
    if let (Some(tracer), Some(before)) = (tracer.as_mut(), before) {
        // Let the tracer drain what the workload made before reading its clocks.
        thread::sleep(Duration::from_millis(200));
        let after = tracer.sample();
        let names = program_names();
        let (mut ns, mut runs) = (0, 0);
        for (id, (after_ns, after_runs)) in &after.programs {
            let (before_ns, before_runs) = before.programs.get(id).copied().unwrap_or((0, 0));
            let delta = (
                after_ns.saturating_sub(before_ns),
                after_runs.saturating_sub(before_runs),
            );
            ns += delta.0;
            runs += delta.1;
            let name = names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("prog {id}"));
            let entry = measured.per_program.entry(name).or_default();
            entry.0 += delta.0;
            entry.1 += delta.1;
        }
        measured.bpf_runs = runs;
        measured.bpf_ns_per_run = (runs > 0).then(|| ns as f64 / runs as f64);
        let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
        measured.cpu_seconds = Some(ticks / clock_ticks());
        measured.cpu_percent = Some(ticks / clock_ticks() / wall * 100.0);
        if after.map_ops.len() == before.map_ops.len() {
            measured.map_ops = after
                .map_ops
                .iter()
                .zip(&before.map_ops)
                .map(|(after, before)| after.saturating_sub(*before))
                .collect();
        }
        measured.peak_rss_kib = Some(after.peak_rss_kib);
    }
    if let Some(tracer) = tracer {
        let lines = tracer.stop()?;
        match config {
            // Less its header line.
            Config::Tcplife => measured.counted = Some(lines.saturating_sub(1)),
            // Traces nothing.
            Config::Floor => {
                let _ = std::fs::remove_file(&report);
            }
            _ => {
                let text = std::fs::read_to_string(&report).context("port-trace's report")?;
                let _ = std::fs::remove_file(&report);
                let report: Value = serde_json::from_str(&text)?;
                measured.counted = report["alloc_by_process"]["churn"].as_u64().or(Some(0));
                measured.lost = report["totals"]["lost"].as_u64();
                let totals = &report["totals"];
                measured.events = ["alloc", "release", "fail"]
                    .iter()
                    .map(|key| totals[key].as_u64())
                    .sum();
            }
        }
    }
    Ok(measured)
}

/// A tracer process: port-trace or tcplife.
struct Tracer {
    child: Child,
    /// tcplife's output lines, counted by a thread (one per closed connection).
    lines: Option<thread::JoinHandle<u64>>,
}

/// What /proc says of the tracer at one moment.
#[derive(Debug, Clone)]
struct Sample {
    /// prog_id -> (run_time_ns, run_cnt)
    programs: BTreeMap<u64, (u64, u64)>,
    cpu_ticks: u64,
    peak_rss_kib: u64,
    /// port-trace's `MAP_OPS` counters by `OP_*`, summed over CPUs (empty without them).
    map_ops: Vec<u64>,
}

impl Tracer {
    /// Starts it and waits until its programs are loaded (its count of BPF program fds has
    /// stopped growing).
    fn start(mut command: Command, count_lines: bool) -> Result<Tracer> {
        let mut child = command.spawn().context("starting the tracer")?;
        let lines = if count_lines {
            let stdout = child.stdout.take().context("tracer stdout")?;
            Some(thread::spawn(move || {
                BufReader::new(stdout).lines().map_while(Result::ok).count() as u64
            }))
        } else {
            None
        };
        let mut tracer = Tracer { child, lines };
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut stable_since) = (0, Instant::now());
        loop {
            if let Some(status) = tracer.child.try_wait()? {
                bail!("the tracer exited during start-up: {status}");
            }
            let programs = bpf_programs(tracer.child.id()).len();
            if programs != last {
                (last, stable_since) = (programs, Instant::now());
            } else if programs > 0 && stable_since.elapsed() > Duration::from_millis(700) {
                return Ok(tracer);
            }
            if Instant::now() > deadline {
                bail!("the tracer did not load its programs within 2 minutes");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn sample(&self) -> Sample {
        let pid = self.child.id();
        let programs = bpf_programs(pid)
            .into_iter()
            .map(|info| {
                let get = |key: &str| info.get(key).copied().unwrap_or(0);
                (get("prog_id"), (get("run_time_ns"), get("run_cnt")))
            })
            .collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised comm: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Sample {
            programs,
            cpu_ticks: field(11) + field(12),
            peak_rss_kib: status_kib(pid, "VmHWM"),
            map_ops: map_ops().unwrap_or_default(),
        }
    }

    /// SIGINT, as a person would stop it; returns tcplife's line count (0 for port-trace).
    fn stop(mut self) -> Result<u64> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let lines = match self.lines.take() {
            Some(counter) => counter.join().unwrap_or(0),
            None => 0,
        };
        if !status.success() && status.code() != Some(130) && status.code().is_some() {
            bail!("the tracer exited with {status}");
        }
        Ok(lines)
    }
}

/// The fdinfo of every BPF program fd `pid` holds: `prog_id`, `run_time_ns`, `run_cnt`, ...
fn bpf_programs(pid: u32) -> Vec<BTreeMap<String, u64>> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut programs = Vec::new();
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !text.contains("prog_type:") {
            continue;
        }
        let info: BTreeMap<String, u64> = text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((key.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect();
        programs.push(info);
    }
    // One program may be held by several fds.
    programs.sort_by_key(|p| p.get("prog_id").copied());
    programs.dedup_by_key(|p| p.get("prog_id").copied());
    programs
}

/// /proc's CPU times are in these ticks per second.
/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), 0 if absent.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// port-trace's `MAP_OPS` counters, summed over CPUs: the newest such map (the running
/// tracer's; they are zero unless it runs with `--count-map-ops`).
fn map_ops() -> Option<Vec<u64>> {
    use aya::maps::{Map, MapData, PerCpuArray};
    let info = aya::maps::loaded_maps()
        .flatten()
        .filter(|info| info.name_as_str() == Some("MAP_OPS"))
        .max_by_key(|info| info.id())?;
    let map = Map::from_map_data(MapData::from_id(info.id()).ok()?).ok()?;
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map).ok()?;
    (0..MAP_OP_KINDS)
        .map(|op| {
            counters
                .get(&op, 0)
                .ok()
                .map(|per_cpu| per_cpu.iter().sum())
        })
        .collect()
}

/// Program names by id (fdinfo has no names).
fn program_names() -> BTreeMap<u64, String> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|info| {
            let name = info.name_as_str().unwrap_or("?").to_string();
            (u64::from(info.id()), name)
        })
        .collect()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// The scale test: port-trace's memory per held connection, from its RSS before and after
/// `options.hold` connections are opened and held across 32 destinations; returns it, in
/// bytes.
fn scale(options: &Options) -> Result<f64> {
    println!(
        "scale: {} connections held across 32 local destinations",
        options.hold
    );
    let mut command = Command::new(options.bin("port-trace"));
    command
        .args(["--interval", "1h", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let tracer = Tracer::start(command, false)?;
    let pid = tracer.child.id();
    let before = status_kib(pid, "VmRSS");
    let cpu_before = tracer.sample().cpu_ticks;
    let started = Instant::now();
    let mut holder = Command::new(options.bin("churn"))
        .args([
            "--fresh-netns",
            "hold",
            &format!("--connections={}", options.hold),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting churn hold")?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().context("holder stdout")?).read_line(&mut line)?;
    let opened_in = started.elapsed().as_secs_f64();
    let held = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v["held"].as_u64())
        .unwrap_or(0);
    // Let the daemon catch up with the last allocations.
    thread::sleep(Duration::from_secs(2));
    let after = status_kib(pid, "VmRSS");
    let cpu = (tracer.sample().cpu_ticks - cpu_before) as f64 / clock_ticks();
    drop(holder.stdin.take());
    let status = holder.wait()?;
    tracer.stop()?;
    let per_socket = (after.saturating_sub(before) * 1024) as f64 / held.max(1) as f64;
    println!(
        "  held {held} in {opened_in:.1}s; daemon RSS {:.1} MiB -> {:.1} MiB: {per_socket:.0} bytes per held connection; daemon CPU {cpu:.2}s",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    if !status.success() || held == 0 {
        bail!("the scale test held {held} of {} connections", options.hold);
    }
    Ok(per_socket)
}
