//! The kprobe backend (distribution kernels): kprobes and kretprobes where Linux chooses and
//! frees ports (port-trace-ebpf/src/kprobe/mod.rs has the table of functions).

use std::collections::HashSet;

use aya::{
    Ebpf,
    programs::{KProbe, ProgramError},
};

use super::{Hooks, load_error, program};
use crate::error::Fatal;

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

/// Whether this kernel can attach kprobes the way aya does (kernels >= 4.17): through the
/// kprobe PMU, which exists only with CONFIG_KPROBE_EVENTS.
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

pub fn attach(ebpf: &mut Ebpf, hooks: &mut Hooks) -> Result<(), Fatal> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")?;
    let present = present_functions(&kallsyms);
    for (name, functions) in PROBES {
        let kind = if name.starts_with("kr_") {
            "kretprobe"
        } else {
            "kprobe"
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
            let prog: &mut KProbe = program(ebpf, name)?;
            prog.load().map_err(|e| load_error(name, e))?;
            for (function, wanted) in resolved.iter().zip(functions) {
                let function = function.as_deref().ok_or_else(|| {
                    Fatal::Unsupported(format!("this kernel has no {wanted} (/proc/kallsyms)"))
                })?;
                prog.attach(function, 0)
                    .map_err(|e: ProgramError| load_error(name, e))?;
            }
            Ok(())
        })?;
    }
    Ok(())
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
