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

impl Container {
    /// The id as `docker ps` shows it: its first 12 digits.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// Short, for lines people read: `pod shop/api-7d9f`, `container web (3f2a9c1b7d0e)`,
/// `service nginx.service`, else `cgroup /user.slice/...`.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(pod) = &self.pod {
            return match (&pod.namespace, &pod.name) {
                (Some(namespace), Some(name)) => write!(f, "pod {namespace}/{name}"),
                _ => write!(f, "pod {}", pod.uid),
            };
        }
        if let Some(container) = &self.container {
            return match &container.name {
                Some(name) => write!(f, "container {name} ({})", container.short_id()),
                None => write!(f, "container {}", container.short_id()),
            };
        }
        match (&self.service, &self.cgroup) {
            (Some(service), _) => write!(f, "service {service}"),
            (None, Some(cgroup)) => write!(f, "cgroup {cgroup}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_for_people() {
        let container = Container {
            id: "3f2a9c1b7d0e44b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4".into(),
            name: Some("web".into()),
            runtime: Runtime::Docker,
        };
        let mut workload = Workload {
            cgroup: Some("/docker/3f2a".into()),
            container: Some(container.clone()),
            ..Workload::default()
        };
        assert_eq!(workload.to_string(), "container web (3f2a9c1b7d0e)");
        workload.container = Some(Container {
            name: None,
            ..container
        });
        assert_eq!(workload.to_string(), "container 3f2a9c1b7d0e");
        workload.pod = Some(Pod {
            namespace: Some("shop".into()),
            name: Some("api-7d9f".into()),
            uid: "0f6c".into(),
        });
        assert_eq!(workload.to_string(), "pod shop/api-7d9f");
        workload.pod = Some(Pod {
            namespace: None,
            name: None,
            uid: "0f6c".into(),
        });
        assert_eq!(workload.to_string(), "pod 0f6c");
        let service = Workload {
            cgroup: Some("/system.slice/nginx.service".into()),
            service: Some("nginx.service".into()),
            ..Workload::default()
        };
        assert_eq!(service.to_string(), "service nginx.service");
        let other = Workload {
            cgroup: Some("/user.slice/user-1000.slice/session-3.scope".into()),
            ..Workload::default()
        };
        assert_eq!(
            other.to_string(),
            "cgroup /user.slice/user-1000.slice/session-3.scope"
        );
    }
}
