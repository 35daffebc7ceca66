//! The process's stdout and stderr, as the daemon must treat them: stderr written without
//! caring whether anyone reads it, stdout written straight to fd 1 (by one writer thread) and
//! watched for its reader going away.

use std::{
    fmt,
    io::{self, Write},
};

/// Writes to stderr and ignores failure: a closed or broken stderr (a dropped ssh session, a
/// log reader that quit) must not stop the trace, and there is nowhere left to say so.
/// `eprint!` would panic instead (exit 101).
pub fn eprint(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `eprintln!` that never panics: see `eprint`.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::sys::stdio::eprint(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// fd 1, unbuffered and bypassing `std::io::Stdout`: a write blocked here holds no lock the
/// rest of the process (or its exit, which flushes `Stdout`) could wait on.
pub struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid buffer of buf.len() bytes to fd 1.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        // A stdout inherited non-blocking (O_NONBLOCK is shared with whoever else has the
        // pipe): this thread may block, so wait until it takes more, then try again.
        if err.kind() == io::ErrorKind::WouldBlock {
            let mut fds = libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd; blocks only this writer thread.
            unsafe { libc::poll(&mut fds, 1, -1) };
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        // As `std::io::stdout` does: no stdout at all (started with fd 1 closed) swallows
        // the output rather than failing the trace.
        if err.raw_os_error() == Some(libc::EBADF) {
            return Ok(buf.len());
        }
        Err(err)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether stdout's reader is gone, found without writing: the read end of a pipe closed
/// (POLLERR), a socket shut down or a terminal hung up (POLLHUP). A file, /dev/null or a
/// stdout that is not open is never gone.
pub fn stdout_hung_up() -> bool {
    let mut fds = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout: it does not block.
    let ready = unsafe { libc::poll(&mut fds, 1, 0) };
    ready > 0 && fds.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// For the one-shot subcommands (check, explain): a reader that goes away (`| head`) ends
/// the process quietly, as it does any Unix filter, instead of `println!` panicking on
/// EPIPE (Rust ignores SIGPIPE). The trace keeps it ignored: it handles EPIPE itself.
pub fn die_on_broken_pipe() {
    // SAFETY: restores the default disposition of one signal; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
