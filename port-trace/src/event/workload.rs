//! Who is behind a socket: the cgroup the kernel names with each event, and the workload
//! (container, Kubernetes pod, systemd service) that cgroup belongs to. The types live here,
//! with the events that carry them; the `workload` stage fills them in.

use std::fmt;

use serde::Serialize;

/// A cgroup v2 id, as `bpf_get_current_cgroup_id()` gives it: the inode number of the
/// cgroup's directory in the v2 hierarchy. 0 where the kernel could not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

impl CgroupId {
    pub const UNKNOWN: Self = Self(0);

    pub fn is_known(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The container runtime that made a container, as its cgroup's name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A container, named by its runtime's id (64 hex digits) and, where the runtime tells it,
/// its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Container {
    pub id: Box<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Box<str>>,
    pub runtime: Runtime,
}

/// A Kubernetes pod: its uid from the cgroup path; namespace and name from the node's
/// `/var/log/pods`, where it could be read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pod {
    pub namespace: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub uid: Box<str>,
}

/// The workload a cgroup belongs to. Every field but `cgroup` may be missing: a cgroup
/// removed before it was resolved is known by its id alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Workload {
    /// The cgroup's path in the v2 hierarchy (`/docker/<id>`), if it could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// A systemd unit (`nginx.service`) for processes outside any container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Box<str>>,
}
