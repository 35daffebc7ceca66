//! `--hdr-log`: the lifetimes of a real trace, read back with HdrHistogram's own interval
//! log parser, add up to the releases port-trace reported.

mod common;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    thread::sleep,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{Tracer, skip_unless_root};
use hdrhistogram::{
    Histogram,
    serialization::{
        Deserializer,
        interval_log::{IntervalLogIterator, LogEntry},
    },
};

#[test]
fn interval_logs_hold_every_release() {
    if skip_unless_root("interval_logs_hold_every_release") {
        return;
    }
    let log = std::env::temp_dir().join(format!("port-trace-{}.hlog", std::process::id()));
    let path = log.to_string_lossy().into_owned();
    let tracer = Tracer::start(&["--hdr-log", &path, "--interval", "1s"]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let target = listener.local_addr().expect("addr");
    // Two intervals' worth of short connections.
    for _ in 0..2 {
        for _ in 0..5 {
            let client = TcpStream::connect(target).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            // RST: the port is free at once, not after 60 s of TIME_WAIT.
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER");
            drop((client, server));
        }
        sleep(Duration::from_millis(1_100));
    }
    drop(listener);
    sleep(Duration::from_millis(200));
    let (_, report) = tracer.stop();

    let bytes = std::fs::read(&log).expect("the log was written");
    let _ = std::fs::remove_file(&log);
    let (mut all, mut tcp, mut intervals) = (0u64, 0u64, 0);
    for entry in IntervalLogIterator::new(&bytes) {
        let Ok(LogEntry::Interval(interval)) = entry else {
            continue;
        };
        let decoded = STANDARD
            .decode(interval.encoded_histogram())
            .expect("base64");
        let histogram: Histogram<u64> = Deserializer::new()
            .deserialize(&mut decoded.as_slice())
            .expect("a histogram");
        match interval.tag().map(|t| t.as_str().to_string()).as_deref() {
            None => {
                all += histogram.len();
                intervals += 1;
            }
            Some("tcp") => tcp += histogram.len(),
            Some(_) => {}
        }
    }
    let released = report["lifetime_ns"]["all"]["count"]
        .as_u64()
        .expect("count");
    assert!(released >= 10, "{report}");
    assert_eq!(all, released, "every release is in the log");
    assert_eq!(
        tcp,
        report["lifetime_ns"]["by_proto"]["tcp"]["count"]
            .as_u64()
            .unwrap_or(0)
    );
    assert!(intervals >= 2, "one histogram per interval: {intervals}");
}
