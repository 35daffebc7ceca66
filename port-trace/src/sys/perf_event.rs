//! perf_event_open for a tracefs event, with a BPF program attached to it: how the kprobe
//! backend attaches its programs to the kprobe events it makes (aya's own attach uses the
//! kprobe PMU, whose kretprobes cannot be given more instances; see `probes::kprobe`).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `struct perf_event_attr` up to its first published size (PERF_ATTR_SIZE_VER0, 64 bytes),
/// which every kernel accepts; libc does not have it.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 64);

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)` and `_IOW('$', 8, __u32)` from linux/perf_event.h.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// Opens tracefs event `id` (every CPU, every process) and runs `program` at each hit; the
/// program stays attached until the returned descriptor is closed.
pub fn attach_bpf(id: u64, program: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: a valid attr for the call's duration; pid -1 with cpu 0 is how a tracepoint
    // event is opened for a BPF program, which then runs on every CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned from here on.
    let event = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd() as libc::c_ulong),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: ioctls on our own perf event descriptor, with integer arguments.
        if unsafe { libc::ioctl(event.as_raw_fd(), request, arg) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(event)
}
