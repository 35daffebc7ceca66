//! Held ports heal: with the smallest ring buffer (4 KiB) heavy churn loses releases, and
//! each lost release would leave its port "held" for good. Reconciliation against the
//! kernel's sockets (`--reconcile-every`, and at once after a loss) must bring the count back
//! to the truth once the churn stops, without freeing a port that still has a socket: an
//! open connection, a bind(0) TCP socket never connected, a bound UDP socket, a listener
//! without bind, and ports in TIME_WAIT all stay held.
//!
//! Traced with `--netns` on a namespace of the test's own, so other processes' sockets on
//! this machine are not counted.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

use common::{Netns, Tracer, skip_unless_root};

const LISTEN_PORT: u16 = 5_000;
const RANGE: (u16, u16) = (20_000, 60_000);

/// What the kernel says is held: `ss`'s ports, and the bound-only TCP socket (port
/// `bound`) that older iproute2 cannot list (the kernel lists it to port-trace from 6.9).
fn truth(netns: &Netns, bound: u16) -> usize {
    let ports = netns.ss_ports(RANGE.0..=RANGE.1);
    ports.len() + usize::from(!ports.contains(&bound))
}

fn rst_close(stream: TcpStream) {
    // SO_LINGER 0: closed by RST, no TIME_WAIT left behind.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a value of the size it names.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
}

/// A TCP socket bound to port 0 and left there (no connect, no listen), and its port.
fn bound_only() -> (i32, u16) {
    // SAFETY: plain socket(2) and bind(2) on a sockaddr_in of the size given; the fd is
    // closed by the caller.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let bound = libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(bound, 0, "bind(0): {}", std::io::Error::last_os_error());
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
        (fd, u16::from_be(addr.sin_port))
    }
}

#[test]
fn held_ports_return_to_the_kernels_count_after_loss() {
    if skip_unless_root("held_ports_return_to_the_kernels_count_after_loss") {
        return;
    }
    let netns = Arc::new(Netns::new());
    netns.sysctl(
        "net/ipv4/ip_local_port_range",
        &format!("{} {}", RANGE.0, RANGE.1),
    );
    let inode = netns.inode().to_string();
    let tracer = Tracer::start(&[
        "--netns",
        &inode,
        "--ring-buffer-kib",
        "4",
        "--reconcile-every",
        "2s",
    ]);

    // The sockets that stay, opened before the churn.
    let (kept_tx, kept_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let keeper = {
        let netns = netns.clone();
        thread::spawn(move || {
            netns.enter();
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, LISTEN_PORT)).expect("listen");
            let addr = listener.local_addr().expect("addr");
            let open: Vec<(TcpStream, TcpStream)> = (0..10)
                .map(|_| {
                    let client = TcpStream::connect(addr).expect("connect");
                    (client, listener.accept().expect("accept").0)
                })
                .collect();
            // Closed actively: TIME_WAIT for 60 s, longer than the test.
            for _ in 0..5 {
                let client = TcpStream::connect(addr).expect("connect");
                let (mut accepted, _) = listener.accept().expect("accept");
                drop(client);
                accepted
                    .read_to_end(&mut Vec::new())
                    .expect("peer sees FIN");
            }
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp bind(0)");
            let (bound, bound_port) = bound_only();
            // listen() without bind: the kernel picks the port.
            // SAFETY: socket(2) and listen(2); closed below.
            let auto_listener = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                assert_eq!(libc::listen(fd, 1), 0);
                fd
            };
            kept_tx.send(bound_port).expect("main thread waits");
            let _ = done_rx.recv();
            drop((open, udp, listener));
            // SAFETY: closing fds this thread opened.
            unsafe {
                libc::close(bound);
                libc::close(auto_listener);
            }
        })
    };
    let bound_port = kept_rx.recv().expect("kept sockets open");

    // Churn against a listener of its own, accepted and dropped as fast as it comes.
    let stop = Arc::new(AtomicBool::new(false));
    let (churn_tx, churn_rx) = std::sync::mpsc::channel();
    let acceptor = {
        let (netns, stop) = (netns.clone(), stop.clone());
        thread::spawn(move || {
            netns.enter();
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, LISTEN_PORT + 1)).expect("listen");
            listener.set_nonblocking(true).expect("nonblocking");
            churn_tx
                .send(listener.local_addr().expect("addr"))
                .expect("main waits");
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((accepted, _)) => drop(accepted),
                    Err(_) => sleep(Duration::from_micros(200)),
                }
            }
        })
    };
    let churn_addr: SocketAddr = churn_rx.recv().expect("churn listener");
    // Connect + RST close (TCP) and bind + send + close (UDP), as fast as it goes.
    let churners: Vec<_> = (0..3)
        .map(|i| {
            let (netns, stop) = (netns.clone(), stop.clone());
            thread::spawn(move || {
                netns.enter();
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if i == 2 {
                        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
                        let _ = udp.send_to(b"x", (Ipv4Addr::LOCALHOST, 9));
                    } else if let Ok(mut client) = TcpStream::connect(churn_addr) {
                        let _ = client.write_all(b"x");
                        rst_close(client);
                    }
                    ops += 1;
                }
                ops
            })
        })
        .collect();
    sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = churners
        .into_iter()
        .map(|t| t.join().expect("churner"))
        .sum();
    acceptor.join().expect("acceptor");

    // Reconciliation: the period (2 s), two looks 2 s apart, a second's margin.
    let deadline = Instant::now() + Duration::from_secs(12);
    sleep(Duration::from_secs(8));
    let kernel = truth(&netns, bound_port);
    while Instant::now() < deadline {
        sleep(Duration::from_millis(500));
    }
    let kernel_at_end = truth(&netns, bound_port);
    let (_, report) = tracer.stop();
    done_tx.send(()).expect("keeper waits");
    keeper.join().expect("keeper");

    let lost = report["totals"]["lost"].as_u64().expect("lost");
    assert!(
        lost > 0,
        "{ops} churn operations lost nothing with a 4 KiB ring: the test proves nothing"
    );
    assert_eq!(kernel, kernel_at_end, "the kept sockets did not change");
    assert_eq!(
        report["held_at_exit"].as_u64(),
        Some(kernel as u64),
        "held at exit vs the kernel's {kernel} sockets in the range ({lost} events lost, \
         {} reconciled): {}",
        report["totals"]["reconciled"],
        report["totals"]
    );
    assert!(
        report["totals"]["reconciled"].as_u64() > Some(0),
        "{}",
        report["totals"]
    );
}
