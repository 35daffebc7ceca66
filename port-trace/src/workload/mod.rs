//! The workload stage: names the cgroup each event carries (container, Kubernetes pod,
//! systemd service), and the workload that owns a network namespace.
//!
//! - `naming`: a cgroup path read by the runtimes' and systemd's naming rules (pure).
//! - `Resolver`: cgroup id -> path (sys::cgroups) -> workload, with the names only the node
//!   knows (pod names from its log directories, container names from them or from Docker),
//!   cached so that an event whose cgroup was seen before costs one hash lookup and an `Arc`
//!   clone.
//!
//! Correct when cgroups come and go: a cgroup id is never reused within a boot (see
//! sys::cgroups), so a name cached for an id never turns wrong; a cgroup removed before it
//! was resolved is left unnamed (the event keeps its id), never given another's name.

pub mod naming;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    event::{
        Event,
        workload::{CgroupId, Runtime, Workload},
    },
    sys::{
        cgroups::{CgroupRoot, Lookup},
        docker, netns,
        pods::PodLogs,
        procfs,
    },
};

/// Cgroups kept per generation of the cache: the cache holds at most twice this. A busy
/// node runs a few hundred containers; an id the cache forgot is only looked up again.
const CACHE_GENERATION: usize = 4096;

/// How often a workload whose names could not all be found (or whose cgroup could not be
/// looked up) is tried again, and how many times: a pod's log directory may appear just
/// after its first connection.
const RETRY_EVERY: Duration = Duration::from_secs(1);
const RETRIES: u8 = 5;

/// How long a Docker socket that did not answer is left alone.
const DOCKER_BACKOFF: Duration = Duration::from_secs(30);

/// How long "no workload owns this namespace" is believed before /proc is searched again.
const NETNS_NEGATIVE: Duration = Duration::from_secs(10);

/// What the cache keeps for an id.
struct Entry {
    /// None: the cgroup was gone (or unreadable) when looked up.
    workload: Option<Arc<Workload>>,
    /// Tries left to complete it, and when the last was.
    retry: Option<(u8, Instant)>,
}

/// A bounded map: two generations, the older dropped whole when the newer fills; a hit in
/// the older moves into the newer. Every lookup is O(1); the memory is bounded.
struct Generations<K, V> {
    young: HashMap<K, V, foldhash::fast::RandomState>,
    old: HashMap<K, V, foldhash::fast::RandomState>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy, V> Generations<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::default(),
            old: HashMap::default(),
            capacity,
        }
    }

    fn get(&mut self, key: K) -> Option<&mut V> {
        if !self.young.contains_key(&key) {
            let value = self.old.remove(&key)?;
            self.insert(key, value);
        }
        self.young.get_mut(&key)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.capacity && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Names only the node knows: pods and containers from its log directories, container names
/// from Docker.
struct NodeNames {
    host_root: PathBuf,
    logs: PodLogs,
    read_at: Option<Instant>,
    docker_socket: PathBuf,
    /// Container id -> its Docker name (None: Docker has no such container).
    docker: HashMap<Box<str>, Option<Box<str>>>,
    docker_down_until: Option<Instant>,
}

impl NodeNames {
    fn new(host_root: &Path) -> Self {
        Self {
            host_root: host_root.to_path_buf(),
            logs: PodLogs::default(),
            read_at: None,
            docker_socket: docker::socket(host_root),
            docker: HashMap::new(),
            docker_down_until: None,
        }
    }

    /// Reads the log directories again if they were last read over a second ago.
    fn refresh(&mut self) -> bool {
        if self.read_at.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
            return false;
        }
        self.logs = PodLogs::read(&self.host_root);
        self.read_at = Some(Instant::now());
        true
    }

    /// Fills in `workload`'s pod and container names where the node has them; whether all
    /// it names are named now.
    fn fill(&mut self, workload: &mut Workload) -> bool {
        let missing = |logs: &PodLogs, w: &Workload| {
            w.pod
                .as_ref()
                .is_some_and(|p| !logs.pods.contains_key(&*p.uid))
                || w.container
                    .as_ref()
                    .is_some_and(|c| w.pod.is_some() && !logs.containers.contains_key(&*c.id))
        };
        if missing(&self.logs, workload) {
            self.refresh();
        }
        if let Some(pod) = workload.pod.as_mut()
            && let Some(names) = self.logs.pods.get(&*pod.uid)
        {
            pod.namespace = Some(names.namespace.as_str().into());
            pod.name = Some(names.name.as_str().into());
        }
        let cgroup = workload.cgroup.as_deref().unwrap_or_default();
        if let Some(container) = workload.container.as_mut() {
            // A bare id under a pod is containerd's by the naming, but may be Docker's (the
            // kubelet through cri-dockerd): where Docker runs, it knows its own.
            let bare = container.runtime == Runtime::Containerd
                && cgroup.rsplit('/').any(|part| part == &*container.id);
            let docker = if container.runtime == Runtime::Docker || bare {
                self.docker_name(&container.id)
            } else {
                None
            };
            if docker.is_some() {
                container.runtime = Runtime::Docker;
            }
            // The kubelet's name for it (`server`), else Docker's (`k8s_server_api-7d9f_...`).
            container.name = match self.logs.containers.get(&*container.id) {
                Some(names) => Some(names.container.as_str().into()),
                None => docker,
            };
        }
        let pod_named = workload.pod.as_ref().is_none_or(|p| p.name.is_some());
        // A pod's sandbox (pause) container has no log, so no name: the pod names it.
        let container_named = workload
            .container
            .as_ref()
            .is_none_or(|c| c.name.is_some() || workload.pod.is_some());
        pod_named && container_named
    }

    fn docker_name(&mut self, id: &str) -> Option<Box<str>> {
        if let Some(known) = self.docker.get(id) {
            return known.clone();
        }
        if self.docker_down_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let name = match docker::container_name(&self.docker_socket, id) {
            Ok(name) => Some(name.into_boxed_str()),
            Err(docker::AskError::NoSuchContainer) => None,
            Err(docker::AskError::NoDaemon(err)) => {
                tracing::debug!(
                    "no container names from {}: {err}",
                    self.docker_socket.display()
                );
                self.docker_down_until = Some(Instant::now() + DOCKER_BACKOFF);
                return None;
            }
        };
        if self.docker.len() >= CACHE_GENERATION {
            self.docker.clear();
        }
        self.docker.insert(id.into(), name.clone());
        name
    }
}

/// What owns a network namespace, as last found.
struct NetnsOwner {
    /// The /proc directory of the process found in it (checked still to be there before the
    /// answer is trusted: namespace inodes are reused).
    proc_dir: Option<PathBuf>,
    workload: Option<Arc<Workload>>,
    found_at: Instant,
}

/// Turns cgroup ids into workloads, and namespaces into their owners.
pub struct Resolver {
    cgroups: Option<CgroupRoot>,
    names: NodeNames,
    cache: Generations<CgroupId, Entry>,
    netns: HashMap<u32, NetnsOwner>,
    /// The host's namespace (init's): shared by every host-network workload, owned by none.
    host_netns: Option<u32>,
}

impl Resolver {
    /// A resolver for the cgroup v2 hierarchy and node directories under `host_root` (`/`,
    /// or the host's `/` mounted into our container).
    pub fn new(host_root: &Path) -> Self {
        let cgroups = CgroupRoot::find(host_root);
        match &cgroups {
            Some(root) => tracing::debug!("cgroup v2 at {}", root.mount().display()),
            None => tracing::info!("no cgroup v2 hierarchy found: events name no workload"),
        }
        Self::with(cgroups, host_root)
    }

    fn with(cgroups: Option<CgroupRoot>, host_root: &Path) -> Self {
        Self {
            cgroups,
            names: NodeNames::new(host_root),
            cache: Generations::new(CACHE_GENERATION),
            netns: HashMap::new(),
            // Where init's cannot be read (a sandbox), ours stands in for it: port-trace runs
            // in the host's (the DaemonSet's hostNetwork).
            host_netns: netns::inode_of(Path::new("/proc/1/ns/net")).or_else(netns::own),
        }
    }

    /// Names the workload of `event`'s cgroup. Free for a cgroup seen before.
    pub fn attribute(&mut self, event: &mut Event) {
        if event.cgroup.is_known() {
            event.workload = self.workload(event.cgroup);
        }
    }

    /// The workload of cgroup `id`; None if it is gone or cannot be read.
    pub fn workload(&mut self, id: CgroupId) -> Option<Arc<Workload>> {
        // The hot path, every event of a cgroup seen lately: one lookup, one Arc clone.
        if let Some(entry) = self.cache.young.get(&id)
            && entry.retry.is_none()
        {
            return entry.workload.clone();
        }
        if let Some(entry) = self.cache.get(id) {
            match entry.retry {
                None => return entry.workload.clone(),
                Some((_, at)) if at.elapsed() < RETRY_EVERY => return entry.workload.clone(),
                Some(_) => {}
            }
        }
        self.resolve(id)
    }

    /// Looks `id` up (again) and caches the answer.
    fn resolve(&mut self, id: CgroupId) -> Option<Arc<Workload>> {
        let tries_left = self
            .cache
            .get(id)
            .and_then(|e| e.retry.map(|(left, _)| left))
            .unwrap_or(RETRIES);
        let lookup = match &self.cgroups {
            Some(root) => root.path_of(id.0),
            None => Lookup::Gone,
        };
        let (workload, complete) = match lookup {
            Lookup::Found(path) => {
                let (workload, complete) = self.name(&path);
                (Some(workload), complete)
            }
            // Never named by another's name: the id alone, for good.
            Lookup::Gone => (None, true),
            Lookup::Unknown => (None, false),
        };
        self.remember(id, workload.clone(), complete, tries_left);
        workload
    }

    fn remember(
        &mut self,
        id: CgroupId,
        workload: Option<Arc<Workload>>,
        complete: bool,
        tries_left: u8,
    ) {
        let retry = (!complete && tries_left > 0).then(|| (tries_left - 1, Instant::now()));
        self.cache.insert(id, Entry { workload, retry });
    }

    /// The workload cgroup `path` names, with the node's names filled in; whether those were
    /// all found.
    fn name(&mut self, path: &str) -> (Arc<Workload>, bool) {
        let mut workload = naming::parse(path).into_workload(path);
        let complete = self.names.fill(&mut workload);
        (Arc::new(workload), complete)
    }

    /// The cgroup of process `pid` and its workload (the snapshot's sockets know their owner,
    /// not a cgroup id).
    pub fn for_pid(&mut self, pid: u32) -> Option<(CgroupId, Arc<Workload>)> {
        self.for_proc_dir(Path::new(&format!("/proc/{pid}")))
    }

    fn for_proc_dir(&mut self, dir: &Path) -> Option<(CgroupId, Arc<Workload>)> {
        let root = self.cgroups.as_ref()?;
        let path = root.full_path(&procfs::cgroup_in(dir)?);
        let id = CgroupId(root.id_of(&path)?);
        if let Some(entry) = self.cache.get(id)
            && entry.retry.is_none()
            && let Some(workload) = &entry.workload
        {
            return Some((id, workload.clone()));
        }
        let (workload, complete) = self.name(&path);
        self.remember(id, Some(workload.clone()), complete, RETRIES);
        Some((id, workload))
    }

    /// The workload that owns network namespace `inode` (a process in it, by its cgroup);
    /// None for the host's namespace, shared by every host-network workload, and for one
    /// with no process in it. For lines like "pod shop/api in netns 4026532181".
    pub fn netns_owner(&mut self, inode: u32) -> Option<Arc<Workload>> {
        if Some(inode) == self.host_netns {
            return None;
        }
        if let Some(known) = self.netns.get(&inode) {
            let still = match &known.proc_dir {
                // Namespace inodes are reused: trust it while that process is still in it.
                Some(dir) => netns::inode_of(&dir.join("ns/net")) == Some(inode),
                None => known.found_at.elapsed() < NETNS_NEGATIVE,
            };
            if still {
                return known.workload.clone();
            }
        }
        // /proc/PID/ns/net or /proc/PID/task/TID/ns/net: the process's directory is two up.
        let proc_dir = netns::locate(inode)
            .ok()
            .flatten()
            .and_then(|ns| ns.parent()?.parent().map(Path::to_path_buf))
            .filter(|dir| dir.starts_with("/proc"));
        let workload = proc_dir
            .as_deref()
            .and_then(|dir| self.for_proc_dir(dir))
            .map(|(_, w)| w);
        if self.netns.len() >= CACHE_GENERATION {
            self.netns.clear();
        }
        self.netns.insert(
            inode,
            NetnsOwner {
                proc_dir,
                workload: workload.clone(),
                found_at: Instant::now(),
            },
        );
        workload
    }

    /// Ids cached now (for tests and diagnostics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    const ID: &str = "3f2a9c1b7d0e44b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4";
    const UID: &str = "0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";

    /// A temporary cgroup under the real v2 hierarchy, removed on drop.
    struct TempCgroup {
        dirs: Vec<PathBuf>,
    }

    impl Drop for TempCgroup {
        fn drop(&mut self) {
            for dir in self.dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    fn v2() -> Option<CgroupRoot> {
        let root = CgroupRoot::find(Path::new("/"))?;
        // Only where we may make cgroups (root, a writable hierarchy).
        let probe = root
            .mount()
            .join(format!("port-trace-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        std::fs::remove_dir(&probe).ok()?;
        Some(root)
    }

    fn make(root: &CgroupRoot, relative: &str) -> (TempCgroup, u64) {
        let mut dirs = Vec::new();
        let mut at = root.mount().to_path_buf();
        for part in relative.split('/') {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).expect("mkdir cgroup");
                dirs.push(at.clone());
            }
        }
        let id = std::fs::metadata(&at).expect("stat").ino();
        (TempCgroup { dirs }, id)
    }

    fn fixture(root: &Path) {
        let pod = root.join(format!("var/log/pods/shop_api-7d9f_{UID}/server"));
        std::fs::create_dir_all(&pod).expect("mkdir");
        let links = root.join("var/log/containers");
        std::fs::create_dir_all(&links).expect("mkdir");
        let _ = std::os::unix::fs::symlink(
            pod.join("0.log"),
            links.join(format!("api-7d9f_shop_server-{ID}.log")),
        );
    }

    fn temp_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("port-trace-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn generations_are_bounded_and_keep_what_is_used() {
        let mut cache = Generations::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.insert(3, "c"); // 1 and 2 to the old generation
        assert_eq!(cache.get(1).copied(), Some("a"), "promoted");
        cache.insert(4, "d"); // young {3, 1} full: it ages, 2 dropped
        assert_eq!(cache.get(2), None);
        assert_eq!(cache.get(1).copied(), Some("a"));
        assert!(cache.len() <= 4);
        for key in 10..1000 {
            cache.insert(key, "x");
            assert!(cache.len() <= 4);
        }
    }

    /// A real Kubernetes-style cgroup (cgroupfs driver) and a /var/log/pods fixture: the id
    /// resolves to the pod and container, by name.
    #[test]
    fn names_a_real_pod_cgroup_by_its_id() {
        let Some(cgroups) = v2() else {
            eprintln!("skipped: cannot make cgroups here (not root, or no cgroup v2)");
            return;
        };
        let host = temp_root("resolver");
        fixture(&host);
        let relative = format!(
            "port-trace-test-{}/kubepods/burstable/pod{UID}/{ID}",
            std::process::id()
        );
        let (_cgroup, id) = make(&cgroups, &relative);
        let mut resolver = Resolver::with(Some(cgroups), &host);
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        event.cgroup = CgroupId(id);
        resolver.attribute(&mut event);
        let workload = event.workload.clone().expect("named");
        assert_eq!(
            workload.cgroup.as_deref(),
            Some(format!("/{relative}").as_str())
        );
        let pod = workload.pod.as_ref().expect("a pod");
        assert_eq!(
            (pod.namespace.as_deref(), pod.name.as_deref(), &*pod.uid),
            (Some("shop"), Some("api-7d9f"), UID)
        );
        let container = workload.container.as_ref().expect("a container");
        assert_eq!(
            (&*container.id, container.name.as_deref(), container.runtime),
            (ID, Some("server"), Runtime::Containerd)
        );
        // Cached: the same Arc.
        let mut again = event.clone();
        again.workload = None;
        resolver.attribute(&mut again);
        assert!(Arc::ptr_eq(
            &workload,
            again.workload.as_ref().expect("cached")
        ));
        std::fs::remove_dir_all(&host).ok();
    }

    /// A cgroup removed before its id was looked up is named by no one, for good; and a
    /// new cgroup at the same path gets a new id, named afresh.
    #[test]
    fn a_cgroup_gone_before_it_was_resolved_is_named_by_id_only() {
        let Some(cgroups) = v2() else {
            eprintln!("skipped: cannot make cgroups here (not root, or no cgroup v2)");
            return;
        };
        let relative = format!("port-trace-gone-{}/docker/{ID}", std::process::id());
        let (cgroup, id) = make(&cgroups, &relative);
        drop(cgroup);
        let (_again, new_id) = make(&cgroups, &relative);
        assert_ne!(id, new_id, "ids are not reused");
        let mut resolver = Resolver::with(Some(cgroups), &temp_root("gone"));
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        event.cgroup = CgroupId(id);
        resolver.attribute(&mut event);
        assert_eq!(event.workload, None, "the old id names nothing");
        assert_eq!(event.cgroup, CgroupId(id), "the id stays");
        event.cgroup = CgroupId(new_id);
        resolver.attribute(&mut event);
        let workload = event.workload.expect("the new one is there");
        assert_eq!(
            workload.container.as_ref().map(|c| (&*c.id, c.runtime)),
            Some((ID, Runtime::Docker))
        );
    }

    #[test]
    fn an_unknown_cgroup_id_is_left_alone() {
        let mut resolver = Resolver::with(None, Path::new("/nonexistent"));
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        resolver.attribute(&mut event);
        assert_eq!(event.workload, None, "cgroup 0: the kernel did not say");
        event.cgroup = CgroupId(12345);
        resolver.attribute(&mut event);
        assert_eq!(event.workload, None, "no hierarchy: nothing to name");
    }

    /// Our own process: its cgroup by pid, and the same id the hierarchy gives.
    #[test]
    fn names_our_own_cgroup_by_pid() {
        let Some(cgroups) = CgroupRoot::find(Path::new("/")) else {
            eprintln!("skipped: no cgroup v2");
            return;
        };
        let path = procfs::cgroup_of(std::process::id()).expect("our cgroup");
        let expected = cgroups.id_of(&path);
        let mut resolver = Resolver::with(Some(cgroups), &temp_root("pid"));
        let (id, workload) = resolver.for_pid(std::process::id()).expect("ours");
        assert_eq!(Some(id.0), expected);
        assert_eq!(workload.cgroup.as_deref(), Some(path.as_str()));
        assert_eq!(resolver.workload(id), Some(workload), "cached by id");
    }

    /// A child moved into a pod's cgroup in its own netns: the namespace is named by it.
    #[test]
    fn names_the_owner_of_a_namespace() {
        let Some(cgroups) = v2() else {
            eprintln!("skipped: cannot make cgroups here");
            return;
        };
        let host = temp_root("netns");
        fixture(&host);
        let relative = format!(
            "port-trace-netns-{}/kubepods/pod{UID}/{ID}",
            std::process::id()
        );
        let (_cgroup, _) = make(&cgroups, &relative);
        let procs = cgroups.mount().join(&relative).join("cgroup.procs");
        let Ok(mut child) = std::process::Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
        else {
            eprintln!("skipped: no unshare");
            return;
        };
        std::fs::write(&procs, child.id().to_string()).expect("move the child in");
        // unshare execs sleep in the new namespace: wait for it.
        let own = netns::own();
        let mut inode = None;
        for _ in 0..100 {
            inode = netns::inode_of(Path::new(&format!("/proc/{}/ns/net", child.id())));
            if inode.is_some() && inode != own {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let inode = inode
            .filter(|i| Some(*i) != own)
            .expect("a namespace of its own");
        let mut resolver = Resolver::with(Some(cgroups), &host);
        let owner = resolver.netns_owner(inode);
        let _ = child.kill();
        let _ = child.wait();
        let owner = owner.expect("named");
        assert_eq!(
            owner.pod.as_ref().and_then(|p| p.name.as_deref()),
            Some("api-7d9f")
        );
        assert_eq!(owner.pod.as_ref().map(|p| &*p.uid), Some(UID));
        assert_eq!(resolver.netns_owner(own.expect("own")), None, "the host's");
        std::fs::remove_dir_all(&host).ok();
    }

    /// A bare id under a pod that Docker knows is Docker's, named by the kubelet's logs;
    /// one Docker does not know stays containerd's.
    #[test]
    fn docker_tells_its_own_containers_under_a_pod() {
        let host = temp_root("dockerd");
        fixture(&host);
        std::fs::create_dir_all(host.join("var/run")).expect("mkdir");
        let server = crate::sys::docker::tests::fake_daemon(
            &host.join("var/run/docker.sock"),
            2,
            (ID, "k8s_server_api-7d9f_shop_0"),
        );
        let mut resolver = Resolver::with(None, &host);
        let (docker, complete) = resolver.name(&format!("/kubepods/pod{UID}/{ID}"));
        let container = docker.container.as_ref().expect("a container");
        assert_eq!(container.runtime, Runtime::Docker);
        assert_eq!(
            container.name.as_deref(),
            Some("server"),
            "the kubelet's name"
        );
        assert!(complete);
        let other = "ab".repeat(32);
        let (containerd, _) = resolver.name(&format!("/kubepods/pod{UID}/{other}"));
        let container = containerd.container.as_ref().expect("a container");
        assert_eq!(container.runtime, Runtime::Containerd);
        assert_eq!(container.name, None);
        // Named by its scope, containerd's for sure: Docker is not asked.
        let (scoped, _) = resolver.name(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(
            scoped.container.as_ref().map(|c| c.runtime),
            Some(Runtime::Containerd)
        );
        server.join().expect("server");
        std::fs::remove_dir_all(&host).ok();
    }

    /// What a cache hit costs: printed, not asserted (the machine is shared).
    #[test]
    fn a_cache_hit_is_cheap() {
        let mut resolver = Resolver::with(None, Path::new("/nonexistent"));
        let id = CgroupId(777);
        resolver.remember(
            id,
            Some(Arc::new(Workload {
                cgroup: Some("/docker/x".into()),
                ..Workload::default()
            })),
            true,
            0,
        );
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        event.cgroup = id;
        let rounds = 1_000_000;
        let started = Instant::now();
        for _ in 0..rounds {
            resolver.attribute(std::hint::black_box(&mut event));
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(rounds);
        assert!(event.workload.is_some());
        eprintln!("workload cache hit: {per:.1} ns per event");
    }
}
