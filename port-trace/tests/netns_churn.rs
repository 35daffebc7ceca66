//! Short-lived network namespaces (one per pod on a container host) must cost port-trace
//! nothing once they are gone: the TIME_WAIT watcher opens a sock_diag socket in each
//! namespace with a port in TIME_WAIT, and that socket keeps the namespace alive in the
//! kernel, so it must be closed when the namespace is deleted (or has nothing parked).

mod common;

use std::{
    fs::File,
    io::Read,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Tracer, ip, skip_unless_root};

const NAMESPACES: usize = 40;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// In namespace `name` (a thread that enters it): one loopback connection closed actively,
/// so its port sits in TIME_WAIT there.
fn time_wait_in(name: &str) {
    let ns = File::open(format!("/run/netns/{name}")).expect("named netns");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns for this thread only, on a namespace fd we hold.
                let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
                let client =
                    TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
                let (mut accepted, _) = listener.accept().expect("accept");
                drop(client); // active close: TIME_WAIT on the client's side
                accepted
                    .read_to_end(&mut Vec::new())
                    .expect("peer sees our FIN");
            })
            .join()
            .expect("netns thread");
    });
}

#[test]
fn deleted_namespaces_cost_no_file_descriptors() {
    if skip_unless_root("deleted_namespaces_cost_no_file_descriptors") {
        return;
    }
    let tracer = Tracer::start(&[]);
    sleep(Duration::from_millis(1_500));
    let baseline = open_fds(tracer.pid());
    let names: Vec<String> = (0..NAMESPACES)
        .map(|i| format!("pt-churn-{}-{i}", std::process::id()))
        .collect();
    for name in &names {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        time_wait_in(name);
    }
    // The watcher looks at each parked port at its first poll (once a second): by then it
    // has a socket in every namespace.
    sleep(Duration::from_millis(2_500));
    let watching = open_fds(tracer.pid());
    for name in &names {
        ip(&["netns", "delete", name]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = open_fds(tracer.pid());
    while now > baseline && Instant::now() < deadline {
        sleep(Duration::from_millis(250));
        now = open_fds(tracer.pid());
    }
    let (_, report) = tracer.stop();
    assert!(
        now <= baseline,
        "port-trace had {baseline} fds, {watching} while watching {NAMESPACES} namespaces, \
         and still {now} after they were deleted"
    );
    // Their ports went with them: nothing is left held.
    assert_eq!(report["held_at_exit"], 0, "{report}");
}
