//! The metrics endpoint under abuse, against the real binary and real sockets: idle
//! connections cost neither memory nor file descriptors, running out of file descriptors
//! does not spin, concurrent scrapers all get the page, and the page is rendered after the
//! request is read (so it is of that moment); `/healthz` answers while the trace loop runs
//! and not while it is stopped.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::Stdio,
    sync::{Arc, Barrier},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, http_get, skip_unless_root};

/// Fills the metrics page as a busy host would: 20 processes (threads of that many names)
/// connect in `netns`, so lifetime histograms have a series for each.
fn fill_the_page(netns: &Netns) {
    std::thread::scope(|scope| {
        for i in 0..20 {
            std::thread::Builder::new()
                .name(format!("pt-series-{i}"))
                .spawn_scoped(scope, || {
                    netns.enter();
                    for _ in 0..5 {
                        let listener =
                            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
                        let client = TcpStream::connect(listener.local_addr().expect("addr"))
                            .expect("connect");
                        // Reset, not closed: the port is released at once, no TIME_WAIT.
                        socket2::SockRef::from(&client)
                            .set_linger(Some(Duration::ZERO))
                            .expect("SO_LINGER");
                    }
                })
                .expect("a thread");
        }
    });
}

/// A tracer serving metrics on a loopback port (with `extra` arguments), and that address.
fn tracer_with_metrics(stderr: Stdio, extra: &[&str]) -> (Tracer, String) {
    let mut args = vec!["--prometheus", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let tracer = Tracer::start_with_stderr(&args, stderr);
    let addr = tracer.ready["prometheus"]
        .as_str()
        .expect("ready names the metrics address")
        .to_string();
    (tracer, addr)
}

/// `pid`'s CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // After the command name (which may hold spaces), fields 14 and 15 are utime and stime.
    let after_comm = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// `pid`'s resident memory in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// `count` connections to `addr` that never send a request (some may have been closed by
/// the other end: they are still connections it had to deal with).
fn idle_connections(addr: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect()
}

/// The value of the sample named exactly `name` (no labels) in a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A metrics page as Prometheus would accept it: HELP/TYPE comments and samples, ending in
/// a newline, with the build info.
fn assert_valid_page(page: &str) {
    assert!(page.ends_with('\n'), "page ends mid-line: {page}");
    assert_eq!(
        sample(page, "port_trace_build_info"),
        None,
        "build_info has labels"
    );
    assert!(
        page.lines()
            .any(|l| l.starts_with("port_trace_build_info{") && l.ends_with(" 1")),
        "{page}"
    );
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line:?}");
    }
}

/// A scrape that must answer within `within`, retrying while the server is not ready.
fn scrape_within(addr: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        match http_get(addr, "/metrics") {
            Ok((200, page)) => return page,
            other if Instant::now() > deadline => panic!("no scrape within {within:?}: {other:?}"),
            _ => sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn out_of_file_descriptors_backs_off_instead_of_spinning() {
    if skip_unless_root("out_of_file_descriptors_backs_off_instead_of_spinning") {
        return;
    }
    let log = std::env::temp_dir().join(format!("port-trace-emfile-{}.log", std::process::id()));
    let stderr = std::fs::File::create(&log).expect("log file");
    // A network namespace where nothing happens: a tracer told to trace only it
    // (`--netns`, filtered in the kernel) does no work for the rest of the host, so its CPU
    // time and memory are what the metrics endpoint costs.
    let quiet = Netns::new();
    let (tracer, addr) = tracer_with_metrics(
        Stdio::from(stderr),
        &["--netns", &quiet.inode().to_string()],
    );
    let pid = tracer.pid();
    scrape_within(&addr, Duration::from_secs(10));

    // Room for a few connections only (fewer than the connection cap): then accept() fails
    // with EMFILE while connections wait in the backlog, which stays readable.
    let limit = (open_fds(pid) + 8) as libc::rlim_t;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit on our own child, with a valid rlimit and no old-value pointer.
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());

    // Well within the listen backlog, so every connect completes.
    let idle = idle_connections(&addr, 60);
    sleep(Duration::from_millis(500));
    let cpu_before = cpu_time(pid);
    let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu_before;
    let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) - log_before;
    eprintln!("out of fds for 3 s: {cpu:?} of CPU, {logged} bytes logged");
    assert!(
        cpu < Duration::from_millis(300),
        "out of fds, the tracer used {cpu:?} of CPU in 3 s"
    );
    assert!(
        logged < 1024,
        "out of fds, the tracer logged {logged} bytes in 3 s"
    );
    let text = std::fs::read_to_string(&log).expect("the log");
    let warnings = text.matches("accepting a metrics connection").count();
    assert!(
        (1..=2).contains(&warnings),
        "one warning, then quiet: {warnings} in\n{text}"
    );

    // Once the connections are gone, scrapes are answered again.
    drop(idle);
    let page = scrape_within(&addr, Duration::from_secs(10));
    assert_valid_page(&page);
    tracer.stop();
    let _ = std::fs::remove_file(&log);
}

#[test]
fn idle_connections_cost_neither_memory_nor_the_real_scrape() {
    if skip_unless_root("idle_connections_cost_neither_memory_nor_the_real_scrape") {
        return;
    }
    // A network namespace where nothing happens: a tracer told to trace only it
    // (`--netns`, filtered in the kernel) does no work for the rest of the host, so its CPU
    // time and memory are what the metrics endpoint costs.
    let quiet = Netns::new();
    let (tracer, addr) =
        tracer_with_metrics(Stdio::inherit(), &["--netns", &quiet.inode().to_string()]);
    let pid = tracer.pid();
    fill_the_page(&quiet);
    // Rendered once, so what follows is what idle connections add.
    let page = scrape_within(&addr, Duration::from_secs(10));
    assert!(
        page.contains("process=\"pt-series-19\""),
        "the page has every process's series:\n{page}"
    );
    sleep(Duration::from_millis(200));
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);

    let idle = idle_connections(&addr, 900);
    sleep(Duration::from_secs(1));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    let fds = open_fds(pid);
    // Evicting an idle one to make room: the real scrape is answered while they are open.
    let started = Instant::now();
    let (status, page) = http_get(&addr, "/metrics").expect("a scrape");
    let took = started.elapsed();
    eprintln!(
        "900 idle connections ({} KiB page): RSS +{grown} KiB, {} more fds; a scrape took \
         {took:?}",
        page.len() / 1024,
        fds.saturating_sub(fds_before)
    );
    assert!(
        grown < 8 * 1024,
        "900 idle connections grew the tracer's RSS by {grown} KiB"
    );
    assert!(
        fds < fds_before + 100,
        "900 idle connections hold {} fds",
        fds - fds_before
    );
    assert_eq!(status, 200, "{page}");
    assert!(took < Duration::from_secs(3), "the scrape took {took:?}");
    assert_valid_page(&page);
    let refused =
        sample(&page, "port_trace_metrics_connections_refused_total").expect("the refused counter");
    assert!(
        refused >= (900 - 64) as f64,
        "connections beyond the cap are counted: {refused}"
    );
    drop(idle);
    tracer.stop();
}

#[test]
fn concurrent_scrapers_all_get_the_page() {
    if skip_unless_root("concurrent_scrapers_all_get_the_page") {
        return;
    }
    let (tracer, addr) = tracer_with_metrics(Stdio::inherit(), &[]);
    scrape_within(&addr, Duration::from_secs(10));
    const SCRAPERS: usize = 32;
    for round in 0..3 {
        let start = Arc::new(Barrier::new(SCRAPERS));
        let scrapers: Vec<_> = (0..SCRAPERS)
            .map(|_| {
                let (addr, start) = (addr.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    http_get(&addr, "/metrics")
                })
            })
            .collect();
        for (i, scraper) in scrapers.into_iter().enumerate() {
            let (status, page) = scraper
                .join()
                .expect("the scraper")
                .unwrap_or_else(|e| panic!("round {round}, scraper {i}: {e}"));
            assert_eq!(status, 200, "round {round}, scraper {i}: {page}");
            assert_valid_page(&page);
        }
    }
    tracer.stop();
}

#[test]
fn the_page_is_rendered_after_the_request_is_read() {
    if skip_unless_root("the_page_is_rendered_after_the_request_is_read") {
        return;
    }
    const LATE: &str = "pt-late";
    let (tracer, addr) = tracer_with_metrics(Stdio::inherit(), &["--comm", LATE]);
    scrape_within(&addr, Duration::from_secs(10));

    // Connected (and accepted) first; the port is allocated after; the request comes last.
    let mut scraper = TcpStream::connect(&addr).expect("connect");
    sleep(Duration::from_millis(300));
    std::thread::Builder::new()
        .name(LATE.to_string())
        .spawn(|| {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
            let _client =
                TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        })
        .expect("a thread")
        .join()
        .expect("the connect was made");
    write!(scraper, "GET /metrics HTTP/1.0\r\n\r\n").expect("request");
    scraper
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reply = String::new();
    scraper.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply
            .lines()
            .any(|l| l.starts_with("port_trace_allocations_total{")
                && l.contains(&format!("process=\"{LATE}\""))
                && l.contains("kind=\"connect\"")),
        "the connect made before the request is in the page:\n{reply}"
    );
    tracer.stop();
}

/// `GET path` with a read timeout of `within`: the status and body, or the error (a timeout
/// when nobody answers).
fn get_within(addr: &str, path: &str, within: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(within))?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

#[test]
fn healthz_answers_while_the_trace_loop_runs_and_only_then() {
    if skip_unless_root("healthz_answers_while_the_trace_loop_runs_and_only_then") {
        return;
    }
    let (tracer, addr) = tracer_with_metrics(Stdio::inherit(), &[]);
    let (status, body) =
        get_within(&addr, "/healthz", Duration::from_secs(10)).expect("/healthz answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A stopped loop (SIGSTOP: what a hang looks like from outside) answers no probe: the
    // connection waits in the kernel's backlog and the probe times out.
    let pid = tracer.pid() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stalled = get_within(&addr, "/healthz", Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        stalled.is_err(),
        "a stopped tracer answered the probe: {stalled:?}"
    );
    let (status, _) =
        get_within(&addr, "/healthz", Duration::from_secs(10)).expect("answers again");
    assert_eq!(status, 200);
    tracer.stop();
}
