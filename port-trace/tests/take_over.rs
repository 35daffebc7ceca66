//! `tcp_tw_reuse` take-over churn: many short connections to a few destinations, closed
//! actively, in a port range small enough that new connects take over TIME_WAIT connections
//! all the time. Every port port-trace holds must be one the kernel holds (TIME_WAIT
//! included) once the churn stops.
//!
//! What leaked here (about 1 connection in 2,000-13,000): loopback delivers packets in
//! softirq, which can run inside our `tcp_state` program on the same CPU (an interrupt while
//! a thread's own state change is being traced); the kernel does not nest tracing programs,
//! so the other sockets' transitions traced by that softirq are skipped, their CLOSE among
//! them, and no release is ever sent. The kernel counts those skipped runs
//! (`recursion_misses`); port-trace now counts them as lost (`program_skipped`), and a loss
//! makes it reconcile at once, which frees the ports with no socket left. (A skipped run can
//! also be a connect's first state change, and then that connection is never tracked: an
//! allocation lost and counted, which reconciliation, releasing only, does not add back.)
//!
//! The kprobe backend loses the same nested runs, at the kprobe itself (in the VM matrix,
//! 1-2% of closes): a socket's hashdance and put_port both unseen. The kernel counts them for
//! the kprobe events port-trace makes (`kprobe_profile`), and port-trace counts them as lost.
//! Two things then went wrong. Its entry in the programs' table (keyed by the socket's
//! address) outlived it, and the next socket at that address, an accepted one closing,
//! released the stale entry's port while its TIME_WAIT socket still held it (held below the
//! kernel's count; the entry must now name the socket's own ports). And reconciliation,
//! which on that backend matches by connection, found every stale port "present": under
//! this churn every connection of the range is in use again at once, by the newer socket
//! that took it over (held above the kernel's count, "reconciled 0"; an older claim on a
//! connection is now stale).
//!
//! And on Debian 11's 5.10 the kprobe backend never reported a few allocations (1 to 12 of
//! 5,000-7,000 connections), counted nowhere: a kretprobe tracks only so many calls at once,
//! by default one per CPU on a kernel without full preemption, and more threads than CPUs
//! were inside `__inet_hash_connect` (its port search yields between ports), so a connect's
//! return went unseen. Its kretprobes now track 256 calls at once (2 per CPU where that is
//! more).

mod common;

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, sleep},
    time::Duration,
};

use common::{Netns, Tracer, skip_unless_root};

const RANGE: (u16, u16) = (40_000, 41_999);
const DESTINATIONS: u16 = 3;

#[test]
fn take_over_churn_holds_no_port_without_a_socket() {
    if skip_unless_root("take_over_churn_holds_no_port_without_a_socket") {
        return;
    }
    let netns = Arc::new(Netns::new());
    netns.sysctl("net/ipv4/tcp_tw_reuse", "1");
    netns.sysctl(
        "net/ipv4/ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    // Reconciliation every 2 s, not 30: a leak late in the churn, after the last loss, is
    // found by the periodic look, and the test need not wait half a minute for it.
    let mut tracer = Tracer::start(&[
        "--netns",
        &netns.inode().to_string(),
        "--reconcile-every",
        "2s",
    ]);

    let stop = Arc::new(AtomicBool::new(false));
    // Servers: accept, read to the client's FIN, close (a passive close: no TIME_WAIT here).
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let servers: Vec<_> = (0..DESTINATIONS)
        .map(|i| {
            let (netns, stop, addr_tx) = (netns.clone(), stop.clone(), addr_tx.clone());
            thread::spawn(move || {
                netns.enter();
                let listener =
                    TcpListener::bind((Ipv4Addr::LOCALHOST, 5_000 + i)).expect("listener");
                listener.set_nonblocking(true).expect("nonblocking");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("main waits");
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut accepted, _)) => {
                            let _ = accepted.set_nonblocking(false);
                            let _ = accepted.set_read_timeout(Some(Duration::from_secs(1)));
                            let _ = accepted.read_to_end(&mut Vec::new());
                        }
                        Err(_) => sleep(Duration::from_micros(100)),
                    }
                }
            })
        })
        .collect();
    let destinations: Vec<SocketAddr> = (0..DESTINATIONS)
        .map(|_| addr_rx.recv().expect("listener up"))
        .collect();
    // Clients: connect and close at once (the active close: TIME_WAIT on this side).
    let connections = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let (netns, stop, connections) = (netns.clone(), stop.clone(), connections.clone());
            let destinations = destinations.clone();
            thread::spawn(move || {
                netns.enter();
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect(destinations[i % destinations.len()]) {
                        Ok(client) => {
                            drop(client);
                            connections.fetch_add(1, Ordering::Relaxed);
                        }
                        // The range is full for now (TIME_WAIT younger than a second).
                        Err(_) => sleep(Duration::from_millis(1)),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Under emulation (the VM matrix) half as long: its ~5,000 connections still show the
    // kprobe backend's unseen closes by the hundred, and the daemon's catch-up after the
    // churn (the debug build, emulated) takes half as long too.
    sleep(Duration::from_secs(if common::in_vm() { 4 } else { 8 }));
    stop.store(true, Ordering::Relaxed);
    for thread in clients.into_iter().chain(servers) {
        thread.join().expect("churn thread");
    }
    // The daemon catches up with the churn's events (here at once; under emulation, the
    // debug build takes tens of seconds for the 30,000 of the VM matrix, and no look is
    // made while it drains), then reconciliation (a look within 2 s, a confirming one 2 s later, for ports
    // at least 1 s old): 7 s here, and time to spare for the VM matrix, where a dump of
    // thousands of TIME_WAIT sockets under emulation takes seconds.
    tracer.wait_until_quiet(Duration::from_secs(2), Duration::from_secs(120));
    sleep(Duration::from_secs(12));
    let kernel = netns.ss_ports(RANGE.0..=RANGE.1).len();
    let kernel_connections = netns.run(|| {
        std::process::Command::new("ss")
            .arg("-tanoH")
            .output()
            .expect("ss runs")
    });
    let ss_at_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (events, report) = tracer.stop();
    eprintln!(
        "{}",
        differences(
            &String::from_utf8_lossy(&kernel_connections.stdout),
            &events,
            ss_at_ns
        )
    );
    let connections = connections.load(Ordering::Relaxed);
    // Here (2 cores, native) the churn makes 20,000+ connections, enough to see the leak
    // (about 1 in 13,000); under emulation (the VM matrix) it makes fewer, and the check
    // below still holds them to the kernel's count.
    assert!(
        connections > 1_000,
        "only {connections} connections: the churn did not run"
    );
    if connections < 10_000 {
        eprintln!("note: {connections} connections: a take-over leak may not show in so few");
    }
    // Every connect that succeeded was reported, but for what a full ring or table lost: a
    // connect's programs run in its own thread, where no run is skipped for nesting. (On
    // Debian 11's 5.10, 1 to 12 were missing here while its kretprobes tracked one call per
    // CPU at once.)
    let counted = |reason: &str| report["lost"][reason].as_u64().expect("lost count");
    let alloc = report["totals"]["alloc"].as_u64().expect("alloc total");
    assert!(
        alloc + counted("ring_buffer_full") + counted("socket_table_full") >= connections,
        "{alloc} allocations reported for {connections} connections; lost {}",
        report["lost"]
    );
    let held = report["held_at_exit"].as_u64().expect("held_at_exit") as usize;
    let skipped = counted("program_skipped") as usize;
    let context = format!(
        "held at exit {held} vs the kernel's {kernel} sockets (TIME_WAIT) after {connections} \
         connections; lost {}, totals {}",
        report["lost"], report["totals"]
    );
    eprintln!("{context}");
    // No port held without a socket: every lost release was reconciled. (The leak this
    // test found showed as held above the kernel's count: 6008 against 5992.)
    assert!(held <= kernel, "{context}");
    // Short of the kernel's count only by what was counted lost: a skipped run can be a
    // connect's first state change, and a full ring (a daemon behind a fast churn) loses
    // allocations too; reconciliation only releases, so those stay untracked.
    let lost_allocations_at_most = skipped + counted("ring_buffer_full") as usize;
    assert!(kernel - held <= lost_allocations_at_most, "{context}");
}

/// Where the daemon's events and the kernel's sockets disagree, connection by connection
/// (local port, remote port): a failure's evidence.
fn differences(ss: &str, events: &[serde_json::Value], ss_at_ns: u64) -> String {
    use std::collections::BTreeMap;
    let mut kernel: BTreeMap<(u16, u16), String> = BTreeMap::new();
    for line in ss.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let port = |i: usize| words.get(i)?.rsplit(':').next()?.parse::<u16>().ok();
        if let (Some(state), Some(local), Some(remote)) = (words.first(), port(3), port(4))
            && (RANGE.0..=RANGE.1).contains(&local)
        {
            // TIME_WAIT's timer (`timer:(timewait,52sec,0)`): when it began, before `ss`.
            let began = line
                .split("timewait,")
                .nth(1)
                .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse::<u64>().ok())
                .map(|left| format!(" began -{}s", 60u64.saturating_sub(left)))
                .unwrap_or_default();
            kernel.insert((local, remote), format!("{state}{began}"));
        }
    }
    let mut history: BTreeMap<(u16, u16), Vec<String>> = BTreeMap::new();
    for e in events {
        let (Some(port), Some(rport)) = (e["port"].as_u64(), e["rport"].as_u64()) else {
            continue;
        };
        let ago = ss_at_ns.saturating_sub(e["ts_ns"].as_u64().unwrap_or(0)) / 100_000_000;
        let mut what = format!(
            "{}#{}@-{}.{}s",
            e["type"].as_str().unwrap_or("?"),
            e["cookie"].as_u64().unwrap_or(0) % 10_000,
            ago / 10,
            ago % 10
        );
        if e["type"] == "release" && e["lifetime_ns"].is_null() {
            what.push_str("(unmatched)");
        }
        if let Some(tw) = e["time_wait_ns"].as_u64() {
            what.push_str(&format!("(tw {}ms)", tw / 1_000_000));
        }
        history
            .entry((port as u16, rport as u16))
            .or_default()
            .push(what);
    }
    // Held: allocated, or parked in TIME_WAIT until its release.
    let open = |h: &Vec<String>| {
        h.last()
            .is_some_and(|w| w.starts_with("alloc") || w.starts_with("time_wait"))
    };
    let (mut untracked, mut released, mut stale) = (Vec::new(), Vec::new(), Vec::new());
    for (tuple, state) in &kernel {
        match history.get(tuple) {
            None => untracked.push(format!("{tuple:?} {state}")),
            Some(h) if !open(h) => released.push(format!("{tuple:?} {state}: {}", h.join(" "))),
            Some(_) => {}
        }
    }
    for (tuple, h) in &history {
        if open(h) && !kernel.contains_key(tuple) {
            stale.push(format!("{tuple:?}: {}", h.join(" ")));
        }
    }
    let show = |v: &Vec<String>| v.iter().take(6).cloned().collect::<Vec<_>>().join("; ");
    format!(
        "kernel sockets never allocated in events: {} [{}]\n\
         kernel sockets whose events end released: {} [{}]\n\
         connections open in events with no socket: {} [{}]",
        untracked.len(),
        show(&untracked),
        released.len(),
        show(&released),
        stale.len(),
        show(&stale)
    )
}
