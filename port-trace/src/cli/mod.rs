//! The command line.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};

mod duration;

use self::duration::parse_duration;
pub use crate::sinks::events::EventFormat;
use crate::{
    event::{
        Family, Proto,
        filter::{Filter, PodName},
    },
    probes::BackendChoice,
};

#[derive(Debug, Parser)]
#[command(
    name = "port-trace",
    version,
    about = "Trace every ephemeral port the kernel hands out, and how long each is held",
    long_about = "Trace every ephemeral port the kernel hands out, and how long each is held.\n\n\
        port-trace attaches eBPF programs that see each port the kernel chooses (TCP connect(), \
        bind() to port 0, listen() without bind) and each release, and reports how long ports \
        are held, per protocol, kind and process. When a host fails with \"Cannot assign \
        requested address\", this shows who is holding the ephemeral range and for how long.\n\n\
        Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN), a kernel with BTF \
        (/sys/kernel/btf/vmlinux) and cgroup v2.\n\n\
        Exit codes: 0 done, 1 unexpected failure, 2 bad command line, 3 not permitted \
        (not root), 4 the kernel lacks a feature port-trace needs, 5 the --prometheus address \
        cannot be served (already in use, or not this host's), 6 a --report, --hdr-log or \
        --html file cannot be written (a missing directory, a directory, a device, a read-only place).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Stop after this long (e.g. 30s, 5m, 1h30m; units ms, s, m, h, d, and M for months);
    /// default: until Ctrl-C, SIGTERM or SIGHUP, or until stdout's reader goes away.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Print a summary this often (and once more on exit).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Check tracked ports against the kernel's own sockets this often (and at once after
    /// any lost event): a port whose release was lost, with no socket left, is freed and
    /// counted as "reconciled". Each check dumps the sockets of every namespace with tracked
    /// ports (about 1 us a socket); a port is freed only when absent from two checks 2 s
    /// apart.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub reconcile_every: Duration,

    /// Stream every event: `json` prints one JSON object per line on stdout (summaries move
    /// to stderr); `text` prints aligned lines for people.
    #[arg(long, value_name = "FORMAT")]
    pub events: Option<EventFormat>,

    /// Write a JSON report (totals, lifetime percentiles overall, per protocol, kind and
    /// process) to FILE on exit, however tracing ends. FILE is checked at start; it is
    /// written to a new file beside it and renamed into place, so whatever was at FILE (a
    /// symlink included) is replaced, never written through.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Write allocation lifetimes to FILE as HdrHistogram interval logs, one interval per
    /// summary (`--interval`): untagged for all ports, tagged `tcp`/`udp` per protocol, for
    /// HdrHistogram's own tools to plot. Checked at start and replaced like --report's FILE.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,

    /// Write a self-contained HTML page to FILE, to look at: the findings, the fullest
    /// ranges filling over time (with the warn and critical lines and where allocations
    /// failed), allocation and release rates, lifetime distributions, who holds the ports.
    /// Rewritten every --interval and at exit (each time whole, renamed into place); it
    /// fetches nothing, so it opens offline, prints, and can be attached to a ticket.
    /// Checked at start and replaced like --report's FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics: lifetime histograms by protocol,
    /// kind and process, counters of allocations, releases and failures (by errno),
    /// occupancy per namespace and destination with capacity, lost events. ADDR is
    /// HOST:PORT, or a bare PORT for loopback only (127.0.0.1); name another address to be
    /// scraped from elsewhere (e.g. 0.0.0.0:9464). Port 0 picks a free port (see `ready`).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub prometheus: Option<SocketAddr>,

    /// How many sockets the kernel side can track at once. A socket beyond that is counted
    /// as lost ("socket table full"), never dropped silently. Each slot is kernel memory
    /// taken at start, about 176 bytes (measured: the table's memlock in /proc/PID/fdinfo
    /// over max_entries, 6.18 kernel): the default ~22 MiB, 1048576 ~176 MiB,
    /// the maximum 16777216 ~2.8 GiB and seconds to start.
    #[arg(long, value_name = "N", default_value_t = 131_072,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: u32,

    /// Size of the kernel-to-daemon ring buffer in KiB (a power of two). Events that do not
    /// fit are counted as lost ("ring buffer full"). It is kernel memory taken at start,
    /// KIB and no more (an event takes 104 bytes with its header: the default holds ~40,000).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    /// For the benchmark: count the eBPF programs' map operations and ring records
    /// (`cargo xtask bench` reads them for its per-connection budget).
    #[arg(long, hide = true)]
    pub count_map_ops: bool,

    /// For the benchmark: attach programs that do nothing at the tracepoint backend's hooks,
    /// to measure what the hooks cost by themselves. Nothing is traced.
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// For the tests: attach the stand-ins that kernels refusing a program get (on 5.10,
    /// `tcp_state_stored_cookie` and `tcp_cookie` for `tcp_state`), as if the kernel had
    /// refused it, so every kernel can test them.
    #[arg(long, hide = true)]
    pub fallback_programs: bool,

    /// Report only what these processes allocate (repeat for more). Occupancy and warnings
    /// still count every process's ports: they fill the same range.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Report only what processes (threads) of this name allocate (repeat for more). The
    /// kernel keeps 15 bytes of a name, so a longer one could never match.
    #[arg(long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Vec<String>,

    /// Trace only this network namespace, by inode (`ls -l /proc/PID/ns/net`); repeat for
    /// more. Filtered in the kernel: other namespaces cost nothing, and warnings cover only
    /// the namespaces traced.
    #[arg(long, value_name = "INODE")]
    pub netns: Vec<u32>,

    /// Trace only this protocol. Filtered in the kernel, like --netns.
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<ProtoArg>,

    /// Report only this address family.
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<FamilyArg>,

    /// Report only what this container allocates: its name (`docker ps`), its id, or an id
    /// prefix of 4 or more characters (repeat for more). Like --pid, it narrows the report,
    /// not occupancy: a container on the host network fills the host's range.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Vec<String>,

    /// Report only what this Kubernetes pod allocates, as NAMESPACE/NAME (repeat for more).
    /// Names come from the node's /var/log/pods (see --host-root).
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Vec<PodName>,

    /// Report only what processes in this cgroup v2 path or below allocate (repeat for
    /// more): `/system.slice/nginx.service`, or `/kubepods` for every pod.
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Vec<String>,

    /// Warn when a scope (a namespace's range, or the ports for one destination) is this
    /// full, in percent of its capacity.
    #[arg(long, value_name = "PERCENT", default_value_t = 80.0, value_parser = parse_percent)]
    pub warn_at: f64,

    /// Raise a critical warning at this fullness, in percent. Every failed allocation is
    /// critical at once.
    #[arg(long, value_name = "PERCENT", default_value_t = 95.0, value_parser = parse_percent)]
    pub critical_at: f64,

    /// Which kernel hooks to use. `kprobe`: kprobes on inet_bind, __inet_hash_connect,
    /// udp_lib_get_port and the release paths (distribution kernels). `tracepoint`: the
    /// inet_sock_set_state tracepoint with cgroup socket hooks, for kernels without kprobes.
    /// `auto` takes kprobe where it attaches, else tracepoint.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    pub backend: BackendChoice,

    /// Where the host's `/` is: `/` when port-trace runs on the host; the mount point of
    /// the host's `/` (e.g. /host) when it runs in a container, such as the Kubernetes
    /// DaemonSet's. Events name their workload from what is under it: the cgroup v2
    /// hierarchy (sys/fs/cgroup, or sys/fs/cgroup/unified beside v1), pod and container
    /// names from var/log/pods and var/log/containers, and Docker container names from
    /// var/run/docker.sock where Docker runs. Any of these may be missing: the names it
    /// gives are then missing too.
    #[arg(long, value_name = "PATH", default_value = "/", value_parser = parse_host_root)]
    pub host_root: PathBuf,

    /// No summaries and no start-up line: only events (--events), warnings and the report.
    #[arg(short, long)]
    pub quiet: bool,

    /// More logs on stderr: -v for debug, -vv for trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Will port-trace work on this kernel, and with what? Checks privileges, BTF, tracefs
    /// and cgroup v2, then loads and attaches every hook of each backend (and detaches it)
    /// and says which attach. Exits 0 if a backend works, 4 if none does.
    Check,
    /// What is this port? Its IANA range (RFC 6335) and assignment (the registry is built
    /// in; /etc/services supplements it), whether this host would hand it out as an
    /// ephemeral port (per network namespace where the range differs), and who holds it now,
    /// with pid, process, state and peer. Needs no eBPF; without root it says what it could
    /// not see.
    Explain {
        /// The port number, 0-65535.
        #[arg(value_parser = clap::value_parser!(u16))]
        port: u16,
        /// Only this protocol's assignments and sockets.
        #[arg(long)]
        proto: Option<ProtoArg>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay a capture made with `--events json` (`port-trace --events json > capture.jsonl`)
    /// through the same pipeline, and print what a live trace prints at its end: the
    /// summary, or the report or Prometheus metrics. For post-mortems on a capture copied
    /// from the host: needs no eBPF and no root. Exits 2 on a line it cannot read, naming
    /// it; record types it does not know (a newer port-trace's) are skipped and counted.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The capture: a file of JSON lines, or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Also write the JSON report to FILE, as `--report` does at the end of a trace.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Also write the HTML page to FILE, as `--html` does at the end of a trace: the
    /// capture's whole span, its ranges filling over time, rates and lifetimes.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Print the Prometheus metrics text (as scraped at the end) instead of the summary.
    #[arg(long)]
    pub metrics: bool,

    /// Warn when a scope is this full, in percent: give the live trace's --warn-at to
    /// get its warnings.
    #[arg(long, value_name = "PERCENT", default_value_t = 80.0, value_parser = parse_percent)]
    pub warn_at: f64,

    /// The critical level, in percent: the live trace's --critical-at.
    #[arg(long, value_name = "PERCENT", default_value_t = 95.0, value_parser = parse_percent)]
    pub critical_at: f64,

    /// The summary interval the live trace ran with (its --interval): ranges are
    /// re-checked at the same boundaries.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for Proto {
    fn from(proto: ProtoArg) -> Self {
        match proto {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl Cli {
    /// Checks what no single flag's parser can: the flags together. An error is a usage
    /// error (exit 2), said before anything is attached.
    pub fn validate(&self) -> Result<(), String> {
        if self.warn_at > self.critical_at {
            return Err(format!(
                "--warn-at {} is above --critical-at {}: the warning would come after the \
                 critical line",
                self.warn_at, self.critical_at
            ));
        }
        Ok(())
    }

    /// What the trace reports: the filter flags together.
    pub fn filter(&self) -> Filter {
        Filter {
            pids: self.pid.clone(),
            comms: self.comm.clone(),
            netns: self.netns.clone(),
            proto: self.proto.map(Proto::from),
            family: self.family.map(|f| match f {
                FamilyArg::Ipv4 => Family::Ipv4,
                FamilyArg::Ipv6 => Family::Ipv6,
            }),
            containers: self.container.clone(),
            pods: self.pod.clone(),
            cgroups: self.cgroup.clone(),
        }
    }
}

/// An existing directory: a mistyped host root would silently name no workload.
fn parse_host_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_dir() {
        return Err(format!("`{text}` is not a directory"));
    }
    Ok(path)
}

fn parse_cgroup(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "`{text}`: a cgroup is a path from the cgroup v2 root, starting with / (as \
             /proc/PID/cgroup shows it after `0::`)"
        ));
    }
    Ok(text.to_string())
}

/// A task name as the kernel keeps it (`TASK_COMM_LEN` 16, with its NUL).
fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 {
        return Err(format!(
            "`{text}`: a process name is 1 to 15 bytes (the kernel keeps no more)"
        ));
    }
    Ok(text.to_string())
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let percent: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage"))?;
    if !(1.0..=100.0).contains(&percent) {
        return Err(format!("`{text}`: must be from 1 to 100"));
    }
    Ok(percent)
}

fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of KiB"))?;
    if !kib.is_power_of_two() || !(4..=1_048_576).contains(&kib) {
        return Err(format!(
            "`{text}`: must be a power of two from 4 to 1048576"
        ));
    }
    Ok(kib)
}

/// `PORT` (loopback), `HOST:PORT` or `[V6]:PORT`; a name is resolved once (`localhost`).
fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = resolve_listen_addr(text)?;
    // A multicast or broadcast address binds, but no scraper can connect to it.
    let unreachable = match addr.ip() {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_multicast(),
    };
    if unreachable {
        return Err(format!(
            "`{text}`: a multicast or broadcast address takes no connections; use this host's \
             address, 0.0.0.0 or 127.0.0.1"
        ));
    }
    Ok(addr)
}

fn resolve_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || format!("`{text}` is not PORT, HOST:PORT or [IPV6]:PORT (e.g. 127.0.0.1:9464)");
    if !text.contains(':') {
        return Err(bad());
    }
    text.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_typical_line() {
        let cli = Cli::try_parse_from([
            "port-trace",
            "--duration",
            "30s",
            "--events",
            "json",
            "--report",
            "/tmp/r.json",
        ])
        .expect("parses");
        assert_eq!(cli.duration, Some(Duration::from_secs(30)));
        assert_eq!(cli.interval, Duration::from_secs(10));
        assert_eq!(cli.reconcile_every, Duration::from_secs(30));
        assert_eq!(cli.events, Some(EventFormat::Json));
    }

    #[test]
    fn prometheus_addresses() {
        let addr = |text: &str| parse_listen_addr(text);
        assert_eq!(addr("9464"), Ok("127.0.0.1:9464".parse().expect("addr")));
        assert_eq!(
            addr("0.0.0.0:9464"),
            Ok("0.0.0.0:9464".parse().expect("addr"))
        );
        assert_eq!(addr("[::1]:0"), Ok("[::1]:0".parse().expect("addr")));
        for bad in ["", "70000", "127.0.0.1", "127.0.0.1:x", "[::1]"] {
            assert!(addr(bad).is_err(), "{bad}");
        }
        for unreachable in ["224.0.0.1:9464", "255.255.255.255:9464", "[ff02::1]:9464"] {
            assert!(
                addr(unreachable)
                    .unwrap_err()
                    .contains("multicast or broadcast"),
                "{unreachable}"
            );
        }
    }

    #[test]
    fn filters_combine() {
        let cli = Cli::try_parse_from([
            "port-trace",
            "--pid",
            "1",
            "--pid",
            "2",
            "--comm",
            "curl",
            "--proto",
            "udp",
            "--family",
            "ipv6",
        ])
        .expect("parses");
        let filter = cli.filter();
        assert_eq!(filter.pids, vec![1, 2]);
        assert_eq!(filter.comms, vec!["curl".to_string()]);
        assert_eq!(filter.proto, Some(Proto::Udp));
        assert_eq!(filter.family, Some(Family::Ipv6));
        assert!(Cli::try_parse_from(["port-trace", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["port-trace", "--family", "ipx"]).is_err());
    }

    #[test]
    fn check_is_a_subcommand() {
        let cli = Cli::try_parse_from(["port-trace", "check"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Check)));
        assert!(Cli::try_parse_from(["port-trace", "check", "--duration", "1s"]).is_err());
        let cli = Cli::try_parse_from(["port-trace", "explain", "443", "--json"]).expect("ok");
        assert!(matches!(
            cli.command,
            Some(Command::Explain {
                port: 443,
                json: true,
                ..
            })
        ));
        for bad in ["65536", "-1", "https", ""] {
            let err = Cli::try_parse_from(["port-trace", "explain", bad]).expect_err(bad);
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn rejects_bad_input_as_usage_errors() {
        for args in [
            &["port-trace", "--duration", "soon"][..],
            &["port-trace", "--no-such-flag"],
            &["port-trace", "--events", "xml"],
            &["port-trace", "--ring-buffer-kib", "1000"],
            &["port-trace", "--warn-at", "0"],
            &["port-trace", "--critical-at", "101%"],
            &["port-trace", "--pod", "api-7d9f"],
            &["port-trace", "--cgroup", "docker"],
            &["port-trace", "--host-root", "/nonexistent/host"],
            &["port-trace", "--host-root", "/etc/hostname"],
        ] {
            let err = Cli::try_parse_from(args).expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn workload_filters_parse() {
        let cli = Cli::try_parse_from([
            "port-trace",
            "--container",
            "web",
            "--pod",
            "shop/api-7d9f",
            "--cgroup",
            "/kubepods",
        ])
        .expect("valid");
        let filter = cli.filter();
        assert_eq!(filter.containers, ["web"]);
        assert_eq!(filter.pods[0].namespace, "shop");
        assert_eq!(filter.cgroups, ["/kubepods"]);
    }

    #[test]
    fn names_and_thresholds_that_could_never_work_are_rejected() {
        assert!(Cli::try_parse_from(["port-trace", "--comm", "sixteen-bytes-xx"]).is_err());
        assert!(Cli::try_parse_from(["port-trace", "--comm", ""]).is_err());
        let fifteen = Cli::try_parse_from(["port-trace", "--comm", "fifteen-bytes-x"]);
        assert_eq!(fifteen.expect("15 bytes fit").comm, ["fifteen-bytes-x"]);
        let inverted =
            Cli::try_parse_from(["port-trace", "--warn-at", "96", "--critical-at", "90"])
                .expect("each flag alone is fine");
        assert!(
            inverted
                .validate()
                .unwrap_err()
                .contains("above --critical-at")
        );
        let equal = Cli::try_parse_from(["port-trace", "--warn-at", "90", "--critical-at", "90"])
            .expect("parses");
        assert_eq!(equal.validate(), Ok(()));
        let defaults = Cli::try_parse_from(["port-trace"]).expect("parses");
        assert_eq!(defaults.validate(), Ok(()));
        assert_eq!(defaults.host_root, PathBuf::from("/"));
    }
}
