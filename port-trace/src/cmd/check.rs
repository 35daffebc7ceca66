//! `port-trace check`: a one-screen answer to "will it work here, and with what".

use crate::{
    error::Fatal,
    probes::{BackendChoice, Hook, ProbeConfig, Probes, kprobe, preflight::Preflight, tracefs},
    sys::procfs::kernel_release,
};

fn line(what: &str, ok: bool, detail: &str) {
    println!(
        "  {:<56} {:<3} {detail}",
        what,
        if ok { "ok" } else { "no" }
    );
}

/// The first line of an error, short enough for the table.
fn brief(err: &str) -> String {
    let first = err.lines().next().unwrap_or_default();
    match first.char_indices().nth(90) {
        Some((cut, _)) => format!("{}...", &first[..cut]),
        None => first.to_string(),
    }
}

/// One row per hook, but one cause is said once: when every hook failed the same way, one
/// row for them all; otherwise a repeated cause points back to the row that gave it.
fn hook_rows(hooks: &[Hook]) -> Vec<(String, bool, String)> {
    let first_error = hooks.first().and_then(|h| h.result.as_ref().err());
    if let Some(error) = first_error
        && hooks.len() > 1
        && hooks.iter().all(|h| h.result.as_ref().err() == Some(error))
    {
        return vec![(format!("all {} programs", hooks.len()), false, brief(error))];
    }
    let mut said: Vec<(&str, &str)> = Vec::new();
    hooks
        .iter()
        .map(|hook| match &hook.result {
            Ok(()) => (hook.label.clone(), true, String::new()),
            Err(error) => match said.iter().find(|(e, _)| e == error) {
                Some((_, first)) => (hook.label.clone(), false, format!("same cause as {first}")),
                None => {
                    let name = hook.label.split_whitespace().next().unwrap_or_default();
                    said.push((error, name));
                    (hook.label.clone(), false, brief(error))
                }
            },
        })
        .collect()
}

fn uname() -> String {
    format!("{} {}", kernel_release(), std::env::consts::ARCH)
}

pub fn run() -> Result<(), Fatal> {
    println!("port-trace check: Linux {}", uname());
    let preflight = Preflight::evaluate()?;
    for check in preflight.checks() {
        line(check.name, check.ok, &check.detail);
    }
    match tracefs::ensure_mounted() {
        Ok(root) => line("tracefs", true, &root.display().to_string()),
        Err(err) => line("tracefs", false, &brief(&format!("{err:#}"))),
    }
    line(
        "kprobes",
        kprobe::available(),
        if kprobe::available() {
            kprobe::KPROBE_PMU
        } else {
            "no kprobe PMU (CONFIG_KPROBE_EVENTS is off)"
        },
    );
    if let Some(failure) = preflight.privileges.failure {
        return Err(failure);
    }

    let mut usable = Vec::new();
    for (name, backend) in [
        ("kprobe", BackendChoice::Kprobe),
        ("tracepoint", BackendChoice::Tracepoint),
    ] {
        println!("{name} backend:");
        let survey = Probes::attach(&ProbeConfig {
            backend,
            strict: false,
            max_sockets: 1024,
            ring_buffer_bytes: 64 * 1024,
            filter: Default::default(),
            count_map_ops: false,
            empty_programs: false,
            fallback_programs: false,
        });
        match survey {
            Ok(probes) => {
                line("ring buffer and maps", true, "");
                for (what, ok, detail) in hook_rows(&probes.hooks) {
                    line(&what, ok, &detail);
                }
                if probes.hooks.iter().all(|h| h.result.is_ok()) {
                    usable.push(name);
                }
                // Dropping the probes detaches every hook before the next backend is tried.
            }
            Err(err) => line("load", false, &brief(&err.to_string())),
        }
    }
    match usable.first() {
        Some(first) => {
            println!(
                "will work: backends {}; auto uses {first}",
                usable.join(", ")
            );
            Ok(())
        }
        None => Err(Fatal::Unsupported(
            "no backend attaches on this kernel (see above)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(label: &str, result: Result<(), &str>) -> Hook {
        Hook {
            label: label.to_string(),
            result: result.map_err(str::to_string),
        }
    }

    #[test]
    fn one_cause_is_said_once() {
        let pmu = "`/sys/bus/event_source/devices/kprobe/type`: No such file or directory";
        let all_same = [
            hook("kp_bind (kprobe x)", Err(pmu)),
            hook("kr_bind (x)", Err(pmu)),
        ];
        assert_eq!(
            hook_rows(&all_same),
            [("all 2 programs".to_string(), false, pmu.to_string())]
        );
        let mixed = [
            hook("a (x)", Ok(())),
            hook("b (y)", Err("EINVAL")),
            hook("c (z)", Err("EINVAL")),
            hook("d (w)", Err("ENOENT")),
        ];
        let rows: Vec<String> = hook_rows(&mixed).into_iter().map(|r| r.2).collect();
        assert_eq!(rows, ["", "EINVAL", "same cause as b", "ENOENT"]);
    }
}
