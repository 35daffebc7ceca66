//! tracefs: mounted if it is not (as bpftrace does), and the layout of the syscall exit
//! tracepoints read from their `format` files rather than assumed.

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

#[cfg(test)]
mod tests {
    use super::*;

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
