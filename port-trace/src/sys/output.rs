//! Output files (`--report`, `--hdr-log`): checked and created before anything is attached,
//! written to a temporary file of our own beside the target, and renamed into place.
//!
//! port-trace runs as root and is pointed at paths such as /tmp/x.json, where another user
//! may have planted a symlink to a file of root's, or a file of their own. Opening the target
//! would write through the one and into the other; `rename()` instead replaces the name with
//! our new file and follows nothing. The temporary file is created with O_EXCL|O_NOFOLLOW,
//! so it is ours and new too. Every step after the first is relative to the directory as it
//! was opened then (openat, renameat, unlinkat): a directory swapped for a symlink meanwhile
//! (by whoever may write its parent) cannot send our file anywhere else.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    hash::{BuildHasher as _, Hasher as _},
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Why an output file cannot be written. Each names the file.
#[derive(Debug, Error)]
pub enum OutputError {
    #[error("{} is {what}, not a file", .path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{} names a directory, not a file", .path.display())]
    DirectoryName { path: PathBuf },
    #[error("cannot look at {}: {source}", .path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot create a new file in {} to write {}: {source}", .dir.display(), .path.display())]
    Create {
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("writing {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("putting {} in place: {source}", .path.display())]
    Rename { path: PathBuf, source: io::Error },
}

/// A target path with our temporary file beside it, ready to be written. Dropped before
/// `commit` or `publish`, the temporary file is removed and the target left as it was.
#[derive(Debug)]
pub struct OutputFile {
    target: PathBuf,
    /// The target's directory, opened once: every later step is relative to it.
    dir: OwnedFd,
    name: CString,
    /// The temporary file's name in `dir`; None once it is in place.
    temp: Option<CString>,
    file: Option<File>,
}

impl OutputFile {
    /// Checks `target` and creates the temporary file: a missing directory, one we may not
    /// write, a read-only or pseudo filesystem (/proc) all fail here, before any work.
    /// A symlink at `target` is fine (it will be replaced, never followed), and so is a
    /// regular file; a directory, device, fifo or socket is refused.
    pub fn prepare(target: &Path) -> Result<Self, OutputError> {
        let path = || target.to_path_buf();
        let (dir, name) =
            split(target).ok_or_else(|| OutputError::DirectoryName { path: path() })?;
        let create_error = |source| OutputError::Create {
            path: path(),
            dir: dir.clone(),
            source,
        };
        let dir_fd = open_dir(&dir).map_err(create_error)?;
        let name = c_name(&name).map_err(create_error)?;
        match kind_at(&dir_fd, &name) {
            Ok(kind) => {
                if let Some(what) = refused(kind) {
                    return Err(OutputError::NotAFile { path: path(), what });
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            // ENOTDIR (a file where a directory should be) and the like: say so now.
            Err(source) => {
                return Err(OutputError::Inspect {
                    path: path(),
                    source,
                });
            }
        }
        let (temp, file) = create_temp(&dir_fd, &name).map_err(create_error)?;
        Ok(Self {
            target: path(),
            dir: dir_fd,
            name,
            temp: Some(temp),
            file: Some(file),
        })
    }

    /// The path the output will have.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` to the temporary file.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        let file = self.file.as_mut().ok_or_else(|| OutputError::Write {
            path: self.target.clone(),
            source: io::Error::other("already closed"),
        })?;
        file.write_all(bytes).map_err(|source| OutputError::Write {
            path: self.target.clone(),
            source,
        })
    }

    /// Puts what was written in place of the target, whole: synced first, so a crash leaves
    /// the old file or the new one, never half of one.
    pub fn commit(mut self) -> Result<(), OutputError> {
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(|source| OutputError::Write {
                path: self.target.clone(),
                source,
            })?;
        }
        self.rename(true)
    }

    /// Puts the file in place now and hands back its descriptor, for an output written as
    /// it goes (readers see it grow).
    pub fn publish(mut self) -> Result<File, OutputError> {
        let file = self.file.take().ok_or_else(|| OutputError::Write {
            path: self.target.clone(),
            source: io::Error::other("already closed"),
        })?;
        self.rename(true)?;
        Ok(file)
    }

    /// Replaces the target's content with `bytes`, whole, as often as called (an output
    /// rewritten every interval): each time a new temporary file beside it, renamed into
    /// place, so a reader sees the old page or the new one, never half of one. `durable`
    /// syncs it first (the last write); between intervals the rename alone is enough.
    pub fn replace(&mut self, bytes: &[u8], durable: bool) -> Result<(), OutputError> {
        // A temporary file left by a failed call holds part of an older page: start anew,
        // or the next rename would publish that part with this page after it.
        self.discard_temp();
        let (temp, mut file) =
            create_temp(&self.dir, &self.name).map_err(|source| OutputError::Create {
                path: self.target.clone(),
                dir: split(&self.target).map(|(dir, _)| dir).unwrap_or_default(),
                source,
            })?;
        self.temp = Some(temp);
        let write_error = |source| OutputError::Write {
            path: self.target.clone(),
            source,
        };
        file.write_all(bytes).map_err(write_error)?;
        if durable {
            file.sync_all().map_err(write_error)?;
        }
        // Closed here either way: the next call makes a new one.
        drop(file);
        self.rename(durable)
    }

    /// Removes a temporary file not (yet) put in place.
    fn discard_temp(&mut self) {
        self.file = None;
        if let Some(temp) = self.temp.take() {
            // SAFETY: a NUL-terminated name relative to a directory fd we own.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
        }
    }

    /// Renames the temporary file over the target; `durable` syncs the directory too, so
    /// the new name survives a crash (an interval's page does not need to).
    fn rename(&mut self, durable: bool) -> Result<(), OutputError> {
        let Some(temp) = self.temp.as_ref() else {
            return Ok(());
        };
        let dir = self.dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated and relative to a directory fd we own.
        let renamed = unsafe { libc::renameat(dir, temp.as_ptr(), dir, self.name.as_ptr()) };
        if renamed != 0 {
            return Err(OutputError::Rename {
                path: self.target.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // In place: nothing left to clean up.
        self.temp = None;
        if durable {
            // Best effort: some filesystems refuse fsync on a directory.
            // SAFETY: fsync on a directory fd we own.
            unsafe { libc::fsync(dir) };
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        self.discard_temp();
    }
}

/// Opens `dir` as a directory (following the operator's path as given, once).
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let path = c_name(dir.as_os_str())?;
    // SAFETY: a NUL-terminated path; the fd returned is checked and then owned.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd of our own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The file type bits (`S_IFMT`) of `name` in `dir`, not following a symlink.
fn kind_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::mode_t> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated, dir an fd we own, st a valid out-buffer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// The directory `target` is in and its file name; None when it names a directory (`/`,
/// `..`, a trailing slash).
fn split(target: &Path) -> Option<(PathBuf, OsString)> {
    if target.as_os_str().as_bytes().ends_with(b"/") {
        return None;
    }
    let name = target.file_name()?.to_os_string();
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((dir, name))
}

/// What a file of this type (`S_IFMT` bits) is, when it cannot be an output; None for a
/// regular file or a symlink (replaced, not followed).
fn refused(kind: libc::mode_t) -> Option<&'static str> {
    match kind {
        libc::S_IFREG | libc::S_IFLNK => None,
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFIFO => Some("a fifo"),
        libc::S_IFSOCK => Some("a socket"),
        _ => Some("not a regular file"),
    }
}

/// A temporary file's name for `name`: hidden, saying whose it is, and unguessable, so no
/// one can take the names ahead of us (they would be skipped, but 100 of them would stop us).
fn temp_name(name: &OsStr) -> OsString {
    // RandomState is seeded from the OS's randomness: 64 unpredictable bits, from std.
    let random = std::hash::RandomState::new().build_hasher().finish();
    let mut temp = OsString::from(".");
    // Within NAME_MAX (255 bytes) with what is added.
    let bytes = name.as_bytes();
    temp.push(OsStr::from_bytes(&bytes[..bytes.len().min(200)]));
    temp.push(format!(".port-trace-{}-{random:016x}", std::process::id()));
    temp
}

/// Creates a new file of our own in `dir`, named after `name`.
fn create_temp(dir: &OwnedFd, name: &CString) -> io::Result<(CString, File)> {
    let name = OsStr::from_bytes(name.as_bytes());
    create_first(dir, (0..100).map(|_| temp_name(name)))
}

/// Creates the first of `names` in `dir` that is not taken: O_CREAT|O_EXCL, never an
/// existing file, never through a symlink planted at the name.
fn create_first(
    dir: &OwnedFd,
    names: impl IntoIterator<Item = OsString>,
) -> io::Result<(CString, File)> {
    let mut taken = io::Error::from(io::ErrorKind::AlreadyExists);
    for name in names {
        let temp = c_name(&name)?;
        // SAFETY: a NUL-terminated name relative to a directory fd we own; the fd returned
        // is checked and then owned.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                temp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd of our own.
            return Ok((temp, unsafe { File::from_raw_fd(fd) }));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::AlreadyExists {
            return Err(err);
        }
        taken = err;
    }
    Err(taken)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, symlink};

    use super::*;

    /// A fresh directory for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "port-trace-output-unit-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).expect("a temp dir");
            Dir(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .expect("readable")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn split_finds_the_directory_and_refuses_directory_names() {
        assert_eq!(
            split(Path::new("x.json")),
            Some((PathBuf::from("."), OsString::from("x.json")))
        );
        assert_eq!(
            split(Path::new("/tmp/x.json")),
            Some((PathBuf::from("/tmp"), OsString::from("x.json")))
        );
        assert_eq!(split(Path::new("/")), None);
        assert_eq!(split(Path::new("/tmp/")), None);
        assert_eq!(split(Path::new("a/..")), None);
        assert_eq!(split(Path::new("")), None);
    }

    #[test]
    fn refuses_what_is_not_a_file() {
        let dir = Dir::new("refuse");
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, says) in [
            (dir.0.clone(), "is a directory"),
            (PathBuf::from("/dev/null"), "is a character device"),
            (fifo, "is a fifo"),
        ] {
            let err = OutputFile::prepare(&path).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(says), "{text}");
            assert!(text.contains(&*path.to_string_lossy()), "{text}");
        }
        assert_eq!(dir.names(), ["fifo"], "no temporary file left");
    }

    #[test]
    fn a_missing_directory_fails_at_prepare() {
        let dir = Dir::new("missing");
        let target = dir.0.join("nope/x.json");
        let err = OutputFile::prepare(&target).expect_err("no directory");
        assert!(matches!(err, OutputError::Create { .. }), "{err}");
        assert!(err.to_string().contains("x.json"), "{err}");
        // A file where a directory should be.
        std::fs::write(dir.0.join("file"), "").expect("a file");
        let err = OutputFile::prepare(&dir.0.join("file/x.json")).expect_err("not a dir");
        assert!(err.to_string().contains("file/x.json"), "{err}");
    }

    #[test]
    fn commit_replaces_a_symlink_and_leaves_its_target_alone() {
        let dir = Dir::new("symlink");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let target = dir.0.join("out");
        symlink(&victim, &target).expect("symlink");
        let mut out = OutputFile::prepare(&target).expect("prepared");
        // Nothing changes until commit.
        assert!(
            std::fs::symlink_metadata(&target)
                .expect("there")
                .file_type()
                .is_symlink()
        );
        out.write_all(b"report").expect("written");
        out.commit().expect("committed");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        let meta = std::fs::symlink_metadata(&target).expect("there");
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read_to_string(&target).expect("out"), "report");
        assert_eq!(dir.names(), ["out", "victim"]);
    }

    #[test]
    fn publish_puts_the_file_in_place_and_keeps_writing_to_it() {
        let dir = Dir::new("publish");
        let target = dir.0.join("log");
        std::fs::write(&target, "old").expect("an old file");
        let before = std::fs::metadata(&target).expect("there").ino();
        let mut file = OutputFile::prepare(&target)
            .expect("prepared")
            .publish()
            .expect("published");
        assert_ne!(std::fs::metadata(&target).expect("there").ino(), before);
        file.write_all(b"line 1\n").expect("written");
        file.write_all(b"line 2\n").expect("written");
        assert_eq!(
            std::fs::read_to_string(&target).expect("log"),
            "line 1\nline 2\n"
        );
        assert_eq!(dir.names(), ["log"]);
    }

    #[test]
    fn replace_never_publishes_what_an_earlier_write_left_half_done() {
        let dir = Dir::new("replace-partial");
        let target = dir.0.join("page.html");
        let mut out = OutputFile::prepare(&target).expect("prepared");
        // What a write that failed midway (a full disk) leaves in the temporary file.
        out.write_all(b"half of an old pa").expect("written");
        out.replace(b"whole new page", false).expect("replaced");
        assert_eq!(
            std::fs::read_to_string(&target).expect("page"),
            "whole new page"
        );
        assert_eq!(dir.names(), ["page.html"]);
    }

    #[test]
    fn replace_rewrites_the_whole_file_each_time_and_leaves_no_temporary_file() {
        let dir = Dir::new("replace");
        let target = dir.0.join("page.html");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        symlink(&victim, &target).expect("symlink");
        let mut out = OutputFile::prepare(&target).expect("prepared");
        out.replace(b"first, longer", false).expect("replaced");
        assert_eq!(
            std::fs::read_to_string(&target).expect("page"),
            "first, longer"
        );
        let inode = std::fs::metadata(&target).expect("there").ino();
        out.replace(b"second", true).expect("replaced");
        assert_eq!(std::fs::read_to_string(&target).expect("page"), "second");
        assert_ne!(
            std::fs::metadata(&target).expect("there").ino(),
            inode,
            "a new file each time: a reader of the old one keeps it whole"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert_eq!(dir.names(), ["page.html", "victim"]);
    }

    #[test]
    fn dropped_uncommitted_leaves_the_target_as_it_was() {
        let dir = Dir::new("drop");
        let target = dir.0.join("out");
        std::fs::write(&target, "old").expect("an old file");
        let mut out = OutputFile::prepare(&target).expect("prepared");
        out.write_all(b"new").expect("written");
        assert_eq!(dir.names().len(), 2, "the temporary file is beside it");
        drop(out);
        assert_eq!(std::fs::read_to_string(&target).expect("out"), "old");
        assert_eq!(dir.names(), ["out"]);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_cannot_redirect_the_file() {
        let dir = Dir::new("swapped");
        let reports = dir.0.join("reports");
        let elsewhere = dir.0.join("elsewhere");
        std::fs::create_dir(&reports).expect("reports");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        let mut out = OutputFile::prepare(&reports.join("x.json")).expect("prepared");
        // Whoever may write the parent swaps the directory for a symlink to another one.
        std::fs::rename(&reports, dir.0.join("moved")).expect("moved");
        symlink(&elsewhere, &reports).expect("symlink");
        out.write_all(b"report").expect("written");
        out.commit().expect("committed");
        assert!(
            !elsewhere.join("x.json").exists(),
            "followed the swapped directory"
        );
        assert_eq!(
            std::fs::read_to_string(dir.0.join("moved/x.json")).expect("in place"),
            "report"
        );
    }

    #[test]
    fn a_taken_temporary_name_is_skipped_not_followed() {
        let dir = Dir::new("planted");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        symlink(&victim, dir.0.join("a")).expect("symlink");
        std::fs::write(dir.0.join("b"), "theirs").expect("a file");
        let fd = open_dir(&dir.0).expect("the directory");
        let (temp, mut file) =
            create_first(&fd, ["a".into(), "b".into(), "c".into()]).expect("created");
        assert_eq!(temp.as_bytes(), b"c");
        file.write_all(b"ours").expect("written");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert_eq!(
            std::fs::read_to_string(dir.0.join("b")).expect("b"),
            "theirs"
        );
        let err = create_first(&fd, ["a".into(), "b".into()]).expect_err("all taken");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn temporary_names_are_hidden_and_differ() {
        let (one, two) = (
            temp_name(OsStr::new("x.json")),
            temp_name(OsStr::new("x.json")),
        );
        assert_ne!(one, two);
        let one = one.to_string_lossy();
        assert!(one.starts_with(".x.json.port-trace-"), "{one}");
        let long = "x".repeat(255);
        assert!(temp_name(OsStr::new(&long)).len() <= 255);
    }
}
