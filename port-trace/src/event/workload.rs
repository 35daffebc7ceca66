//! Who is behind a socket: the cgroup the kernel names with each event, and the workload
//! (container, Kubernetes pod, systemd service) that cgroup belongs to. The types live here,
//! with the events that carry them; the `workload` stage fills them in.

use std::fmt;

use serde::Serialize;

/// A cgroup v2 id, as `bpf_get_current_cgroup_id()` gives it: the inode number of the
/// cgroup's directory in the v2 hierarchy. 0 where the kernel could not tell.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Container {
    pub id: Box<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Box<str>>,
    pub runtime: Runtime,
}

/// A Kubernetes pod: its uid from the cgroup path; namespace and name from the node's
/// `/var/log/pods`, where it could be read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
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

/// Characters of a container id shown where people read it, as `docker ps` does.
const SHORT_ID: usize = 12;

impl Container {
    /// The id as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..SHORT_ID).unwrap_or(&self.id)
    }

    /// The name where the runtime told it, else the short id.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.short_id())
    }
}

impl Workload {
    /// The `container` label of metrics: the container's name (or short id); "" outside
    /// containers.
    pub fn container_label(&self) -> &str {
        self.container.as_ref().map_or("", Container::label)
    }

    /// The `pod` label: the pod's name, else its uid; "" outside pods.
    pub fn pod_label(&self) -> &str {
        self.pod
            .as_ref()
            .map_or("", |pod| pod.name.as_deref().unwrap_or(&pod.uid))
    }

    /// The `namespace` label: the pod's Kubernetes namespace; "" where unknown.
    pub fn namespace_label(&self) -> &str {
        self.pod
            .as_ref()
            .and_then(|pod| pod.namespace.as_deref())
            .unwrap_or("")
    }

    /// Whether it names more than a cgroup: a container, a pod or a service.
    pub fn is_named(&self) -> bool {
        self.container.is_some() || self.pod.is_some() || self.service.is_some()
    }
}

/// For people: `pod shop/api-7d9f container api`, `container web (3f2a9c1b7d0e)`,
/// `service nginx.service`, or the cgroup's path.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::with_capacity(2);
        if let Some(pod) = &self.pod {
            words.push(match (&pod.namespace, &pod.name) {
                (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
                (None, Some(name)) => format!("pod {name}"),
                _ => format!("pod {}", pod.uid),
            });
        }
        if let Some(container) = &self.container {
            words.push(match (&container.name, self.pod.is_some()) {
                (Some(name), true) => format!("container {name}"),
                (Some(name), false) => format!("container {name} ({})", container.short_id()),
                (None, _) => format!("{} container {}", container.runtime, container.short_id()),
            });
        } else if let Some(service) = &self.service {
            words.push(format!("service {service}"));
        } else if self.pod.is_none()
            && let Some(path) = &self.cgroup
        {
            words.push(format!("cgroup {path}"));
        }
        f.pad(&words.join(" "))
    }
}

/// Workloads for other stages' tests.
#[cfg(test)]
pub mod fixtures {
    use std::sync::Arc;

    use super::*;

    /// A Docker container's workload.
    pub fn docker(name: Option<&str>, id: &str) -> Workload {
        Workload {
            cgroup: Some(format!("/docker/{id}").into()),
            container: Some(Container {
                id: id.into(),
                name: name.map(Into::into),
                runtime: Runtime::Docker,
            }),
            ..Workload::default()
        }
    }

    /// Names `event` as allocated by a process in container `name`, cgroup `cgroup`.
    pub fn in_container(event: &mut crate::event::Event, cgroup: u64, name: &str) {
        let id = format!("{cgroup:064x}");
        event.cgroup = CgroupId(cgroup);
        event.workload = Some(Arc::new(docker(Some(name), &id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d0e5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";

    fn docker(name: Option<&str>) -> Workload {
        fixtures::docker(name, ID)
    }

    #[test]
    fn containers_are_named_by_name_and_short_id() {
        assert_eq!(
            docker(Some("web")).to_string(),
            "container web (3f2a9c1b7d0e)"
        );
        assert_eq!(docker(None).to_string(), "docker container 3f2a9c1b7d0e");
        assert_eq!(docker(Some("web")).container_label(), "web");
        assert_eq!(docker(None).container_label(), "3f2a9c1b7d0e");
        assert_eq!(docker(None).pod_label(), "");
    }

    #[test]
    fn pods_name_namespace_and_container() {
        let mut workload = docker(Some("api"));
        workload.pod = Some(Pod {
            namespace: Some("shop".into()),
            name: Some("api-7d9f".into()),
            uid: "0f1e2d3c-aaaa-bbbb-cccc-000000000001".into(),
        });
        assert_eq!(workload.to_string(), "pod shop/api-7d9f container api");
        assert_eq!(workload.pod_label(), "api-7d9f");
        assert_eq!(workload.namespace_label(), "shop");
        // A pod whose log directory was not found is known by its uid.
        workload.pod = Some(Pod {
            namespace: None,
            name: None,
            uid: "0f1e2d3c".into(),
        });
        assert_eq!(workload.pod_label(), "0f1e2d3c");
        assert_eq!(workload.namespace_label(), "");
    }

    #[test]
    fn services_and_bare_cgroups() {
        let service = Workload {
            cgroup: Some("/system.slice/nginx.service".into()),
            service: Some("nginx.service".into()),
            ..Workload::default()
        };
        assert_eq!(service.to_string(), "service nginx.service");
        assert!(service.is_named());
        let bare = Workload {
            cgroup: Some("/user.slice/user-0.slice/session-3.scope".into()),
            ..Workload::default()
        };
        assert_eq!(
            bare.to_string(),
            "cgroup /user.slice/user-0.slice/session-3.scope"
        );
        assert!(!bare.is_named());
        assert_eq!(Workload::default().to_string(), "");
    }
}
