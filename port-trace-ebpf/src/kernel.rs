//! Reads from kernel structs at offsets the daemon resolved from this kernel's BTF.

use core::{
    mem::MaybeUninit,
    ptr::{addr_of_mut, write_volatile},
};

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    bpf_probe_read_kernel_buf, generated,
};
use port_trace_common::{
    AF_INET, AF_INET6, FILTER_TCP, FILTER_UDP, IPPROTO_TCP, IPPROTO_UDP, KernelFilter,
    KernelOffsets, MAX_NETNS_FILTER, PortEvent,
};

/// Written by the daemon before load (aya `override_global`); all zero in the object file.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    sk_num: 0,
    sk_dport: 0,
    sk_family: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_protocol: 0,
    sk_net: 0,
    net_inum: 0,
    task_nsproxy: 0,
    nsproxy_net_ns: 0,
    syscall_exit_ret: 0,
    socket_sk: 0,
    sk_state: 0,
    tcp_cb_flags: 0,
    tcp_nulls_pprev: 0,
    sk_cookie: 0,
};

/// Random per run, from the daemon: the kprobe backend names a socket `sk ^ SOCKET_ID_KEY`,
/// since kprobes cannot take socket cookies and kernel addresses must not reach the output.
#[unsafe(no_mangle)]
static SOCKET_ID_KEY: u64 = 0;

/// `--netns` / `--proto`, from the daemon; all zero traces everything.
#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter {
    netns: [0; MAX_NETNS_FILTER],
    netns_count: 0,
    protos: 0,
};

/// Whether a socket of this namespace and protocol is traced at all.
#[inline(always)]
pub fn traced(event: &PortEvent) -> bool {
    // Volatile, as for OFFSETS.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    let proto = match event.proto {
        IPPROTO_TCP => FILTER_TCP,
        IPPROTO_UDP => FILTER_UDP,
        _ => 0,
    };
    if filter.protos != 0 && filter.protos & proto == 0 {
        return false;
    }
    if filter.netns_count == 0 {
        return true;
    }
    let mut i = 0;
    while i < MAX_NETNS_FILTER {
        if (i as u32) < filter.netns_count && filter.netns[i] == event.netns {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
pub fn socket_id(sk: *const u8) -> u64 {
    (sk as u64) ^ unsafe { core::ptr::read_volatile(&SOCKET_ID_KEY) }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile: otherwise the compiler folds the all-zero initializer into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// One offset alone, loaded from read-only data: the verifier knows its value, as a direct
/// load from a BTF-typed pointer needs (`offsets()` copies the struct through the stack).
#[inline(always)]
pub fn tcp_nulls_pprev_offset() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const OFFSETS.tcp_nulls_pprev) }
}

#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.map_err(i64::from)
}

/// A socket's local port (`skc_num`, host order); 0 until the kernel chose one.
#[inline(always)]
pub fn sk_num(sk: *const u8, off: &KernelOffsets) -> u16 {
    unsafe { read::<u16>(sk, off.sk_num) }.unwrap_or(0)
}

/// A new event for `sk` caused by the current process: who, where, and both endpoints as the
/// socket knows them now.
#[inline(always)]
pub fn sock_event(sk: *const u8, off: &KernelOffsets, proto: u8, kind: u8) -> PortEvent {
    let mut event = current_event(kind, proto);
    read_endpoints(sk, off, &mut event);
    event.netns = sk_netns(sk, off);
    event
}

/// Reads the socket's family, both addresses and both ports into `event`.
#[inline(always)]
pub fn read_endpoints(sk: *const u8, off: &KernelOffsets, event: &mut PortEvent) {
    let family = unsafe { read::<u16>(sk, off.sk_family) }.unwrap_or(0) as u8;
    event.family = family;
    event.lport = sk_num(sk, off);
    if family == AF_INET {
        let _ = unsafe {
            bpf_probe_read_kernel_buf(sk.add(off.sk_rcv_saddr as usize), &mut event.laddr[..4])
        };
    } else if family == AF_INET6 {
        let _ = unsafe {
            bpf_probe_read_kernel_buf(sk.add(off.sk_v6_rcv_saddr as usize), &mut event.laddr)
        };
    }
    read_peer(sk, off, event);
}

/// Reads the socket's peer, address and port, into `event` (whose `family` is the socket's).
#[inline(always)]
pub fn read_peer(sk: *const u8, off: &KernelOffsets, event: &mut PortEvent) {
    event.rport = u16::from_be(unsafe { read::<u16>(sk, off.sk_dport) }.unwrap_or(0));
    if event.family == AF_INET {
        let _ = unsafe {
            bpf_probe_read_kernel_buf(sk.add(off.sk_daddr as usize), &mut event.raddr[..4])
        };
    } else if event.family == AF_INET6 {
        let _ = unsafe {
            bpf_probe_read_kernel_buf(sk.add(off.sk_v6_daddr as usize), &mut event.raddr)
        };
    }
}

/// An event naming the current process and its cgroup; the caller fills the socket's part,
/// and `track` the time when it reports the event.
///
/// Every event that reaches the ring buffers starts here, in a program that runs in the
/// allocating task's own syscall (kprobes on the bind/connect/get_port paths, tp_btf
/// `inet_sock_set_state` for CLOSE->SYN_SENT/LISTEN, the cgroup bind/connect/sendmsg hooks),
/// so the task's cgroup v2 id is the socket owner's. Programs that run elsewhere (sock_ops,
/// the CLOSE transitions in softirq, TIME_WAIT's timer) report the entry `track` kept, id
/// included. One helper call: `bpf_get_current_cgroup_id` exists for kprobes and tracing
/// programs since 4.18 and for cgroup sock_addr programs since 5.7.
#[inline(always)]
pub fn current_event(kind: u8, proto: u8) -> PortEvent {
    let mut event = MaybeUninit::<PortEvent>::uninit();
    let e = event.as_mut_ptr();
    // SAFETY: `write_blank` initializes all of `event`; the writes after it stay inside.
    unsafe {
        write_blank(e, kind, proto);
        addr_of_mut!((*e).pid).write((bpf_get_current_pid_tgid() >> 32) as u32);
        addr_of_mut!((*e).cgroup).write(generated::bpf_get_current_cgroup_id());
        // Fills all 16 bytes (NUL-padded) when it succeeds; the zeros stay when it fails.
        let _ = generated::bpf_get_current_comm(addr_of_mut!((*e).comm).cast(), 16);
        event.assume_init()
    }
}

/// Writes to `e` an event that names only its socket's kind, protocol, family and
/// namespace. In place, not returned: the compiler would rebuild a returned copy's zeros with
/// `memset` (see `write_blank`).
///
/// # Safety
/// `e` must be valid for writes of a `PortEvent`.
#[inline(always)]
pub unsafe fn write_socket_only(e: *mut PortEvent, kind: u8, proto: u8, family: u8, netns: u32) {
    unsafe {
        write_blank(e, kind, proto);
        write_volatile(addr_of_mut!((*e).family), family);
        write_volatile(addr_of_mut!((*e).netns), netns);
    }
}

/// Writes an event of `kind` and `proto` with every other field zero to `e`.
///
/// Every field is written once, and every zero as a volatile store, in place: the compiler
/// turns zeroing (`PortEvent::ZERO`, any `[0; N]`, neighbouring zero stores, copies of what
/// it knows is zero) into calls to the linker's `memset`, a loop over single bytes, which was
/// about a tenth of a UDP socket's program time.
///
/// # Safety
/// `e` must be valid for writes of a `PortEvent`.
#[inline(always)]
unsafe fn write_blank(e: *mut PortEvent, kind: u8, proto: u8) {
    unsafe {
        write_volatile(addr_of_mut!((*e).ts_ns), 0);
        write_volatile(addr_of_mut!((*e).cookie), 0);
        write_volatile(addr_of_mut!((*e).cgroup), 0);
        write_volatile(addr_of_mut!((*e).pid), 0);
        write_volatile(addr_of_mut!((*e).netns), 0);
        zero16(addr_of_mut!((*e).comm));
        zero16(addr_of_mut!((*e).laddr));
        zero16(addr_of_mut!((*e).raddr));
        write_volatile(addr_of_mut!((*e).lport), 0);
        write_volatile(addr_of_mut!((*e).rport), 0);
        write_volatile(addr_of_mut!((*e).event), 0);
        write_volatile(addr_of_mut!((*e).kind), kind);
        write_volatile(addr_of_mut!((*e).proto), proto);
        write_volatile(addr_of_mut!((*e).family), 0);
        write_volatile(addr_of_mut!((*e).errno), 0);
        write_volatile(addr_of_mut!((*e).flags), 0);
        let pad = addr_of_mut!((*e)._pad).cast::<u8>();
        for i in 0..3 {
            write_volatile(pad.add(i), 0);
        }
    }
}

/// Zeroes a 16-byte array at an 8-aligned offset with two 8-byte stores (volatile, so the
/// compiler cannot merge them back into a `memset`).
#[inline(always)]
unsafe fn zero16(array: *mut [u8; 16]) {
    let words = array.cast::<u64>();
    unsafe {
        write_volatile(words, 0);
        write_volatile(words.add(1), 0);
    }
}

/// The inode number of the socket's network namespace (`sk->skc_net->ns.inum`).
#[inline(always)]
pub fn sk_netns(sk: *const u8, off: &KernelOffsets) -> u32 {
    let net = unsafe { read::<*const u8>(sk, off.sk_net) }.unwrap_or(core::ptr::null());
    unsafe { read::<u32>(net, off.net_inum) }.unwrap_or(0)
}

/// The inode number of the current task's network namespace, for hooks that get no `struct
/// sock` pointer (the cgroup ones); they run in the process's own bind()/close().
#[inline(always)]
pub fn current_netns(off: &KernelOffsets) -> u32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let nsproxy = unsafe { read::<*const u8>(task, off.task_nsproxy) }.unwrap_or(core::ptr::null());
    let net =
        unsafe { read::<*const u8>(nsproxy, off.nsproxy_net_ns) }.unwrap_or(core::ptr::null());
    unsafe { read::<u32>(net, off.net_inum) }.unwrap_or(0)
}
