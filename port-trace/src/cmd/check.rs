//! `port-trace check`: a one-screen answer to "will it work here, and with what".

use crate::{
    error::Fatal,
    probes::{BackendChoice, ProbeConfig, Probes, kprobe, preflight::Preflight, tracefs},
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
        });
        match survey {
            Ok(probes) => {
                line("ring buffer and maps", true, "");
                for hook in &probes.hooks {
                    match &hook.result {
                        Ok(()) => line(&hook.label, true, ""),
                        Err(err) => line(&hook.label, false, &brief(err)),
                    }
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
