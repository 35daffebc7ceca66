//! Short-lived network namespaces (one per pod on a container host) must cost port-trace
//! nothing once they are gone: the TIME_WAIT watcher opens a sock_diag socket in each
//! namespace with a port in TIME_WAIT, and that socket keeps the namespace alive in the
//! kernel, so it must be closed when the namespace is gone (or has nothing parked).

mod common;

use std::{
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Netns, Tracer, skip_unless_root};

const NAMESPACES: usize = 40;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// One loopback connection closed actively, so its port sits in TIME_WAIT here.
fn time_wait_here() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut accepted, _) = listener.accept().expect("accept");
    drop(client); // active close: TIME_WAIT on the client's side
    accepted
        .read_to_end(&mut Vec::new())
        .expect("peer sees our FIN");
}

#[test]
fn namespaces_that_are_gone_cost_no_file_descriptors() {
    if skip_unless_root("namespaces_that_are_gone_cost_no_file_descriptors") {
        return;
    }
    let tracer = Tracer::start(&[]);
    if tracer.ready["backend"] == "kprobe" {
        // The kprobe backend sees a TIME_WAIT socket's end in the kernel (inet_twsk_kill):
        // no watcher, so no namespace socket to leak.
        eprintln!("skipped: the kprobe backend has no TIME_WAIT watcher");
        return;
    }
    sleep(Duration::from_millis(1_500));
    let baseline = open_fds(tracer.pid());
    // Each with a thread in it (how the watcher finds a namespace) until it is dropped.
    let namespaces: Vec<Netns> = (0..NAMESPACES)
        .map(|_| {
            let netns = Netns::new();
            netns.run(time_wait_here);
            netns
        })
        .collect();
    // The watcher looks at each parked port at its first poll (once a second): by then it
    // has a socket in every namespace.
    sleep(Duration::from_millis(2_500));
    let watching = open_fds(tracer.pid());
    let inodes: Vec<u64> = namespaces.iter().map(Netns::inode).collect();
    // Gone: no thread in them, no fd for them.
    drop(namespaces);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = open_fds(tracer.pid());
    while now > baseline && Instant::now() < deadline {
        sleep(Duration::from_millis(250));
        now = open_fds(tracer.pid());
    }
    let (_, report) = tracer.stop();
    assert!(
        watching > baseline,
        "the watcher opened no socket in the {NAMESPACES} namespaces: the test proves nothing"
    );
    assert!(
        now <= baseline,
        "port-trace had {baseline} fds, {watching} while watching {NAMESPACES} namespaces, \
         and still {now} after they were gone"
    );
    // Their ports went with them: no scope of theirs holds anything.
    for scope in report["scopes"].as_array().expect("scopes") {
        assert!(
            !inodes.contains(&scope["netns"].as_u64().unwrap_or(0)),
            "a namespace that is gone still holds ports: {scope}"
        );
    }
}
