//! `churn`: the workloads `cargo xtask bench` measures port-trace against. Each runs on
//! loopback only, for a fixed time or count, and prints one JSON line: what it did.
//!
//! - `tcp-rst`: connect to a local listener, close with RST (SO_LINGER 0): the port is free
//!   at once; the highest allocation rate a host reaches.
//! - `tcp-close`: connect, close normally first: the port stays in TIME_WAIT for 60 s.
//! - `udp`: socket, connect (autobind), send one datagram, close.
//! - `hold`: open N connections across D listeners and hold them until stdin closes (the
//!   scale test). Connections wait in the listeners' accept queues, so the server side costs
//!   no file descriptors; the client side is spread over processes of at most
//!   `PER_PROCESS` sockets, below the usual open-file limit.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Loopback port churn and held connections, for `cargo xtask bench`")]
struct Cli {
    /// Run in a new network namespace (needs root): each run starts with no TIME_WAIT
    /// sockets left by the one before, and leaves none behind (the namespace takes them).
    #[arg(long, global = true)]
    fresh_netns: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// connect() + RST close, in a loop on each thread.
    TcpRst(Churn),
    /// connect() + normal close (the client closes first: TIME_WAIT).
    TcpClose(Churn),
    /// UDP socket + connect() + send + close, in a loop on each thread.
    Udp(Churn),
    /// Hold this many connections open across this many local listeners, until stdin closes.
    Hold {
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        destinations: usize,
    },
    /// (internal) One process's share of `hold`.
    HoldWorker {
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        #[arg(long)]
        connections: usize,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct Churn {
    /// Client threads, each with its own listener (and acceptor thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How long to churn, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    millis: u64,
}

/// Client sockets per `hold` process: under the 20 000 open files our machines allow.
const PER_PROCESS: usize = 15_000;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.fresh_netns {
        enter_fresh_netns()?;
    }
    match cli.workload {
        Workload::TcpRst(churn) => run_churn("tcp-rst", churn, |target| tcp_once(target, true)),
        Workload::TcpClose(churn) => {
            run_churn("tcp-close", churn, |target| tcp_once(target, false))
        }
        Workload::Udp(churn) => run_udp(churn),
        Workload::Hold {
            connections,
            destinations,
        } => hold(connections, destinations),
        Workload::HoldWorker { ports, connections } => hold_worker(&ports, connections),
    }
}

/// Moves this process (before it starts any thread) into a new network namespace and
/// brings its loopback up.
fn enter_fresh_netns() -> anyhow::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; we are still single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    // Unbound: the ioctl needs a socket, not a port (a tracer would count one).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .context("a socket for the interface ioctl")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: ifreq is plain data; the ioctls read and write only it.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) != 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) != 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One TCP connection to `target`, closed with RST or normally. Whether it connected.
fn tcp_once(target: SocketAddr, rst: bool) -> bool {
    let Ok(stream) = TcpStream::connect(target) else {
        return false;
    };
    if rst {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    true
}

/// Runs `once` in a loop on each thread against its own listener, whose acceptor thread
/// accepts and drops; prints the counts.
///
/// The acceptor blocks in accept() and the backlog is deep: a loopback handshake completes
/// without the acceptor, so an acceptor that polls (and sleeps between polls) lets the queue
/// fill, the kernel drops the next SYN, and that connect() waits 1 s for its retransmit.
/// Runs stalled that way measured anything from 300 to 60 000 connections a second.
fn run_churn(
    name: &str,
    churn: Churn,
    once: impl Fn(SocketAddr) -> bool + Send + Sync + Copy + 'static,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut acceptors = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..churn.threads {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .context("listener")?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        socket.listen(ACCEPT_BACKLOG)?;
        let listener = TcpListener::from(socket);
        let target = listener.local_addr()?;
        targets.push(target);
        let stop_accepting = Arc::clone(&stop);
        acceptors.push(thread::spawn(move || {
            // Accept and drop; the client closed first (or reset), so no TIME_WAIT here.
            for stream in listener.incoming() {
                if stop_accepting.load(Ordering::Relaxed) {
                    break;
                }
                drop(stream);
            }
        }));
        let stop_client = Arc::clone(&stop);
        clients.push(thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop_client.load(Ordering::Relaxed) {
                if once(target) {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let started = Instant::now();
    thread::sleep(Duration::from_millis(churn.millis));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for client in clients {
        let (o, f) = client
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))?;
        ok += o;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    // One more connection each wakes the acceptors, which then see the stop.
    let mut wakeups = 0;
    for target in targets {
        wakeups += u64::from(TcpStream::connect(target).is_ok());
    }
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    // Each listener's bind(0) and each wake-up's connect() are kernel-chosen ports too.
    report(name, ok, failed, seconds, churn.threads as u64 + wakeups)
}

/// Deep enough that the acceptor never lets the queue fill (the kernel caps it at
/// net.core.somaxconn, 4096 by default).
const ACCEPT_BACKLOG: i32 = 4096;

fn run_udp(churn: Churn) -> anyhow::Result<()> {
    // A bound receiver, so sends are not answered with ICMP port unreachable; it never reads
    // (full buffers drop datagrams, which costs the sender nothing).
    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("udp sink")?;
    let target = sink.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..churn.threads)
        .map(|_| {
            let (stop, ops, failed) = (Arc::clone(&stop), Arc::clone(&ops), Arc::clone(&failed));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match udp_once(target) {
                        Some(()) => ops.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_millis(churn.millis));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(sink);
    report(
        "udp",
        ops.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        seconds,
        1,
    )
}

/// An unbound UDP socket, connected (the kernel autobinds a port), one datagram, closed.
fn udp_once(target: SocketAddr) -> Option<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    socket.connect(&target.into()).ok()?;
    socket.send(b"x").ok()?;
    Some(())
}

/// One JSON line: operations done and failed, and `ports`, every port the kernel chose for
/// us (the operations' and `others`: the listeners' bind(0)s, say), which a tracer should
/// count.
fn report(name: &str, ok: u64, failed: u64, seconds: f64, others: u64) -> anyhow::Result<()> {
    println!(
        "{}",
        json!({
            "workload": name,
            "ops": ok,
            "failed": failed,
            "seconds": seconds,
            "ports": ok + others,
        })
    );
    Ok(())
}

/// Listeners that never accept (connections wait in their queues), and worker processes
/// that connect and hold; prints `{"held": N}` once all are established, then holds until
/// stdin closes.
fn hold(connections: usize, destinations: usize) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for _ in 0..destinations.max(1) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        // The kernel caps it at net.core.somaxconn (4096 by default).
        socket.listen(65_535)?;
        listeners.push(TcpListener::from(socket));
    }
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut left = connections;
    while left > 0 {
        let share = left.min(PER_PROCESS);
        left -= share;
        let child = Command::new(&exe)
            .args(["hold-worker", "--ports", &ports.join(",")])
            .arg(format!("--connections={share}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a hold worker")?;
        workers.push(child);
    }
    let mut held = 0;
    for worker in &mut workers {
        let stdout = worker.stdout.take().context("worker stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        held += line.trim().parse::<usize>().unwrap_or(0);
    }
    println!("{}", json!({"workload": "hold", "held": held}));
    std::io::stdout().flush()?;
    // Hold until whoever started us closes our stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    for mut worker in workers {
        drop(worker.stdin.take());
        let _ = worker.wait();
    }
    if held < connections {
        bail!("held {held} of {connections} connections");
    }
    Ok(())
}

fn hold_worker(ports: &[u16], connections: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let port = ports[i % ports.len()];
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(stream) => held.push(stream),
            Err(err) => {
                eprintln!("churn: connection {i} to port {port}: {err}");
                break;
            }
        }
    }
    println!("{}", held.len());
    std::io::stdout().flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
