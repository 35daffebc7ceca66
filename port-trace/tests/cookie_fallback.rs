//! The tracepoint backend's stand-in for kernels whose tp_btf programs cannot take a socket's
//! cookie (5.10): `tcp_state_stored_cookie` reads the cookie `tcp_cookie` made when the socket
//! was created. `--fallback-programs` attaches them here as a 5.10 kernel would, so every
//! kernel tests them; the 5.10 VM run attaches them because the kernel refuses `tcp_state`.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use common::{Tracer, backend_args, local_port, ours, rst_close, skip_unless_root};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

fn events_of(events: &[Value], kind: &str, port: u16) -> Vec<Value> {
    ours(events, kind)
        .into_iter()
        .filter(|e| e["port"].as_u64() == Some(u64::from(port)))
        .cloned()
        .collect()
}

#[test]
fn the_stand_in_sees_sockets_made_while_it_runs() {
    if skip_unless_root("the_stand_in_sees_sockets_made_while_it_runs") {
        return;
    }
    if backend_args().iter().any(|arg| arg == "kprobe") {
        eprintln!(
            "skipped the_stand_in_sees_sockets_made_while_it_runs: the fallback is the \
             tracepoint backend's (the tracepoint runs cover it)"
        );
        return;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let target: SocketAddr = listener.local_addr().expect("listener address");
    // Made before port-trace started, and never bound: it has no cookie to read.
    let older = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");

    // The VM runs name the backend already (tracepoint, past the check above).
    let args: &[&str] = if backend_args().is_empty() {
        &["--backend", "tracepoint", "--fallback-programs"]
    } else {
        &["--fallback-programs"]
    };
    let tracer = Tracer::start(args);
    let programs: Vec<&str> = tracer.ready["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter_map(Value::as_str)
        .map(|label| label.split_whitespace().next().unwrap_or_default())
        .collect();
    assert!(
        programs.contains(&"tcp_state_stored_cookie") && programs.contains(&"tcp_cookie"),
        "{programs:?}"
    );
    assert!(!programs.contains(&"tcp_state"), "{programs:?}");

    // A connect() on a socket made now: allocated and released, as with tcp_state.
    let fresh = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    fresh.connect(&target.into()).expect("connect");
    let fresh_port = local_port(&fresh);
    let (accepted, _) = listener.accept().expect("accept");
    rst_close(fresh);
    drop(accepted);

    // listen() without bind() on a socket made now: its port is seen too.
    let listening = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listening.listen(1).expect("listen");
    let listen_port = local_port(&listening);
    drop(listening);

    // The older socket's connect() is the fallback's blind spot (the README says so).
    older.connect(&target.into()).expect("connect");
    let older_port = local_port(&older);
    let (accepted, _) = listener.accept().expect("accept");
    rst_close(older);
    drop(accepted);

    let (events, report) = tracer.stop();
    for (port, kind) in [(fresh_port, "connect"), (listen_port, "listen")] {
        let allocs = events_of(&events, "alloc", port);
        assert_eq!(allocs.len(), 1, "{kind} on port {port}: {allocs:?}");
        assert_eq!(allocs[0]["kind"], kind, "{}", allocs[0]);
        let releases = events_of(&events, "release", port);
        assert_eq!(releases.len(), 1, "{kind} on port {port}: {releases:?}");
    }
    assert_eq!(
        events_of(&events, "alloc", older_port),
        Vec::<Value>::new(),
        "a socket older than port-trace has no cookie here, so it cannot be seen (unless another \
         tracer that calls bpf_get_socket_cookie on every TCP socket ran beside this test)"
    );
    assert_eq!(report["totals"]["lost"], 0, "{report}");
    // The stand-ins' failed runs are counted under their own names: none here.
    assert_eq!(report["probe_errors"]["total"], 0, "{report}");
}
