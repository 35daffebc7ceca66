//! stdout through a bounded queue and a thread of its own, so that stdout can never stop the
//! trace: the event loop hands whole lines to the queue and never waits; the writer thread
//! does the blocking writes. A reader that stalls fills the queue, and what does not fit is
//! dropped and counted (`dropped_lines`), not waited for. A reader that goes away (EPIPE on a
//! write, or found by polling while there is nothing to write, as with `| head` and a filter
//! that matches nothing) ends the writer, which says so on `Ended`: the trace stops cleanly.

use std::{
    io::{self, Write},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::sys::stdio::{RawStdout, stdout_hung_up};

/// Chunks the queue holds: with `CHUNK_BYTES`, what a stalled reader can cost in memory
/// (about 4 MiB).
const QUEUE_CHUNKS: usize = 64;

/// A chunk is handed to the writer once it holds this much (or at each flush, after every
/// batch of events).
const CHUNK_BYTES: usize = 64 * 1024;

/// How often an idle writer checks whether stdout's reader is gone.
const HANG_UP_POLL: Duration = Duration::from_millis(200);

/// Why stdout's writer stopped before the trace did.
#[derive(Debug)]
pub enum Ended {
    /// The reader went away (EPIPE, or a pipe or socket or terminal that hung up): the trace
    /// ends cleanly, as a command whose output is no longer wanted.
    ReaderGone,
    /// Writing failed otherwise (EIO, ENOSPC, ...).
    Failed(io::Error),
}

/// Whole lines, and how many.
struct Chunk {
    bytes: Vec<u8>,
    lines: u64,
}

/// What the writer thread tells the queue's side.
#[derive(Default)]
struct Progress {
    /// Lines written in full.
    written: u64,
    /// The writer has stopped (reader gone or a failed write).
    stopped: bool,
    /// The trace is ending and stopped waiting for a stalled reader: discard the rest.
    abandoned: bool,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        // The writer holds the lock only to count: a panic there leaves valid counts.
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.progress());
        self.changed.notify_all();
    }
}

/// The event loop's end of stdout: a `Write` that never blocks.
pub struct QueuedStdout {
    /// None once closed.
    queue: Option<SyncSender<Chunk>>,
    /// Lines not yet handed to the writer.
    pending: Vec<u8>,
    /// Lines the writer accepted.
    queued: u64,
    /// Lines dropped because the queue was full or the writer had stopped.
    dropped: u64,
    shared: Arc<Shared>,
}

impl QueuedStdout {
    /// Starts the writer thread on fd 1. The receiver learns if it stops before the trace.
    pub fn start() -> io::Result<(Self, oneshot::Receiver<Ended>)> {
        let (queue, chunks) = sync_channel(QUEUE_CHUNKS);
        let (ended_tx, ended) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        let writer_shared = Arc::clone(&shared);
        thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let ending = write_chunks(&chunks, &mut RawStdout, &writer_shared);
                writer_shared.update(|p| p.stopped = true);
                if let Some(ending) = ending {
                    let _ = ended_tx.send(ending);
                }
            })?;
        Ok((
            Self {
                queue: Some(queue),
                pending: Vec::with_capacity(CHUNK_BYTES),
                queued: 0,
                dropped: 0,
                shared,
            },
            ended,
        ))
    }

    /// Lines dropped so far: the reader did not keep up, or was gone.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped
    }

    /// Whether stdout takes no more: the writer has stopped (the reader is gone, or writing
    /// failed), or the end of the trace gave up on a stalled reader (so the last summary
    /// goes to stderr rather than into a queue about to be discarded).
    pub fn stopped(&self) -> bool {
        let progress = self.shared.progress();
        progress.stopped || progress.abandoned
    }

    /// Hands what is pending to the writer and waits until it has written everything, for
    /// up to `grace`. Whatever is still queued then is given up: discarded, and counted as
    /// dropped. Once given up, later calls do not wait.
    pub fn settle(&mut self, grace: Duration) {
        self.hand_over();
        let deadline = Instant::now() + grace;
        let mut progress = self.shared.progress();
        while progress.written < self.queued && !progress.stopped && !progress.abandoned {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                progress.abandoned = true;
                break;
            }
            progress = self
                .shared
                .changed
                .wait_timeout(progress, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if progress.written < self.queued {
            self.dropped += self.queued - progress.written;
            self.queued = progress.written;
        }
    }

    /// Sends the pending lines as one chunk, or counts them as dropped.
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.pending);
        let lines = line_count(&bytes);
        let Some(queue) = &self.queue else {
            self.dropped += lines;
            self.pending = bytes;
            self.pending.clear();
            return;
        };
        match queue.try_send(Chunk { bytes, lines }) {
            Ok(()) => {
                self.queued += lines;
                self.pending = Vec::with_capacity(CHUNK_BYTES);
            }
            Err(TrySendError::Full(chunk) | TrySendError::Disconnected(chunk)) => {
                self.dropped += chunk.lines;
                // The chunk's buffer serves again: a stall costs no allocations.
                self.pending = chunk.bytes;
                self.pending.clear();
            }
        }
    }
}

impl Write for QueuedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        // Only whole lines go: a line is written in full or dropped in full.
        if self.pending.len() >= CHUNK_BYTES && self.pending.ends_with(b"\n") {
            self.hand_over();
        }
        Ok(buf.len())
    }

    /// Hands everything written so far to the writer (or counts it dropped); never waits.
    fn flush(&mut self) -> io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

/// The writer thread: writes chunks until the queue closes (None) or stdout fails.
fn write_chunks(chunks: &Receiver<Chunk>, out: &mut impl Write, shared: &Shared) -> Option<Ended> {
    loop {
        match chunks.recv_timeout(HANG_UP_POLL) {
            Ok(chunk) => {
                if shared.progress().abandoned {
                    continue;
                }
                if let Err(err) = out.write_all(&chunk.bytes) {
                    return Some(match err.kind() {
                        io::ErrorKind::BrokenPipe => Ended::ReaderGone,
                        _ => Ended::Failed(err),
                    });
                }
                shared.update(|p| p.written += chunk.lines);
            }
            // Nothing to write: is anyone still reading?
            Err(RecvTimeoutError::Timeout) if stdout_hung_up() => return Some(Ended::ReaderGone),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn line_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes `limit` bytes, then fails as `error` says.
    struct Failing {
        taken: Vec<u8>,
        limit: usize,
        error: io::ErrorKind,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken.len() + buf.len() > self.limit {
                return Err(self.error.into());
            }
            self.taken.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunk(text: &str) -> Chunk {
        Chunk {
            bytes: text.as_bytes().to_vec(),
            lines: line_count(text.as_bytes()),
        }
    }

    #[test]
    fn writes_until_the_queue_closes_and_counts_lines() {
        let (tx, rx) = sync_channel(4);
        tx.send(chunk("a\nb\n")).expect("queued");
        tx.send(chunk("c\n")).expect("queued");
        drop(tx);
        let shared = Shared::default();
        let mut out = Failing {
            taken: Vec::new(),
            limit: usize::MAX,
            error: io::ErrorKind::BrokenPipe,
        };
        assert!(write_chunks(&rx, &mut out, &shared).is_none());
        assert_eq!(out.taken, b"a\nb\nc\n");
        assert_eq!(shared.progress().written, 3);
    }

    #[test]
    fn a_broken_pipe_is_the_reader_gone_and_other_errors_are_failures() {
        for (error, gone) in [
            (io::ErrorKind::BrokenPipe, true),
            (io::ErrorKind::StorageFull, false),
        ] {
            let (tx, rx) = sync_channel(4);
            tx.send(chunk("a\n")).expect("queued");
            tx.send(chunk("b\n")).expect("queued");
            let shared = Shared::default();
            let mut out = Failing {
                taken: Vec::new(),
                limit: 2,
                error,
            };
            let ended = write_chunks(&rx, &mut out, &shared);
            assert_eq!(matches!(ended, Some(Ended::ReaderGone)), gone, "{ended:?}");
            assert_eq!(shared.progress().written, 1);
        }
    }

    #[test]
    fn a_big_batch_goes_in_chunks_of_whole_lines() {
        let (queue, chunks) = sync_channel(4);
        let mut out = QueuedStdout {
            queue: Some(queue),
            pending: Vec::new(),
            queued: 0,
            dropped: 0,
            shared: Arc::new(Shared::default()),
        };
        // A line longer than a chunk, written in pieces, goes only once it is whole.
        out.write_all(&[b'x'; CHUNK_BYTES]).expect("never fails");
        out.write_all(b"y").expect("never fails");
        assert!(chunks.try_recv().is_err(), "half a line went");
        out.write_all(b"\n").expect("never fails");
        let chunk = chunks.try_recv().expect("the whole line");
        assert_eq!((chunk.bytes.len(), chunk.lines), (CHUNK_BYTES + 2, 1));
        assert_eq!(out.queued, 1);
    }

    #[test]
    fn a_full_queue_drops_whole_lines_and_counts_them() {
        let (queue, chunks) = sync_channel(1);
        let mut out = QueuedStdout {
            queue: Some(queue),
            pending: Vec::new(),
            queued: 0,
            dropped: 0,
            shared: Arc::new(Shared::default()),
        };
        writeln!(out, "one").expect("never fails");
        out.flush().expect("never fails");
        // Nobody reads: the queue (one chunk) is full.
        write!(out, "two\nthree\n").expect("never fails");
        out.flush().expect("never fails");
        assert_eq!(out.dropped_lines(), 2);
        assert_eq!(out.queued, 1);
        assert_eq!(chunks.try_recv().expect("first chunk").bytes, b"one\n");
        out.shared.update(|p| p.written += 1);
        // Nothing writes what is queued now: settling gives it up and counts it.
        writeln!(out, "four").expect("never fails");
        let started = Instant::now();
        out.settle(Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(out.dropped_lines(), 3, "four was never written");
        // Given up once, it waits no more.
        writeln!(out, "five").expect("never fails");
        let started = Instant::now();
        out.settle(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out.dropped_lines(), 4);
        assert!(out.shared.progress().abandoned);
    }
}
