//! Probes: check the machine, load the eBPF programs, attach them, and hand out the ring
//! buffer and the lost-event counters.

pub mod btf;
pub mod preflight;
pub mod tracefs;

use std::fs::File;

use anyhow::Context as _;
use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SockOps,
        TracePoint,
    },
};
use port_trace_common::{LOST_FAILURE_RING_FULL, LOST_RINGBUF_FULL, LOST_TABLE_FULL};
use tracing::{debug, info};

use crate::{error::Fatal, stats::LostCounts};

/// The eBPF object built by build.rs from port-trace-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-trace"));

pub struct ProbeConfig {
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
}

/// The loaded programs. Dropping this detaches every program and frees the maps.
pub struct Probes {
    ebpf: Ebpf,
    pub backend: &'static str,
    pub programs: Vec<String>,
}

/// On kernels >= 5.7 aya attaches cgroup programs as BPF links, which always coexist with
/// other programs on the cgroup and take no flags: any flag is EINVAL.
const CGROUP_LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The tracepoint backend's cgroup programs: (program, what it hooks).
const CGROUP_SOCK_ADDR: [&str; 6] = [
    "bind4_request",
    "bind6_request",
    "udp_connect4",
    "udp_connect6",
    "udp_sendmsg4",
    "udp_sendmsg6",
];
const CGROUP_SOCK: [&str; 4] = ["post_bind4", "post_bind6", "sock_release", "udp_create"];
/// (program, tracepoint in the `syscalls` category).
const SYSCALL_EXITS: [(&str, &str); 2] = [
    ("bind_exit", "sys_exit_bind"),
    ("connect_exit", "sys_exit_connect"),
];

impl Probes {
    pub fn attach(config: &ProbeConfig) -> Result<Self, Fatal> {
        let machine = preflight::check()?;
        raise_memlock_limit();

        let btf_bytes = std::fs::read(preflight::VMLINUX_BTF)
            .with_context(|| format!("reading {}", preflight::VMLINUX_BTF))?;
        let mut offsets = btf::Btf::parse(&btf_bytes)
            .and_then(|b| b.kernel_offsets())
            .map_err(|e| Fatal::Unsupported(format!("cannot read this kernel's BTF: {e}")))?;
        let tracefs =
            tracefs::ensure_mounted().map_err(|e| Fatal::Unsupported(format!("{e:#}")))?;
        offsets.syscall_exit_ret = tracefs::syscall_exit_ret_offset(&tracefs)
            .map_err(|e| Fatal::Unsupported(format!("{e:#}")))?;
        debug!(?offsets, "kernel struct offsets from BTF");
        let aya_btf = AyaBtf::from_sys_fs().context("loading kernel BTF")?;

        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("SOCKETS", config.max_sockets)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| classify(anyhow::Error::new(e).context("loading the eBPF maps")))?;

        let cgroup = File::open(&machine.cgroup2)
            .with_context(|| format!("opening cgroup v2 at {}", machine.cgroup2.display()))?;
        let mut programs = Vec::new();

        let tcp_state: &mut BtfTracePoint = program(&mut ebpf, "tcp_state")?;
        tcp_state
            .load("inet_sock_set_state", &aya_btf)
            .map_err(|e| load_error("tcp_state", e))?;
        tcp_state.attach().map_err(|e| load_error("tcp_state", e))?;
        programs.push("tcp_state (tp_btf/inet_sock_set_state)".to_string());

        let sock_ops: &mut SockOps = program(&mut ebpf, "tcp_port_chosen")?;
        sock_ops
            .load()
            .map_err(|e| load_error("tcp_port_chosen", e))?;
        sock_ops
            .attach(&cgroup, CGROUP_LINK_MODE)
            .map_err(|e| load_error("tcp_port_chosen", e))?;
        programs.push("tcp_port_chosen (cgroup sock_ops)".to_string());

        for name in CGROUP_SOCK_ADDR {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            prog.attach(&cgroup, CGROUP_LINK_MODE)
                .map_err(|e| load_error(name, e))?;
            programs.push(format!("{name} (cgroup sock_addr)"));
        }
        for name in CGROUP_SOCK {
            let prog: &mut CgroupSock = program(&mut ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            prog.attach(&cgroup, CGROUP_LINK_MODE)
                .map_err(|e| load_error(name, e))?;
            programs.push(format!("{name} (cgroup sock)"));
        }
        for (name, tracepoint) in SYSCALL_EXITS {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            prog.attach("syscalls", tracepoint)
                .map_err(|e| load_error(name, e))?;
            programs.push(format!("{name} (tracepoint syscalls:{tracepoint})"));
        }
        info!(cgroup = %machine.cgroup2.display(), "attached {} programs", programs.len());
        Ok(Self {
            ebpf,
            backend: "tracepoint",
            programs,
        })
    }

    /// The ring buffer of allocations and releases. Can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.take_ring("EVENTS")
    }

    /// The ring buffer of failed allocations. Can be taken once.
    pub fn take_failures(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.take_ring("FAILURES")
    }

    fn take_ring(&mut self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .with_context(|| format!("the {name} ring buffer is missing or was taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel's lost-event counters, summed over CPUs.
    pub fn lost(&self) -> anyhow::Result<LostCounts> {
        let map = self.ebpf.map("LOST").context("the LOST map is missing")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |index: u32| -> anyhow::Result<u64> { Ok(counters.get(&index, 0)?.iter().sum()) };
        Ok(LostCounts {
            ring_buffer_full: sum(LOST_RINGBUF_FULL)?,
            socket_table_full: sum(LOST_TABLE_FULL)?,
            failure_ring_full: sum(LOST_FAILURE_RING_FULL)?,
        })
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Fatal>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the eBPF object"))?;
    Ok(prog
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))?)
}

fn load_error(name: &str, err: ProgramError) -> Fatal {
    classify(anyhow::Error::new(err).context(format!("loading or attaching {name}")))
}

/// EPERM anywhere in the chain means missing privileges, whatever else the kernel said.
fn classify(err: anyhow::Error) -> Fatal {
    let denied = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
            || cause.to_string().contains("Operation not permitted")
    });
    if denied {
        Fatal::NotPermitted(format!(
            "the kernel refused to load port-trace's eBPF programs ({err:#}); run it as root"
        ))
    } else {
        Fatal::Other(err)
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memory cgroup,
/// where a failure here does not matter (and it fails without CAP_SYS_RESOURCE).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
