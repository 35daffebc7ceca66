//! The cgroup v2 hierarchy: where it is mounted, and which directory a cgroup id names.
//!
//! A cgroup v2 id (what `bpf_get_current_cgroup_id()` returns) is the kernfs node id of the
//! cgroup's directory, which on 64-bit kernels is also its inode number. kernfs allocates
//! the low 32 bits cyclically and bumps the high 32 on each wrap (fs/kernfs/dir.c,
//! `__kernfs_new_node`), so an id is never reused within a boot: a name found for an id
//! stays right after the cgroup is gone.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

/// kernfs's file handle type (`FILEID_KERNFS` in include/linux/exportfs.h): 8 bytes, the
/// node id.
const FILEID_KERNFS: i32 = 0xfe;

/// How many directories the fallback walk reads at most (a busy Kubernetes node has a few
/// thousand cgroups): its index holds as many paths.
const WALK_LIMIT: usize = 50_000;

/// How often the fallback walk may read the whole tree again, for an id it has not seen.
const WALK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A mounted cgroup v2 hierarchy.
#[derive(Debug)]
pub struct CgroupRoot {
    /// Where it is mounted here (`/sys/fs/cgroup`, `/sys/fs/cgroup/unified`, or under a host
    /// root).
    mount: PathBuf,
    /// The cgroup path the mount shows at its top (`/` unless a cgroup namespace or a bind
    /// mount shows only part of the tree): prefixed to what is found under `mount`.
    base: String,
    /// The mount, open, for open_by_handle_at; None if it could not be opened.
    dir: Option<File>,
    /// open_by_handle_at was refused (no CAP_DAC_READ_SEARCH, or a kernel without kernfs
    /// handles): the walk is used from then on.
    handles_refused: std::cell::Cell<bool>,
    /// What the fallback walk found last.
    walked: std::cell::RefCell<Walked>,
    /// The path of our own cgroup namespace's root, where it could be found: in a container
    /// with a cgroup namespace of its own, /proc/PID/cgroup names cgroups relative to it
    /// (`/../../system.slice/nginx.service`).
    namespace_root: Option<String>,
}

/// What became of a lookup of a cgroup id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its path in the v2 hierarchy (`/docker/<id>`).
    Found(String),
    /// The kernel says no such cgroup exists (any more).
    Gone,
    /// It could not be looked up now (out of file descriptors, the walk's bound reached).
    Unknown,
}

impl CgroupRoot {
    /// The cgroup v2 hierarchy as seen under `host_root` (`/` normally; the host's `/`
    /// mounted into a container otherwise). None without cgroup v2.
    pub fn find(host_root: &Path) -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = parse_mountinfo(&mountinfo);
        let (mount, base) = choose_mount(&mounts, host_root)
            .or_else(|| conventional_mount(host_root).map(|m| (m, "/".to_string())))?;
        // A mount outside our cgroup namespace shows its root as `/..`-something: the host's
        // whole tree bind-mounted into our container, most likely.
        let mut root = Self::at(mount, above_namespace(&base).1.to_string());
        // Our namespace's own mount (root `/` as we see it), if we have one beside the
        // host's: its directory's id, looked up in the host's tree, is where we are.
        root.namespace_root = mounts
            .iter()
            .filter(|m| m.root == "/" && m.point != root.mount)
            .filter_map(|m| std::fs::metadata(&m.point).ok())
            .find_map(|meta| match root.path_of(meta.ino()) {
                Lookup::Found(path) if path != "/" => Some(path),
                _ => None,
            });
        Some(root)
    }

    /// The path of cgroup `path` from the hierarchy's root, for a path /proc/PID/cgroup
    /// gave relative to our cgroup namespace (`/sub`, `/../../system.slice/x.service`).
    pub fn full_path(&self, path: &str) -> String {
        let (ups, rest) = above_namespace(path);
        // Without our namespace's root (none of our own, or not found), the best guess: the
        // two meet at the top.
        let Some(namespace_root) = &self.namespace_root else {
            return rest.to_string();
        };
        let mut parts: Vec<&str> = namespace_root
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        parts.truncate(parts.len().saturating_sub(ups));
        parts.extend(rest.split('/').filter(|p| !p.is_empty()));
        format!("/{}", parts.join("/"))
    }

    /// The hierarchy mounted at `mount`, which shows cgroup `base` at its top.
    pub fn at(mount: PathBuf, base: String) -> Self {
        // As the kernel spells it, so that what readlink gives starts with it.
        let mount = std::fs::canonicalize(&mount).unwrap_or(mount);
        let dir = File::open(&mount).ok();
        Self {
            mount,
            base,
            dir,
            handles_refused: std::cell::Cell::new(false),
            walked: std::cell::RefCell::default(),
            namespace_root: None,
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The cgroup path of a directory under the mount, or None if it is not under it.
    fn cgroup_path(&self, dir: &Path) -> Option<String> {
        let relative = dir.strip_prefix(&self.mount).ok()?;
        let relative = relative.to_str()?;
        Some(join_cgroup(&self.base, relative))
    }

    /// The directory of cgroup `path` (as /proc/PID/cgroup names it) under the mount.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let below = path.strip_prefix(self.base.trim_end_matches('/'))?;
        if !(below.is_empty() || below.starts_with('/')) || below.contains("/../") {
            return None;
        }
        Some(self.mount.join(below.trim_start_matches('/')))
    }

    /// The id of cgroup `path`: its directory's inode number.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        std::fs::metadata(self.dir_of(path)?).ok().map(|m| m.ino())
    }

    /// The path of cgroup `id`: by kernfs file handle (one open and one readlink), or where
    /// that is refused, by walking the hierarchy comparing inode numbers.
    pub fn path_of(&self, id: u64) -> Lookup {
        if !self.handles_refused.get()
            && let Some(dir) = &self.dir
        {
            match open_by_id(dir, id) {
                Ok(fd) => return self.path_of_fd(&fd),
                // kernfs answers ESTALE for an id it has no (active) node for.
                Err(err) if err.raw_os_error() == Some(libc::ESTALE) => return Lookup::Gone,
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                    ) =>
                {
                    tracing::debug!(
                        "open_by_handle_at on {} refused ({err}): finding cgroups by walking",
                        self.mount.display()
                    );
                    self.handles_refused.set(true);
                }
                Err(err) => {
                    tracing::debug!("cgroup {id}: open_by_handle_at failed: {err}");
                    return Lookup::Unknown;
                }
            }
        }
        self.walk_for(id)
    }

    fn path_of_fd(&self, fd: &OwnedFd) -> Lookup {
        let link = match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(link) => link,
            Err(_) => return Lookup::Unknown,
        };
        // Removed between the open and the readlink.
        if link.as_os_str().as_bytes().ends_with(b" (deleted)") {
            return Lookup::Gone;
        }
        self.cgroup_path(&link)
            .map_or(Lookup::Unknown, Lookup::Found)
    }

    /// The path of `id` from a walk of the hierarchy: the last walk's index, or a new walk
    /// when that is over a second old.
    fn walk_for(&self, id: u64) -> Lookup {
        let mut walked = self.walked.borrow_mut();
        if let Some(answer) = walked.answer(id) {
            return answer;
        }
        if walked.at.is_some_and(|at| at.elapsed() < WALK_EVERY) {
            return Lookup::Unknown;
        }
        let (paths, complete) = self.walk();
        let previous_max = walked.complete_max;
        *walked = Walked {
            complete_max: complete.then(|| paths.keys().copied().max().unwrap_or(0)),
            trusted_max: if complete { previous_max } else { None },
            paths,
            at: Some(std::time::Instant::now()),
        };
        walked.answer(id).unwrap_or(Lookup::Unknown)
    }

    /// Every cgroup's id and path, breadth-first, reading at most `WALK_LIMIT` directories;
    /// whether that was all of them.
    fn walk(&self) -> (HashMap<u64, String>, bool) {
        let mut paths = HashMap::new();
        let mut queue = std::collections::VecDeque::from([self.mount.clone()]);
        while let Some(dir) = queue.pop_front() {
            if paths.len() >= WALK_LIMIT {
                return (paths, false);
            }
            if let Ok(meta) = std::fs::metadata(&dir)
                && let Some(path) = self.cgroup_path(&dir)
            {
                paths.insert(meta.ino(), path);
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            queue.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        (paths, true)
    }
}

/// What the last walk of the hierarchy found.
#[derive(Debug, Default)]
struct Walked {
    /// Every cgroup's id and path. An id's path stays right after its cgroup is removed.
    paths: HashMap<u64, String>,
    /// The highest id this walk saw, if it read the whole tree.
    complete_max: Option<u64>,
    /// The highest id the walk before saw, if both read the whole tree. Ids are handed out
    /// in increasing order, so a cgroup with an id up to it existed before this walk began,
    /// and this walk would have seen it, had it not been removed. (Not this walk's own
    /// highest: a cgroup made during the walk, where it had already read, is missed while a
    /// newer one is seen.)
    trusted_max: Option<u64>,
    at: Option<std::time::Instant>,
}

impl Walked {
    fn answer(&self, id: u64) -> Option<Lookup> {
        if let Some(path) = self.paths.get(&id) {
            return Some(Lookup::Found(path.clone()));
        }
        self.trusted_max
            .is_some_and(|max| id <= max)
            .then_some(Lookup::Gone)
    }
}

/// How many `..` a cgroup path starts with (a cgroup outside our cgroup namespace), and the
/// path after them (`/`-rooted).
fn above_namespace(path: &str) -> (usize, &str) {
    let mut rest = path;
    let mut ups = 0;
    while let Some(after) = rest.strip_prefix("/..") {
        if !(after.is_empty() || after.starts_with('/')) {
            break;
        }
        ups += 1;
        rest = after;
    }
    (ups, if rest.is_empty() { "/" } else { rest })
}

/// `base` + `relative`, as a cgroup path (`/`-rooted, no trailing slash).
fn join_cgroup(base: &str, relative: &str) -> String {
    let base = base.trim_end_matches('/');
    if relative.is_empty() {
        if base.is_empty() {
            "/".into()
        } else {
            base.into()
        }
    } else {
        format!("{base}/{relative}")
    }
}

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

/// Opens the cgroup directory whose kernfs node id is `id`, on the hierarchy `mount` is open
/// on.
fn open_by_id(mount: &File, id: u64) -> io::Result<OwnedFd> {
    let handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: a file handle laid out as the kernel's struct file_handle with 8 bytes of
    // f_handle, valid for the call; the fd returned is ours to own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &handle as *const KernfsHandle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A cgroup2 mount from /proc/self/mountinfo: (mount point, root within the hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    root: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional...] - fstype source opts
            let (before, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = before.split_whitespace().collect();
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Some(code) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount to use: one under `host_root` if there is one (the host's hierarchy mounted into
/// our container), else any; of those, the one showing the most of the tree.
fn choose_mount(mounts: &[Mount], host_root: &Path) -> Option<(PathBuf, String)> {
    let under_host = |m: &&Mount| host_root != Path::new("/") && m.point.starts_with(host_root);
    let pick = |candidates: Vec<&Mount>| {
        candidates
            .into_iter()
            .min_by_key(|m| (m.root.len(), m.point.components().count()))
            .map(|m| (m.point.clone(), m.root.clone()))
    };
    let hosts: Vec<&Mount> = mounts.iter().filter(under_host).collect();
    if !hosts.is_empty() {
        return pick(hosts);
    }
    pick(mounts.iter().collect())
}

/// Where cgroup2 is mounted by convention under `host_root`: unified, or hybrid.
fn conventional_mount(host_root: &Path) -> Option<PathBuf> {
    ["sys/fs/cgroup", "sys/fs/cgroup/unified"]
        .iter()
        .map(|p| host_root.join(p))
        .find(|p| p.join("cgroup.controllers").exists() || p.join("cgroup.procs").exists())
}

/// The handle kernfs gives for `path`, as (type, id): for tests and diagnostics.
pub fn handle_of(path: &Path) -> io::Result<(i32, u64)> {
    #[repr(C)]
    struct Buffer {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 128],
    }
    let mut buffer = Buffer {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: a buffer as large as it says, a NUL-terminated path, an int for the mount id.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            name.as_ptr(),
            &mut buffer as *mut Buffer,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&buffer.f_handle[..8]);
    Ok((buffer.handle_type, u64::from_ne_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_in_hybrid_and_unified_layouts() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(
            choose_mount(&mounts, Path::new("/")),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".into()))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            choose_mount(&parse_mountinfo(unified), Path::new("/")),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".into()))
        );
        assert_eq!(choose_mount(&parse_mountinfo(""), Path::new("/")), None);
    }

    #[test]
    fn prefers_the_hosts_hierarchy_under_a_host_root() {
        // Inside a container: its own namespaced cgroup2, and the host's under /host.
        let text = "\
700 600 0:26 /kubepods/pod1/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw
701 600 0:26 / /host/sys/fs/cgroup ro,relatime - cgroup2 cgroup2 rw
";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            choose_mount(&mounts, Path::new("/host")),
            Some((PathBuf::from("/host/sys/fs/cgroup"), "/".into()))
        );
        // A namespaced mount shows its root: paths under it are prefixed with it.
        let root = CgroupRoot::at("/sys/fs/cgroup".into(), "/kubepods/pod1/abc".into());
        assert_eq!(
            root.cgroup_path(Path::new("/sys/fs/cgroup/sub")).as_deref(),
            Some("/kubepods/pod1/abc/sub")
        );
        assert_eq!(
            root.dir_of("/kubepods/pod1/abc/sub"),
            Some(PathBuf::from("/sys/fs/cgroup/sub"))
        );
        assert_eq!(root.dir_of("/kubepods/pod1/abcd"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/odd\04"), r"/odd\04");
    }

    #[test]
    fn paths_from_inside_a_cgroup_namespace() {
        assert_eq!(above_namespace("/docker/x"), (0, "/docker/x"));
        assert_eq!(
            above_namespace("/../../system.slice/a.service"),
            (2, "/system.slice/a.service")
        );
        assert_eq!(above_namespace("/../.."), (2, "/"));
        assert_eq!(above_namespace("/..x/y"), (0, "/..x/y"));
        let mut root = CgroupRoot::at("/host/sys/fs/cgroup".into(), "/".into());
        assert_eq!(
            root.full_path("/../../system.slice/a.service"),
            "/system.slice/a.service"
        );
        // We run in /kubepods/burstable/podA/ctr1: a neighbour pod is three up, then down.
        root.namespace_root = Some("/kubepods/burstable/podA/ctr1".into());
        assert_eq!(
            root.full_path("/../../podB/ctr2"),
            "/kubepods/burstable/podB/ctr2"
        );
        assert_eq!(
            root.full_path("/../../../../system.slice/a.service"),
            "/system.slice/a.service"
        );
        assert_eq!(
            root.full_path("/"),
            "/kubepods/burstable/podA/ctr1",
            "our own namespace's root"
        );
        assert_eq!(root.full_path("/sub"), "/kubepods/burstable/podA/ctr1/sub");
        root.namespace_root = None;
        assert_eq!(
            root.full_path("/docker/x"),
            "/docker/x",
            "no namespace of our own"
        );
    }

    #[test]
    fn the_root_is_slash() {
        let root = CgroupRoot::at("/x".into(), "/".into());
        assert_eq!(root.cgroup_path(Path::new("/x")).as_deref(), Some("/"));
        assert_eq!(
            root.cgroup_path(Path::new("/x/a/b")).as_deref(),
            Some("/a/b")
        );
        assert_eq!(root.cgroup_path(Path::new("/y")), None);
        assert_eq!(root.dir_of("/"), Some(PathBuf::from("/x/")));
    }

    /// A real cgroup: its id is its inode, its kernfs handle carries that id, and both the
    /// handle and the walk find its path; once removed it is gone, by both.
    #[test]
    fn resolves_a_real_cgroup_by_handle_and_by_walk() {
        let Some(root) = CgroupRoot::find(Path::new("/")) else {
            eprintln!("skipped: no cgroup v2 hierarchy here");
            return;
        };
        let name = format!("port-trace-unit-{}", std::process::id());
        let dir = root.mount().join(&name);
        if let Err(err) = std::fs::create_dir(&dir) {
            eprintln!("skipped: cannot make a cgroup ({err})");
            return;
        }
        let id = std::fs::metadata(&dir).expect("stat").ino();
        let path = format!("/{name}");
        assert_eq!(root.id_of(&path), Some(id));
        if let Ok((kind, handle_id)) = handle_of(&dir) {
            assert_eq!((kind, handle_id), (FILEID_KERNFS, id), "kernfs handle");
        }
        assert_eq!(root.path_of(id), Lookup::Found(path.clone()));
        eprintln!(
            "cgroup {id} found by {}",
            if root.handles_refused.get() {
                "walking (handles refused)"
            } else {
                "its kernfs handle"
            }
        );
        // What a miss costs (printed, not asserted: the machine is shared).
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(root.path_of(id), Lookup::Found(path.clone()));
        }
        eprintln!("cgroup path by id: {:?} a lookup", started.elapsed() / 1000);
        // Where handles are refused (no CAP_DAC_READ_SEARCH), path_of walks.
        let walking = CgroupRoot::at(root.mount().to_path_buf(), "/".into());
        walking.handles_refused.set(true);
        assert_eq!(walking.path_of(id), Lookup::Found(path.clone()));
        std::fs::remove_dir(&dir).expect("rmdir");
        assert_eq!(root.path_of(id), Lookup::Gone);
        assert_eq!(
            walking.path_of(id),
            Lookup::Found(path.clone()),
            "what an id was stays its name"
        );
        std::fs::create_dir(&dir).expect("mkdir again");
        let new_id = std::fs::metadata(&dir).expect("stat").ino();
        assert_ne!(new_id, id, "a new cgroup at the same path has a new id");
        // A fresh walk: the first cannot yet tell gone from not yet seen, the second can.
        let fresh = CgroupRoot::at(root.mount().to_path_buf(), "/".into());
        fresh.handles_refused.set(true);
        assert_eq!(fresh.path_of(new_id), Lookup::Found(path.clone()));
        assert_eq!(fresh.path_of(id), Lookup::Unknown, "one walk is not proof");
        fresh.walked.borrow_mut().at = None; // as if a second had passed
        assert_eq!(fresh.path_of(id), Lookup::Gone, "never the new one's name");
        std::fs::remove_dir(&dir).expect("rmdir");
    }
}
