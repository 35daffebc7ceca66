//! Probes: check the machine, load the eBPF programs, attach them, and hand out the ring
//! buffer and the kernel's counters (lost events, failed program runs).

pub mod btf;
pub mod counters;
pub mod kprobe;
pub mod preflight;
pub mod tracefs;
mod tracepoint;
mod verifier;

use std::{
    fmt,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};
pub use counters::{KernelCounters, LostCounts, ProbeErrors};
use port_trace_common::{KernelFilter, LOST_FAILURE_RING_FULL, LOST_RINGBUF_FULL, LOST_TABLE_FULL};
use serde::Serialize;
use tracing::{debug, info};

use crate::{error::Fatal, sys};

/// The eBPF object built by build.rs from port-trace-ebpf (empty in a build with
/// AYA_BUILD_SKIP, such as the fuzz targets', which load no programs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/port-trace"));

/// The backend asked for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Kprobe,
    Tracepoint,
}

/// The backend whose programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Kprobe,
    Tracepoint,
}

impl Backend {
    /// The name in the output (the ready record, the report, the metrics' label).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }

    /// The backend `as_str` names; None for a name this version does not know.
    pub fn from_name(name: &str) -> Option<Backend> {
        [Backend::Kprobe, Backend::Tracepoint]
            .into_iter()
            .find(|backend| backend.as_str() == name)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every program in the eBPF object and the backend that attaches it: the names come from
/// the backends' own attach tables.
fn programs() -> impl Iterator<Item = (Backend, &'static str)> {
    let kprobes = kprobe::PROBES
        .iter()
        .map(|(name, _)| (Backend::Kprobe, *name));
    let tracepoints = tracepoint::PROGRAMS
        .iter()
        .chain(tracepoint::FALLBACKS.iter().flat_map(|f| &f.instead))
        .map(|(name, _)| (Backend::Tracepoint, *name));
    kprobes.chain(tracepoints)
}

pub struct ProbeConfig {
    pub backend: BackendChoice,
    /// Stop at the first hook that fails to attach (tracing); else try every hook and
    /// record each result (`port-trace check`).
    pub strict: bool,
    pub max_sockets: u32,
    pub ring_buffer_bytes: u32,
    /// Namespaces and protocols the programs track (`--netns`, `--proto`).
    pub filter: KernelFilter,
    /// The benchmark's: count map operations in the kernel (`--count-map-ops`).
    pub count_map_ops: bool,
    /// The benchmark's floor: attach empty programs at the tracepoint backend's hooks
    /// (`--empty-programs`).
    pub empty_programs: bool,
    /// The tests': attach the programs' fallbacks, as if the kernel refused the programs
    /// (`--fallback-programs`).
    pub fallback_programs: bool,
}

/// The loaded programs. Dropping this detaches every program and frees the maps.
pub struct Probes {
    /// The kprobe backend's probes (aya keeps the tracepoint backend's links in `ebpf`).
    kprobe_links: Option<kprobe::Links>,
    ebpf: Ebpf,
    pub backend: Backend,
    pub programs: Vec<String>,
    /// Every hook tried, with its result (all Ok when strict).
    pub hooks: Vec<Hook>,
    /// The most skipped runs read so far: the kernel's count only grows, and a read of
    /// fdinfo that fails (0) must not make it dip and then count the same runs again.
    skipped_seen: std::cell::Cell<u64>,
}

/// One program and where it attaches, and whether loading and attaching it worked.
pub struct Hook {
    pub label: String,
    pub result: Result<(), String>,
}

/// Collects hook results; when strict, the first failure ends the attach.
pub struct Hooks {
    strict: bool,
    list: Vec<Hook>,
}

impl Hooks {
    fn record(
        &mut self,
        label: &str,
        attach: impl FnOnce() -> Result<(), Fatal>,
    ) -> Result<(), Fatal> {
        let result = attach();
        match result {
            Err(err) if self.strict => Err(err),
            result => {
                self.list.push(Hook {
                    label: label.to_string(),
                    result: result.map_err(|e| e.root_cause()),
                });
                Ok(())
            }
        }
    }
}

impl Probes {
    pub fn attach(config: &ProbeConfig) -> Result<Self, Fatal> {
        let machine = preflight::check()?;
        raise_memlock_limit();
        let backend = match config.backend {
            BackendChoice::Auto if kprobe::available() => Backend::Kprobe,
            BackendChoice::Auto | BackendChoice::Tracepoint => Backend::Tracepoint,
            BackendChoice::Kprobe if config.strict && !kprobe::available() => {
                return Err(Fatal::Unsupported(format!(
                    "{}; use --backend tracepoint",
                    kprobe::UNAVAILABLE
                )));
            }
            BackendChoice::Kprobe => Backend::Kprobe,
        };
        // Before anything is loaded: the tracepoint backend cannot start without cgroup v2.
        if backend == Backend::Tracepoint
            && let Err(no_cgroup2) = machine.cgroup2()
        {
            return Err(match config.backend {
                BackendChoice::Auto => Fatal::Unsupported(format!(
                    "no backend can start here: {} and cgroup v2, which the tracepoint backend \
                     attaches at, is not mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)",
                    kprobe::UNAVAILABLE
                )),
                _ => no_cgroup2,
            });
        }

        let btf_bytes = std::fs::read(preflight::VMLINUX_BTF)
            .with_context(|| format!("reading {}", preflight::VMLINUX_BTF))?;
        let mut offsets = btf::Btf::parse(&btf_bytes)
            .and_then(|b| b.kernel_offsets())
            .map_err(|e| Fatal::Unsupported(format!("cannot read this kernel's BTF: {e}")))?;
        // Only the tracepoint backend reads syscall exits (bind()/connect() errors).
        if backend == Backend::Tracepoint {
            let tracefs =
                tracefs::ensure_mounted().map_err(|e| Fatal::Unsupported(format!("{e:#}")))?;
            offsets.syscall_exit_ret = tracefs::syscall_exit_ret_offset(&tracefs)
                .map_err(|e| Fatal::Unsupported(format!("{e:#}")))?;
        }
        debug!(?offsets, "kernel struct offsets from BTF");
        // The same bytes: vmlinux BTF is megabytes, read once.
        let aya_btf =
            AyaBtf::parse(&btf_bytes, Endianness::default()).context("loading kernel BTF")?;

        if EBPF_OBJECT.is_empty() {
            return Err(Fatal::Other(anyhow::anyhow!(
                "this port-trace was built without its eBPF programs (AYA_BUILD_SKIP)"
            )));
        }
        let socket_id_key = random_u64();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("SOCKET_ID_KEY", &socket_id_key, true)
            .override_global("FILTER", &config.filter, true)
            .override_global("COUNT_MAP_OPS", &u32::from(config.count_map_ops), true)
            .map_max_entries("SOCKETS", config.max_sockets)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| classify(anyhow::Error::new(e).context("loading the eBPF maps")))?;

        let mut hooks = Hooks {
            strict: config.strict,
            list: Vec::new(),
        };
        let mut kprobe_links = None;
        match backend {
            Backend::Kprobe if config.empty_programs => {
                return Err(Fatal::Unsupported(
                    "--empty-programs has the tracepoint backend's hooks only; add --backend \
                     tracepoint"
                        .into(),
                ));
            }
            Backend::Kprobe => kprobe_links = Some(kprobe::attach(&mut ebpf, &mut hooks)?),
            Backend::Tracepoint => tracepoint::attach(
                &mut ebpf,
                &aya_btf,
                machine.cgroup2()?,
                tracepoint::Variant {
                    empty: config.empty_programs,
                    fallbacks: config.fallback_programs,
                },
                &mut hooks,
            )?,
        }
        info!(
            backend = backend.as_str(),
            "attached {} programs",
            hooks.list.len()
        );
        Ok(Self {
            kprobe_links,
            ebpf,
            backend,
            programs: hooks.list.iter().map(|h| h.label.clone()).collect(),
            hooks: hooks.list,
            skipped_seen: std::cell::Cell::new(0),
        })
    }

    /// Whether the kernel side reports the end of TIME_WAIT itself (kprobe backend); else
    /// the daemon watches TIME_WAIT sockets through sock_diag.
    pub fn sees_time_wait_end(&self) -> bool {
        self.backend == Backend::Kprobe
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
    fn lost(&self) -> anyhow::Result<LostCounts> {
        let sum = self.per_cpu_sums("LOST")?;
        Ok(LostCounts {
            ring_buffer_full: sum(LOST_RINGBUF_FULL)?,
            socket_table_full: sum(LOST_TABLE_FULL)?,
            failure_ring_full: sum(LOST_FAILURE_RING_FULL)?,
            program_skipped: self.skipped_runs(),
        })
    }

    /// Runs of our programs the kernel skipped (see `LostCounts`), that could have carried an
    /// event: skipped for recursion (fdinfo), and the kprobe backend's missed hits.
    fn skipped_runs(&self) -> u64 {
        let now: u64 = self
            .ebpf
            .programs()
            .filter(|(name, _)| !SKIPS_LOSE_NOTHING.contains(name))
            .filter_map(|(_, program)| program.fd().ok())
            .map(|fd| sys::procfs::bpf_recursion_misses(fd.as_fd().as_raw_fd()))
            .sum::<u64>()
            + self.kprobe_links.as_ref().map_or(0, kprobe::Links::missed);
        let seen = self.skipped_seen.get().max(now);
        self.skipped_seen.set(seen);
        seen
    }

    /// What the kernel side counted: lost events, and the attached programs' failed runs.
    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        Ok(KernelCounters {
            lost: self.lost()?,
            probe_errors: self.probe_errors()?,
        })
    }

    /// Failed runs of each attached program (see `ProbeErrors`), summed over CPUs.
    /// Only the programs attached: a fallback not needed here has no count to show.
    fn probe_errors(&self) -> anyhow::Result<ProbeErrors> {
        let mut errors = ProbeErrors::collect(&[self.backend], self.per_cpu_sums("PROBE_ERRORS")?)?;
        errors.programs.retain(|p| {
            self.programs
                .iter()
                .any(|label| label.split_whitespace().next() == Some(p.program))
        });
        Ok(errors)
    }

    /// The per-CPU counter array `name`, as a function from index to the sum over CPUs.
    fn per_cpu_sums(&self, name: &str) -> anyhow::Result<impl Fn(u32) -> anyhow::Result<u64>> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("the {name} map is missing"))?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(move |index: u32| Ok(counters.get(&index, 0)?.iter().sum()))
    }
}

/// Programs whose skipped runs lose no event. The kernel skips a run of `tcp_state` (tp_btf)
/// only when the state change comes in an interrupt's network processing while a run of it
/// in process context is under way on that CPU (softirqs do not nest). The changes it acts
/// on come in process context (a connect() or listen() starting, one that found no port, a
/// listener's close); a tracked socket's close in softirq is reported by the sock_ops
/// program, which the kernel never skips. Measured: under loopback churn it skipped 390
/// runs, and every allocation's release arrived. Its stand-in on 5.10 acts on the same.
const SKIPS_LOSE_NOTHING: [&str; 2] = ["tcp_state", "tcp_state_stored_cookie"];

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Fatal>
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

/// A program that failed to load or attach. A verifier refusal is told by its reason (the
/// log's last message, `verifier::reason`); the whole log goes to the debug log.
pub(super) fn load_error(name: &str, err: ProgramError) -> Fatal {
    let err = match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            debug!("verifier log of {name}:\n{log}");
            let reason =
                verifier::reason(&log).unwrap_or_else(|| "the verifier's log is empty".to_string());
            anyhow::Error::new(io_error).context(format!("the verifier refused it: {reason}"))
        }
        other => anyhow::Error::new(other),
    };
    classify(err.context(format!("loading or attaching {name}")))
}

/// EPERM anywhere in the chain means missing privileges, whatever else the kernel said.
pub(super) fn classify(err: anyhow::Error) -> Fatal {
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

/// Random bits from the kernel, for the per-run socket id key.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: filling a buffer we own; a short read leaves zeros, which only weakens hiding.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    u64::from_ne_bytes(bytes)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{
        Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind,
        SymbolSection,
    };

    use super::{Backend, EBPF_OBJECT, programs};

    /// A program nobody attaches is dead code; one in both backends' tables would be
    /// attached twice. Each backend attaches from its table, so the tables must name every
    /// program in the object exactly once, but for the empty twins the benchmark attaches
    /// instead of the tracepoint backend's (`EMPTY_TWINS`), one for each of them.
    #[test]
    fn every_ebpf_program_belongs_to_one_backend() {
        let elf = object::File::parse(EBPF_OBJECT).expect("the eBPF object is ELF");
        // Programs are the functions in their own sections (`kprobe`, `cgroup/bind4`, ...);
        // functions left out of line are in `.text`.
        let in_object: BTreeSet<&str> = elf
            .symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text)
            .filter(|symbol| match symbol.section() {
                SymbolSection::Section(index) => elf
                    .section_by_index(index)
                    .and_then(|section| section.name())
                    .is_ok_and(|name| !name.starts_with(".text")),
                _ => false,
            })
            .filter_map(|symbol| symbol.name().ok())
            .collect();
        let kprobes: BTreeSet<&str> = programs()
            .filter(|(backend, _)| *backend == Backend::Kprobe)
            .map(|(_, name)| name)
            .collect();
        let tracepoints: BTreeSet<&str> = programs()
            .filter(|(backend, _)| *backend == Backend::Tracepoint)
            .map(|(_, name)| name)
            .collect();
        assert!(
            kprobes.len() > 10 && tracepoints.len() > 10,
            "tables not read"
        );
        let in_both: Vec<_> = kprobes.intersection(&tracepoints).collect();
        assert!(in_both.is_empty(), "in both backends' tables: {in_both:?}");
        // Each program of the main table has its empty twin (the fallbacks need none: the
        // floor is measured at the same hooks).
        let twins: BTreeSet<&str> = super::tracepoint::PROGRAMS
            .iter()
            .filter_map(|(name, _)| super::tracepoint::empty_twin(name))
            .collect();
        assert_eq!(
            twins.len(),
            super::tracepoint::PROGRAMS.len(),
            "a program without its twin"
        );
        let in_tables: BTreeSet<&str> = kprobes.union(&tracepoints).copied().chain(twins).collect();
        assert_eq!(
            in_object.difference(&in_tables).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "programs in the object that no backend attaches"
        );
        assert_eq!(
            in_tables.difference(&in_object).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "programs in an attach table but not in the object"
        );
    }

    /// The linker's `memset`/`memcpy` for BPF move one byte per loop turn; the compiler calls
    /// them for zeroing and copies it cannot expand, and one such call cost a UDP socket's
    /// programs about a tenth of their time. `kernel::write_blank` in port-trace-ebpf keeps
    /// them out; this keeps them out for good.
    #[test]
    fn ebpf_programs_call_no_byte_loop_mem_functions() {
        let elf = object::File::parse(EBPF_OBJECT).expect("the eBPF object is ELF");
        let mut calls = Vec::new();
        // The scan's own check: programs use the socket table through relocations too.
        let mut table_uses = 0;
        for section in elf.sections() {
            for (_, relocation) in section.relocations() {
                let RelocationTarget::Symbol(index) = relocation.target() else {
                    continue;
                };
                let Ok(symbol) = elf.symbol_by_index(index) else {
                    continue;
                };
                let name = symbol.name().unwrap_or_default();
                table_uses += usize::from(name == "SOCKETS");
                if ["memset", "memcpy", "memmove", "memcmp", "bcmp"].contains(&name) {
                    calls.push(format!("{} calls {name}", section.name().unwrap_or("?")));
                }
            }
        }
        assert!(
            table_uses > 10,
            "relocations not read: {table_uses} uses of SOCKETS"
        );
        assert!(calls.is_empty(), "{calls:#?}");
    }
}
