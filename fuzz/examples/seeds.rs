//! Writes the seed corpora that need building or capturing (README, "Fuzzing"): ring records
//! built from the common types, sock_diag replies captured from this machine's kernel, and a
//! small BTF blob cut from this kernel's BTF with every type the daemon looks up. (The
//! tracefs formats and HTTP requests are plain files, copied or written by hand.)
//!
//! `AYA_BUILD_SKIP=1 cargo run --example seeds` in fuzz/, as root (for the BTF).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use port_trace::{
    probes::btf::Btf,
    sys::sock_diag::{ConnectionId, lookup_request, request},
};
use port_trace_common::*;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    ring_records(&corpus.join("ring_record"))?;
    sock_diag(&corpus.join("sock_diag"))?;
    btf(&corpus.join("btf"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
    Ok(())
}

fn record_bytes(raw: &PortEvent) -> Vec<u8> {
    // SAFETY: PortEvent is plain old data, read as the ring buffer carries it.
    unsafe {
        std::slice::from_raw_parts(
            (raw as *const PortEvent).cast::<u8>(),
            size_of::<PortEvent>(),
        )
    }
    .to_vec()
}

/// One record of each shape the eBPF programs submit.
fn ring_records(dir: &Path) -> std::io::Result<()> {
    let mut connect = PortEvent::ZERO;
    connect.event = EVENT_ALLOC;
    connect.ts_ns = 1_234_567_890;
    connect.cookie = 4097;
    connect.pid = 4242;
    connect.comm[..4].copy_from_slice(b"curl");
    connect.netns = 4026531840;
    connect.proto = IPPROTO_TCP;
    connect.family = AF_INET;
    connect.kind = KIND_CONNECT;
    connect.laddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    connect.lport = 40001;
    connect.raddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    connect.rport = 443;
    write(dir, "tcp4_connect_alloc", &record_bytes(&connect))?;

    let mut release = connect;
    release.event = EVENT_RELEASE;
    release.ts_ns += 5_000_000;
    release.flags = FLAG_TIME_WAIT;
    write(dir, "tcp4_release_time_wait", &record_bytes(&release))?;
    let mut tw_end = release;
    tw_end.event = EVENT_TIME_WAIT_END;
    tw_end.ts_ns += 60_000_000_000;
    write(dir, "tcp4_time_wait_end", &record_bytes(&tw_end))?;

    let mut udp6 = PortEvent::ZERO;
    udp6.event = EVENT_ALLOC;
    udp6.ts_ns = 99;
    udp6.cookie = 77;
    udp6.pid = 1;
    udp6.comm = *b"systemd-resolved";
    udp6.proto = IPPROTO_UDP;
    udp6.family = AF_INET6;
    udp6.kind = KIND_SENDMSG;
    udp6.laddr = Ipv6Addr::LOCALHOST.octets();
    udp6.lport = 53124;
    udp6.raddr = "2001:db8::53"
        .parse::<Ipv6Addr>()
        .map_or([0; 16], |a| a.octets());
    udp6.rport = 53;
    write(dir, "udp6_sendmsg_alloc", &record_bytes(&udp6))?;

    let mut bind = connect;
    bind.kind = KIND_BIND;
    bind.flags = FLAG_EXPLICIT;
    bind.lport = 8080;
    bind.raddr = [0; 16];
    bind.rport = 0;
    bind.comm = [0; 16];
    bind.comm[..6].copy_from_slice(b"py\xffth\x1b");
    write(dir, "tcp4_bind_explicit_odd_comm", &record_bytes(&bind))?;

    // bind(0), then connect(): the bound socket's peer.
    let mut bound_connect = connect;
    bound_connect.event = EVENT_BOUND_CONNECT;
    bound_connect.kind = KIND_BIND;
    write(dir, "tcp4_bound_connect", &record_bytes(&bound_connect))?;

    let mut fail = connect;
    fail.event = EVENT_FAIL;
    fail.lport = 0;
    fail.errno = EADDRNOTAVAIL;
    write(dir, "tcp4_connect_fail", &record_bytes(&fail))?;
    Ok(())
}

/// A NETLINK_SOCK_DIAG socket in this namespace.
fn netlink() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 4) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor no one else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `req` and returns each datagram of the answer, up to `datagrams` of them.
fn exchange(fd: &OwnedFd, req: &[u8], datagrams: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut file = std::fs::File::from(fd.try_clone()?);
    file.write_all(req)?;
    let mut out = Vec::new();
    for _ in 0..datagrams {
        let mut buf = vec![0u8; 64 * 1024];
        let got = file.read(&mut buf)?;
        buf.truncate(got);
        let done = buf.get(4..6) == Some(&3u16.to_ne_bytes()[..]);
        out.push(buf);
        if done {
            break;
        }
    }
    Ok(out)
}

/// Real replies: dumps of TCP and UDP sockets (a listener, a connection and a UDP socket of
/// ours among them, so none is empty) and lookups of a connection that exists and one that
/// does not.
fn sock_diag(dir: &Path) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let _udp = UdpSocket::bind("[::1]:0")?;
    let fd = netlink()?;
    for (name, family, protocol) in [
        ("dump_tcp4", libc::AF_INET, libc::IPPROTO_TCP),
        ("dump_udp6", libc::AF_INET6, libc::IPPROTO_UDP),
    ] {
        let replies = exchange(&fd, &request(family as u8, protocol as u8, u32::MAX, 1), 2)?;
        for (i, reply) in replies.iter().enumerate() {
            // One datagram is up to 32 KiB; the fuzzer needs a few sockets, not all.
            write(
                dir,
                &format!("{name}_{i}"),
                &reply[..reply.len().min(8 * 1024)],
            )?;
        }
    }
    let cookie = {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: SO_COOKIE writes a u64 into a buffer of that size.
        unsafe {
            libc::getsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        cookie
    };
    let found = ConnectionId {
        local: client.local_addr()?,
        remote: client.peer_addr()?,
        cookie,
    };
    let missing = ConnectionId {
        cookie: cookie ^ 0xdead,
        ..found
    };
    let mut req = lookup_request(&found, 7);
    req.extend(lookup_request(&missing, 8));
    let mut answers = Vec::new();
    let mut file = std::fs::File::from(fd.try_clone()?);
    file.write_all(&req)?;
    // Two answers, each a datagram of its own.
    for _ in 0..2 {
        let mut buf = vec![0u8; 64 * 1024];
        let got = file.read(&mut buf)?;
        answers.extend_from_slice(&buf[..got]);
    }
    write(dir, "lookups_found_and_missing", &answers)
}

/// Every byte of one BTF type record and what a subset needs of it.
struct TypeRecord {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// (name_off, type, offset) of a struct's or union's members.
    members: Vec<(u32, u32, u32)>,
}

const PATH_MEMBERS: [&str; 2] = ["__sk_common", "ns"];
const ROOTS: [&str; 5] = ["sock", "net", "task_struct", "nsproxy", "socket"];

fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// The kernel's BTF cut down to the structs the daemon reads (with all their members), the
/// struct members on its paths and every anonymous member, renumbered; members of any other
/// type point at void.
fn btf(dir: &Path) -> std::io::Result<()> {
    let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("no /sys/kernel/btf/vmlinux: no BTF seed");
        return Ok(());
    };
    let u32_at = |d: &[u8], at: usize| u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    let hdr_len = u32_at(&data, 4) as usize;
    let (type_off, type_len) = (u32_at(&data, 8) as usize, u32_at(&data, 12) as usize);
    let (str_off, str_len) = (u32_at(&data, 16) as usize, u32_at(&data, 20) as usize);
    let types = &data[hdr_len + type_off..hdr_len + type_off + type_len];
    let strings = &data[hdr_len + str_off..hdr_len + str_off + str_len];
    let name = |off: u32| -> &str {
        let tail = &strings[off as usize..];
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    };

    let mut all = vec![TypeRecord {
        name_off: 0,
        info: 0,
        size_or_type: 0,
        members: Vec::new(),
    }];
    let mut at = 0;
    while at < types.len() {
        let info = u32_at(types, at + 4);
        let vlen = (info & 0xffff) as usize;
        let mut record = TypeRecord {
            name_off: u32_at(types, at),
            info,
            size_or_type: u32_at(types, at + 8),
            members: Vec::new(),
        };
        at += 12;
        let extra = match kind(info) {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => vlen * 12,
            6 | 13 => vlen * 8,
            _ => 0,
        };
        if matches!(kind(info), 4 | 5) {
            record.members = (0..vlen)
                .map(|i| {
                    let m = at + i * 12;
                    (u32_at(types, m), u32_at(types, m + 4), u32_at(types, m + 8))
                })
                .collect();
        }
        all.push(record);
        at += extra;
    }

    // Which types to keep: the roots (the first struct of each name, as Btf::parse takes),
    // then through aliases and the members a path or C's anonymous members go through.
    let mut keep = std::collections::BTreeSet::new();
    let mut todo: Vec<u32> = ROOTS
        .iter()
        .filter_map(|root| {
            all.iter()
                .position(|t| kind(t.info) == 4 && name(t.name_off) == *root)
                .map(|i| i as u32)
        })
        .collect();
    while let Some(id) = todo.pop() {
        if !keep.insert(id) {
            continue;
        }
        let t = &all[id as usize];
        match kind(t.info) {
            4 | 5 => todo.extend(
                t.members
                    .iter()
                    .filter(|(n, _, _)| *n == 0 || PATH_MEMBERS.contains(&name(*n)))
                    .map(|(_, ty, _)| *ty),
            ),
            8..=11 | 18 => todo.push(t.size_or_type),
            _ => {}
        }
    }
    keep.remove(&0);
    let renumber: BTreeMap<u32, u32> = keep.iter().zip(1..).map(|(&old, new)| (old, new)).collect();
    let new_id = |old: u32| renumber.get(&old).copied().unwrap_or(0);

    let mut new_strings = vec![0u8];
    let mut string_ids = BTreeMap::new();
    let mut intern = |off: u32| -> u32 {
        let s = name(off);
        if s.is_empty() {
            return 0;
        }
        *string_ids.entry(s.to_string()).or_insert_with(|| {
            let at = new_strings.len() as u32;
            new_strings.extend_from_slice(s.as_bytes());
            new_strings.push(0);
            at
        })
    };
    let mut out_types = Vec::new();
    let mut push = |words: [u32; 3]| {
        for w in words {
            out_types.extend_from_slice(&w.to_le_bytes());
        }
    };
    for &id in &keep {
        let t = &all[id as usize];
        match kind(t.info) {
            4 | 5 => {
                push([intern(t.name_off), t.info, t.size_or_type]);
                for &(n, ty, offset) in &t.members {
                    push([intern(n), new_id(ty), offset]);
                }
            }
            _ => push([intern(t.name_off), t.info, new_id(t.size_or_type)]),
        }
    }
    let mut blob = vec![0x9f, 0xeb, 1, 0];
    for w in [
        24,
        0,
        out_types.len() as u32,
        out_types.len() as u32,
        new_strings.len() as u32,
    ] {
        blob.extend_from_slice(&w.to_le_bytes());
    }
    blob.extend_from_slice(&out_types);
    blob.extend_from_slice(&new_strings);

    // The cut answers what the daemon asks exactly as the whole does.
    let whole = Btf::parse(&data).and_then(|b| b.kernel_offsets());
    let cut = Btf::parse(&blob).and_then(|b| b.kernel_offsets());
    assert_eq!(
        whole.map(|o| format!("{o:?}")),
        cut.map(|o| format!("{o:?}")),
        "the cut BTF answers otherwise"
    );
    write(dir, "vmlinux_offsets_subset", &blob)?;
    // A prefix of the real thing: its header and first types, the strings cut short.
    write(dir, "vmlinux_prefix", &data[..data.len().min(16 * 1024)])
}
