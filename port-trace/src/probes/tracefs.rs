//! tracefs: mounted if it is not (as bpftrace does), the layout of the syscall exit
//! tracepoints read from their `format` files rather than assumed, and the kprobe events
//! the kprobe backend makes (`kprobe_events`) with what they missed (`kprobe_profile`).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at /sys/kernel/tracing when nothing is mounted.
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    if let Some(root) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(root.to_path_buf());
    }
    let target = Path::new(MOUNT_POINTS[0]);
    let c = |s: &str| CString::new(s).context("path with a NUL byte");
    let (source, dir, fstype) = (c("nodev")?, c(MOUNT_POINTS[0])?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it at {} failed: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(target.to_path_buf())
}

/// The byte offset of field `name` in a tracepoint `format` file's text.
pub fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let field_name = declaration.split_whitespace().last()?;
        if field_name != name {
            return None;
        }
        parts
            .find_map(|p| p.strip_prefix("offset:"))
            .and_then(|o| o.parse().ok())
    })
}

/// Where `ret` sits in `syscalls:sys_exit_bind` and `sys_exit_connect` (the same in both).
pub fn syscall_exit_ret_offset(root: &Path) -> anyhow::Result<u32> {
    let mut offsets = Vec::new();
    for event in ["sys_exit_bind", "sys_exit_connect"] {
        let path = root.join("events/syscalls").join(event).join("format");
        let format = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (CONFIG_FTRACE_SYSCALLS?)", path.display()))?;
        offsets.push(field_offset(&format, "ret").context("no `ret` field in the format")?);
    }
    if offsets[0] != offsets[1] {
        bail!("sys_exit_bind and sys_exit_connect disagree on where `ret` is");
    }
    Ok(offsets[0])
}

/// The tracefs group of port-trace's kprobe events.
const GROUP: &str = "port_trace";

/// Where a kprobe event fires: at the function's entry, or at its return, with `maxactive`
/// calls at once tracked (a call beyond them is missed, and counted in `kprobe_profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Entry,
    Return { maxactive: u32 },
}

/// A kprobe event port-trace made in `kprobe_events`, removed when dropped (the perf event
/// attached to it must be closed first: the kernel refuses to remove an event in use).
pub struct ProbeEvent {
    root: PathBuf,
    /// Unique to this process (`kprobe_profile` lists events by name alone, without group).
    pub(super) name: String,
    /// Its tracepoint id, for perf_event_open.
    pub(super) id: u64,
}

impl ProbeEvent {
    /// Makes the event for `program` at kernel function `function`.
    pub fn create(
        root: &Path,
        program: &str,
        function: &str,
        kind: ProbeKind,
    ) -> anyhow::Result<Self> {
        let name = event_name(std::process::id(), program, function);
        write_kprobe_events(root, &definition(&name, function, kind)).context(
            "cannot make kprobe events (is tracefs read-only, or denied by an AppArmor \
             profile? --backend tracepoint needs none)",
        )?;
        // From here the event exists: dropping `event` removes it on any error below.
        let mut event = Self {
            root: root.to_path_buf(),
            name,
            id: 0,
        };
        let id_file = root.join("events").join(GROUP).join(&event.name).join("id");
        event.id = std::fs::read_to_string(&id_file)
            .with_context(|| format!("reading {}", id_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", id_file.display()))?;
        Ok(event)
    }
}

impl Drop for ProbeEvent {
    fn drop(&mut self) {
        if let Err(e) = write_kprobe_events(&self.root, &format!("-:{GROUP}/{}", self.name)) {
            tracing::debug!("could not remove kprobe event {}: {e:#}", self.name);
        }
    }
}

/// `pt<pid>_<program>_<function>`, in the characters an event name may have.
fn event_name(pid: u32, program: &str, function: &str) -> String {
    format!("pt{pid}_{program}_{function}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The line `kprobe_events` takes to make an event (`p:` or `r<maxactive>:`).
fn definition(name: &str, function: &str, kind: ProbeKind) -> String {
    let prefix = match kind {
        ProbeKind::Entry => "p".to_string(),
        ProbeKind::Return { maxactive } => format!("r{maxactive}"),
    };
    format!("{prefix}:{GROUP}/{name} {function}")
}

fn write_kprobe_events(root: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = root.join("kprobe_events");
    // Appending, never truncating: O_TRUNC would clear every kprobe event on the host, other
    // tools' included.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        // The path, not the line: every probe's failure reads the same (`check` says it once).
        .with_context(|| format!("writing to {}", path.display()))
}

/// Removes the kprobe events of port-trace processes that are gone (killed before they
/// could remove their own), so they do not pile up in `kprobe_events`; and those with this
/// process's pid, which it has made none of yet: a port-trace that is pid 1 in a container,
/// killed and restarted, would otherwise find its old names taken. (An event another
/// port-trace has attached is never removed: the kernel refuses, as it is in use.)
pub fn remove_stale_probe_events(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("events").join(GROUP)) else {
        return;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(pid) = event_pid(&name) else {
            continue;
        };
        let stale = pid == std::process::id() || !crate::sys::procfs::process_exists(pid);
        if stale && let Err(e) = write_kprobe_events(root, &format!("-:{GROUP}/{name}")) {
            tracing::debug!("could not remove a stale kprobe event: {e:#}");
        }
    }
}

/// The pid in an `event_name`.
fn event_pid(name: &str) -> Option<u32> {
    name.strip_prefix("pt")?.split('_').next()?.parse().ok()
}

/// The hits `kprobe_profile` says the events named `names` missed, summed: a kprobe that
/// fired while another kprobe's handler ran on that CPU, or a return beyond `maxactive`.
/// (Its lines: `  <event> <hits> <missed>`.)
pub fn probe_events_missed<'a>(profile: &str, names: impl IntoIterator<Item = &'a str>) -> u64 {
    let missed: std::collections::HashMap<&str, u64> = profile
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (name, _hits, missed) = (words.next()?, words.next()?, words.next()?);
            Some((name, missed.parse().ok()?))
        })
        .collect();
    names.into_iter().filter_map(|name| missed.get(name)).sum()
}

/// `kprobe_profile`'s text, or empty where it cannot be read.
pub fn kprobe_profile(root: &Path) -> String {
    std::fs::read_to_string(root.join("kprobe_profile")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_defines_kprobe_events() {
        let name = event_name(4242, "kp_tw_hashdance", "inet_twsk_hashdance.isra.0");
        assert_eq!(name, "pt4242_kp_tw_hashdance_inet_twsk_hashdance_isra_0");
        assert_eq!(event_pid(&name), Some(4242));
        assert_eq!(event_pid("ptx_kp_bind_inet_bind"), None);
        assert_eq!(event_pid("other_tool_event"), None);
        assert_eq!(
            definition(
                "pt1_kr_bind_inet_bind",
                "inet_bind",
                ProbeKind::Return { maxactive: 64 }
            ),
            "r64:port_trace/pt1_kr_bind_inet_bind inet_bind"
        );
        assert_eq!(
            definition("pt1_kp_bind_inet_bind", "inet_bind", ProbeKind::Entry),
            "p:port_trace/pt1_kp_bind_inet_bind inet_bind"
        );
    }

    #[test]
    fn sums_what_our_events_missed() {
        let profile = "  pt7_kr_hash_connect___inet_hash_connect              4801               3\n\
                       \x20 pt7_kp_put_port_inet_put_port                           4790              11\n\
                       \x20 pt8_kp_put_port_inet_put_port                            100              50\n\
                       \x20 garbage\n";
        let ours = [
            "pt7_kr_hash_connect___inet_hash_connect",
            "pt7_kp_put_port_inet_put_port",
        ];
        assert_eq!(probe_events_missed(profile, ours), 14);
        assert_eq!(probe_events_missed(profile, ["pt9_none"]), 0);
        assert_eq!(probe_events_missed("", ours), 0);
    }

    const SYS_EXIT_BIND: &str = "name: sys_exit_bind
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"0x%lx\", REC->ret
";

    #[test]
    fn reads_field_offsets() {
        assert_eq!(field_offset(SYS_EXIT_BIND, "ret"), Some(16));
        assert_eq!(field_offset(SYS_EXIT_BIND, "__syscall_nr"), Some(8));
        assert_eq!(field_offset(SYS_EXIT_BIND, "common_pid"), Some(4));
        assert_eq!(field_offset(SYS_EXIT_BIND, "retval"), None);
        assert_eq!(field_offset("garbage", "ret"), None);
    }
}
