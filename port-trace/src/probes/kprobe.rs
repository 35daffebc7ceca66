//! The kprobe backend (distribution kernels): kprobes and kretprobes where Linux chooses and
//! frees ports (port-trace-ebpf/src/kprobe/mod.rs has the table of functions).
//!
//! The probes are tracefs kprobe events port-trace makes itself, not aya's (the kprobe PMU):
//! a kretprobe tracks only so many calls at once (`maxactive`), and the PMU's cannot be given
//! more than the kernel's default, max(10, 2 per CPU) or, on kernels built without full
//! preemption (Debian 11's 5.10), one per CPU. A thread can wait inside
//! `__inet_hash_connect` (its port search yields between ports), and more threads than that
//! connecting at once, as when a range is nearly full, made the return of one go unseen: its allocation was never reported, or its
//! failure. And the kernel counts a tracefs event's missed hits (`kprobe_profile`), which
//! port-trace reads as skipped runs, where the PMU's were counted nowhere it could read.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{Ebpf, programs::KProbe};

use super::{
    Hooks, load_error, program,
    tracefs::{self, ProbeEvent, ProbeKind},
};
use crate::{error::Fatal, sys};

/// Calls of a function a kretprobe tracks at once: `MAXACTIVE_LEAST`, or two per possible
/// CPU where that is more (the kernel's own default on a preemptible kernel), up to the
/// kernel's most (KRETPROBE_MAXACTIVE_MAX). A return is missed (and counted) only with more
/// threads than this inside one function at once. Not simply the most: each call tracked
/// costs the kernel about 64 bytes, and from 6.7 on also 8 bytes per possible CPU (its pool
/// keeps a slot of them per CPU), so 4096 would hold 13 MB of the kernel's memory at 64 CPUs
/// for the six kretprobes; 256 holds 0.8 MB there, and 0.1 MB on a small host.
fn maxactive() -> u32 {
    let cpus = aya::util::nr_cpus().unwrap_or(1) as u32;
    MAXACTIVE_LEAST.max(2 * cpus).min(4096)
}

/// 128 times what Debian 11's 5.10 gave a 2-CPU VM, where the take-over churn's 4 threads
/// missed 12 of 6,864 connects' returns.
const MAXACTIVE_LEAST: u32 = 256;

/// (program, kernel functions it attaches to). A `|` separates names a function has had in
/// different kernels: the first one this kernel has is used.
pub(super) const PROBES: [(&str, &[&str]); 14] = [
    ("kp_bind", &["inet_bind", "inet6_bind"]),
    ("kr_bind", &["inet_bind", "inet6_bind"]),
    ("kp_hash_connect", &["__inet_hash_connect"]),
    ("kr_hash_connect", &["__inet_hash_connect"]),
    ("kp_csk_get_port", &["inet_csk_get_port"]),
    ("kr_csk_get_port", &["inet_csk_get_port"]),
    ("kp_dgram_connect", &["inet_dgram_connect"]),
    ("kr_dgram_connect", &["inet_dgram_connect"]),
    ("kp_udp_get_port", &["udp_lib_get_port"]),
    ("kr_udp_get_port", &["udp_lib_get_port"]),
    ("kp_put_port", &["inet_put_port"]),
    ("kp_udp_unhash", &["udp_lib_unhash"]),
    // 6.9 renamed inet_twsk_hashdance to inet_twsk_hashdance_schedule.
    (
        "kp_tw_hashdance",
        &["inet_twsk_hashdance_schedule|inet_twsk_hashdance"],
    ),
    ("kp_twsk_kill", &["inet_twsk_kill"]),
];

/// Whether this kernel can make kprobe events: CONFIG_KPROBE_EVENTS, which gives both the
/// kprobe PMU (whose file this looks for, readable before tracefs is mounted) and tracefs'
/// `kprobe_events`, where the probes are made.
pub fn available() -> bool {
    std::path::Path::new(KPROBE_PMU).exists()
}

pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Why the kprobe backend cannot start where `available` is false, for its error messages.
pub const UNAVAILABLE: &str =
    "this kernel cannot attach kprobes (no kprobe PMU: CONFIG_KPROBE_EVENTS is off)";

/// The kernel functions PROBES may attach to that this kernel has, in one pass over
/// /proc/kallsyms (it has ~200k lines: scanning it once per probe was the slowest part of
/// starting up).
fn present_functions(kallsyms: &str) -> HashSet<&str> {
    let wanted: HashSet<&str> = PROBES
        .iter()
        .flat_map(|(_, functions)| functions.iter())
        .flat_map(|alternatives| alternatives.split('|'))
        .collect();
    kallsyms
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|name| wanted.contains(name))
        .collect()
}

/// The first of `alternatives` (`a|b|c`) this kernel has.
fn resolve(alternatives: &str, present: &HashSet<&str>) -> Option<String> {
    alternatives
        .split('|')
        .find(|name| present.contains(name))
        .map(str::to_string)
}

/// One program attached at one kernel function: the perf event running it, and the kprobe
/// event it is attached to. Dropping it detaches the program and removes the event (in
/// that order: fields drop in the order they are declared).
struct Link {
    _perf_event: OwnedFd,
    event: ProbeEvent,
}

/// The kprobe backend's links, and what their events missed.
pub struct Links {
    tracefs: PathBuf,
    links: Vec<Link>,
}

impl Links {
    /// Hits the kernel skipped, over every link (see `tracefs::probe_events_missed`).
    pub fn missed(&self) -> u64 {
        tracefs::probe_events_missed(
            &tracefs::kprobe_profile(&self.tracefs),
            self.links.iter().map(|link| link.event.name.as_str()),
        )
    }
}

fn attach_at(
    tracefs: &Path,
    prog: &KProbe,
    name: &str,
    function: &str,
    kind: ProbeKind,
) -> anyhow::Result<Link> {
    let event = ProbeEvent::create(tracefs, name, function, kind)?;
    let perf_event = sys::perf_event::attach_bpf(event.id, prog.fd()?.as_fd())
        .with_context(|| format!("attaching {name} to kprobe event {}", event.name))?;
    Ok(Link {
        _perf_event: perf_event,
        event,
    })
}

pub fn attach(ebpf: &mut Ebpf, hooks: &mut Hooks) -> Result<Links, Fatal> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")?;
    let present = present_functions(&kallsyms);
    let tracefs = tracefs::ensure_mounted().map_err(|e| Fatal::Unsupported(format!("{e:#}")))?;
    tracefs::remove_stale_probe_events(&tracefs);
    let mut links = Vec::new();
    let maxactive = maxactive();
    // Without kprobe events every probe fails for that one reason, said as such.
    let unavailable = (!available()).then(|| format!("{KPROBE_PMU} is missing: {UNAVAILABLE}"));
    for (name, functions) in PROBES {
        let (kind, probe_kind) = if name.starts_with("kr_") {
            ("kretprobe", ProbeKind::Return { maxactive })
        } else {
            ("kprobe", ProbeKind::Entry)
        };
        let resolved: Vec<Option<String>> = functions
            .iter()
            .map(|alternatives| resolve(alternatives, &present))
            .collect();
        let shown: Vec<&str> = resolved
            .iter()
            .zip(functions)
            .map(|(found, wanted)| found.as_deref().unwrap_or(wanted))
            .collect();
        hooks.record(&format!("{name} ({kind} {})", shown.join(", ")), || {
            if let Some(why) = &unavailable {
                return Err(Fatal::Unsupported(why.clone()));
            }
            let prog: &mut KProbe = program(ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            for (function, wanted) in resolved.iter().zip(functions) {
                let function = function.as_deref().ok_or_else(|| {
                    Fatal::Unsupported(format!("this kernel has no {wanted} (/proc/kallsyms)"))
                })?;
                links.push(
                    attach_at(&tracefs, prog, name, function, probe_kind)
                        .map_err(|e| super::classify(e.context(format!("attaching {name}"))))?,
                );
            }
            Ok(())
        })?;
    }
    Ok(Links { tracefs, links })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_name_this_kernel_has() {
        let kallsyms = "ffffffff82057560 T inet_twsk_hashdance\n\
                        ffffffff82057561 t inet_twsk_kill\n\
                        ffffffff82057562 t unrelated_function\n";
        let present = present_functions(kallsyms);
        assert_eq!(present.len(), 2);
        assert_eq!(
            resolve("inet_twsk_hashdance_schedule|inet_twsk_hashdance", &present).as_deref(),
            Some("inet_twsk_hashdance")
        );
        assert_eq!(
            resolve("inet_twsk_kill", &present).as_deref(),
            Some("inet_twsk_kill")
        );
        assert_eq!(resolve("inet_bind_sk", &present), None);
    }
}
