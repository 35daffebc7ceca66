//! A port released by an active close is held through TIME_WAIT: port-trace reports the
//! release only when the TIME_WAIT socket is gone (about 60 s), with `time_wait_ns`, and `ss`
//! (the real peer) agrees the port was in TIME-WAIT meanwhile. This test takes about a
//! minute.

mod common;

use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, ours, skip_unless_root};

fn ss_time_wait(port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-tanH", "state", "time-wait"])
        .arg(format!("sport = :{port}"))
        .output()
        .expect("ss (iproute2) runs");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn time_wait_is_part_of_the_lifetime() {
    if skip_unless_root("time_wait_is_part_of_the_lifetime") {
        return;
    }
    let tracer = Tracer::start(&[]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let started = Instant::now();
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let port = client.local_addr().expect("getsockname").port();
    let (mut accepted, _) = listener.accept().expect("accept");
    sleep(Duration::from_millis(100));
    // We close first (active close), then the peer: our side ends in TIME_WAIT.
    drop(client);
    let mut rest = Vec::new();
    accepted.read_to_end(&mut rest).expect("peer sees our FIN");
    drop(accepted);
    let closed = Instant::now();
    sleep(Duration::from_millis(500));
    assert!(
        ss_time_wait(port),
        "ss should list port {port} in TIME-WAIT"
    );

    // Until TIME_WAIT ends (60 s, plus up to a second of polling) there is no release.
    let deadline = closed + Duration::from_secs(75);
    while ss_time_wait(port) && Instant::now() < deadline {
        sleep(Duration::from_millis(250));
    }
    let gone = closed.elapsed();
    assert!(!ss_time_wait(port), "TIME_WAIT never ended");
    sleep(Duration::from_millis(1_500));
    let (events, _) = tracer.stop();

    let release: Vec<_> = ours(&events, "release")
        .into_iter()
        .filter(|r| r["port"].as_u64() == Some(u64::from(port)) && r["kind"] == "connect")
        .collect();
    assert_eq!(release.len(), 1, "{events:?}");
    let tw = Duration::from_nanos(release[0]["time_wait_ns"].as_u64().expect("time_wait_ns"));
    let lifetime = Duration::from_nanos(release[0]["lifetime_ns"].as_u64().expect("lifetime"));
    assert!(
        tw.abs_diff(gone) <= Duration::from_millis(1_500),
        "TIME_WAIT {tw:?} vs ss {gone:?}"
    );
    assert!(tw >= Duration::from_secs(55), "TIME_WAIT {tw:?}");
    let held = closed.duration_since(started);
    assert!(
        lifetime.abs_diff(held + tw) <= Duration::from_millis(100),
        "lifetime {lifetime:?} = held {held:?} + TIME_WAIT {tw:?}"
    );
}
