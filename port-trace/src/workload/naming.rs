//! Who a cgroup path belongs to, by the names runtimes and systemd give cgroups. Pure: the
//! path in, the container id and runtime, pod uid and QoS class, and systemd unit out.
//!
//! - Docker: `/docker/<id>` (cgroupfs driver), `docker-<id>.scope` (systemd driver).
//! - containerd: `cri-containerd-<id>.scope`, or a bare `<id>` under a Kubernetes pod
//!   (cgroupfs driver); nerdctl's `nerdctl-<id>.scope`.
//! - CRI-O: `crio-<id>.scope` or `crio-<id>`; `crio-conmon-<id>.scope` is its monitor, not
//!   the container.
//! - podman: `libpod-<id>.scope` or `/libpod_parent/libpod-<id>`; `libpod-conmon-*` likewise.
//! - Kubernetes: `kubepods/<qos>/pod<uid>/...` (cgroupfs) or
//!   `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/...` (systemd, which
//!   writes `_` for the uid's `-`); guaranteed pods sit directly under `kubepods`.
//!
//! Where containers nest (a runtime inside a container), the deepest one is the process's.

use crate::event::workload::{Container, Pod, Runtime, Workload};

/// A Kubernetes QoS class, as the pod's cgroup path places it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says, before any names are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub container: Option<(String, Runtime)>,
    pub pod: Option<(String, Qos)>,
    /// A systemd service, for processes in no container and no pod.
    pub service: Option<String>,
}

impl Named {
    /// The workload this names, in cgroup `path`, without the names only the node knows.
    pub fn into_workload(self, path: &str) -> Workload {
        Workload {
            cgroup: Some(path.into()),
            container: self.container.map(|(id, runtime)| Container {
                id: id.into(),
                name: None,
                runtime,
            }),
            pod: self.pod.map(|(uid, _)| Pod {
                namespace: None,
                name: None,
                uid: uid.into(),
            }),
            service: self.service.map(Into::into),
        }
    }
}

/// Reads cgroup `path` (`/kubepods/burstable/pod<uid>/<id>`).
pub fn parse(path: &str) -> Named {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod = parts
        .iter()
        .enumerate()
        .find_map(|(at, part)| pod_of(&parts[..at], part));
    let in_pod = pod.is_some();
    let container = parts
        .iter()
        .enumerate()
        .rev()
        .find_map(|(at, part)| container_of(&parts[..at], part, in_pod));
    let service = if container.is_none() && !in_pod {
        parts
            .iter()
            .rev()
            .find(|p| p.ends_with(".service") && p.len() > ".service".len())
            .map(|p| p.to_string())
    } else {
        None
    };
    Named {
        container,
        pod,
        service,
    }
}

/// A container id: 64 hex digits.
fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container `part` names, given the cgroups above it.
fn container_of(above: &[&str], part: &str, in_pod: bool) -> Option<(String, Runtime)> {
    const SCOPES: &[(&str, Runtime)] = &[
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let unit = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in SCOPES {
        if let Some(id) = unit.strip_prefix(prefix)
            && is_id(id)
        {
            return Some((id.to_ascii_lowercase(), *runtime));
        }
    }
    if !is_id(part) {
        return None;
    }
    // A bare id: whose, the cgroups above it tell.
    let runtime = match above.last() {
        Some(&"docker") => Runtime::Docker,
        Some(&"libpod_parent") => Runtime::Podman,
        _ if above.contains(&"docker") => Runtime::Docker,
        // The kubelet's cgroupfs driver: containerd names containers by bare id.
        _ if in_pod => Runtime::Containerd,
        _ => return None,
    };
    Some((part.to_ascii_lowercase(), runtime))
}

/// The pod `part` names (uid with dashes, QoS class), given the cgroups above it: only under
/// `kubepods`.
fn pod_of(above: &[&str], part: &str) -> Option<(String, Qos)> {
    let under_kubepods = above
        .iter()
        .any(|p| *p == "kubepods" || p.starts_with("kubepods.") || p.starts_with("kubepods-"));
    if !under_kubepods {
        return None;
    }
    let qos_of = |class: &str| match class {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    };
    let (uid, qos) = if let Some(slice) = part.strip_suffix(".slice") {
        // kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice
        let rest = slice.strip_prefix("kubepods-")?;
        match rest.strip_prefix("pod") {
            Some(uid) => (uid, Qos::Guaranteed),
            None => {
                let (class, uid) = rest.split_once("-pod")?;
                (uid, qos_of(class)?)
            }
        }
    } else {
        let uid = part.strip_prefix("pod")?;
        let qos = match above.last() {
            Some(class) => qos_of(class).unwrap_or(Qos::Guaranteed),
            None => Qos::Guaranteed,
        };
        (uid, qos)
    };
    is_uid(uid).then(|| (uid.replace('_', "-").to_ascii_lowercase(), qos))
}

/// A pod uid: a UUID (dashes, or systemd's underscores) or a static pod's 32-hex hash.
fn is_uid(text: &str) -> bool {
    let digits = text.bytes().filter(u8::is_ascii_hexdigit).count();
    let separators = text.bytes().filter(|b| matches!(b, b'-' | b'_')).count();
    digits == 32 && (separators == 0 || separators == 4) && digits + separators == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d0e44b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "0f6c8e2a_1b2c_4d5e_8f90_a1b2c3d4e5f6";

    fn container(path: &str) -> Option<(String, Runtime)> {
        parse(path).container
    }

    fn pod(path: &str) -> Option<(String, Qos)> {
        parse(path).pod
    }

    #[test]
    fn docker_on_both_drivers() {
        let want = Some((ID.to_string(), Runtime::Docker));
        assert_eq!(container(&format!("/docker/{ID}")), want);
        assert_eq!(container(&format!("/system.slice/docker-{ID}.scope")), want);
        // Rootless docker under a user's systemd.
        assert_eq!(
            container(&format!(
                "/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"
            )),
            want
        );
        // Docker in Docker: the inner container is the process's.
        assert_eq!(
            container(&format!("/docker/{ID2}/docker/{ID}")),
            want,
            "the deepest"
        );
        // A process in a sub-cgroup of the container (systemd inside it).
        assert_eq!(
            container(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            want
        );
        assert_eq!(parse(&format!("/docker/{ID}")).pod, None);
        assert_eq!(parse(&format!("/docker/{ID}")).service, None);
    }

    #[test]
    fn containerd_crio_podman() {
        assert_eq!(
            container(&format!("/system.slice/cri-containerd-{ID}.scope")),
            Some((ID.into(), Runtime::Containerd))
        );
        assert_eq!(
            container(&format!("/system.slice/nerdctl-{ID}.scope")),
            Some((ID.into(), Runtime::Containerd))
        );
        assert_eq!(
            container(&format!("/machine.slice/crio-{ID}.scope")),
            Some((ID.into(), Runtime::CriO))
        );
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope")),
            Some((ID.into(), Runtime::Podman))
        );
        // podman --cgroups=split puts the processes one level down.
        assert_eq!(
            container(&format!("/machine.slice/libpod-{ID}.scope/container")),
            Some((ID.into(), Runtime::Podman))
        );
        assert_eq!(
            container(&format!("/libpod_parent/libpod-{ID}")),
            Some((ID.into(), Runtime::Podman))
        );
        assert_eq!(
            container(&format!("/libpod_parent/{ID}")),
            Some((ID.into(), Runtime::Podman))
        );
        // The monitors are not the containers.
        assert_eq!(
            container(&format!("/machine.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            container(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn kubernetes_on_the_cgroupfs_driver() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let named = parse(&path);
        assert_eq!(named.pod, Some((UID.into(), Qos::Burstable)));
        assert_eq!(named.container, Some((ID.into(), Runtime::Containerd)));
        assert_eq!(named.service, None);
        assert_eq!(
            pod(&format!("/kubepods/besteffort/pod{UID}/{ID}")),
            Some((UID.into(), Qos::BestEffort))
        );
        assert_eq!(
            pod(&format!("/kubepods/pod{UID}/{ID}")),
            Some((UID.into(), Qos::Guaranteed))
        );
        // CRI-O on cgroupfs.
        assert_eq!(
            container(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")),
            Some((ID.into(), Runtime::CriO))
        );
        // The pod's own cgroup (no container): the pod, no container.
        let named = parse(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(named.pod, Some((UID.into(), Qos::Burstable)));
        assert_eq!(named.container, None);
        // A kubelet with --cgroup-root.
        assert_eq!(
            pod(&format!("/kubelet/kubepods/burstable/pod{UID}/{ID}")),
            Some((UID.into(), Qos::Burstable))
        );
        // A static pod's uid is a hash.
        assert_eq!(
            pod("/kubepods/burstable/pod9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"),
            Some(("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d".into(), Qos::Burstable))
        );
    }

    #[test]
    fn kubernetes_on_the_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let named = parse(&path);
        assert_eq!(named.pod, Some((UID.into(), Qos::Burstable)), "dashes back");
        assert_eq!(named.container, Some((ID.into(), Runtime::Containerd)));
        assert_eq!(
            pod(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
            )),
            Some((UID.into(), Qos::BestEffort))
        );
        assert_eq!(
            pod(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"
            )),
            Some((UID.into(), Qos::Guaranteed))
        );
        // CRI-O's conmon sits in the pod's slice: the pod, but no container.
        let named = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!(named.pod, Some((UID.into(), Qos::Burstable)));
        assert_eq!(named.container, None);
        assert_eq!(named.service, None, "a pod is not a service");
    }

    #[test]
    fn sandboxes_are_containers_of_their_pod() {
        // The pause container holds the pod's netns: it is the pod's, with its own id.
        let named = parse(&format!("/kubepods/besteffort/pod{UID}/{ID2}"));
        assert_eq!(named.pod.map(|p| p.0), Some(UID.to_string()));
        assert_eq!(named.container.map(|c| c.0), Some(ID2.to_string()));
    }

    #[test]
    fn services_and_what_names_nothing() {
        assert_eq!(
            parse("/system.slice/nginx.service").service.as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            parse("/system.slice/docker.service").container,
            None,
            "the daemon is not a container"
        );
        assert_eq!(
            parse("/system.slice/docker.service").service.as_deref(),
            Some("docker.service")
        );
        for path in [
            "/",
            "/init.scope",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice",
            "/docker",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            "/process_api/2b4d5b408e90bb6d2db76427ff8da26f",
            // A 64-hex name outside any runtime's or pod's tree names nothing.
            &format!("/mystuff/{ID}"),
            // Too short to be an id; a pod-looking name outside kubepods.
            "/docker/3f2a9c1b7d0e",
            &format!("/mystuff/pod{UID}"),
            "/system.slice/docker-compose.scope",
            "/.service",
        ] {
            let named = parse(path);
            assert_eq!(
                (named.container, named.pod),
                (None, None),
                "{path} names no container or pod"
            );
        }
        assert_eq!(parse("/init.scope").service, None);
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope")
                .service
                .as_deref(),
            Some("user@1000.service"),
            "a user's own session: its manager"
        );
    }

    #[test]
    fn ids_and_uids_are_lowercased_and_validated() {
        let upper = ID.to_ascii_uppercase();
        assert_eq!(
            container(&format!("/docker/{upper}")).map(|c| c.0),
            Some(ID.into())
        );
        assert!(is_uid(UID) && is_uid(UID_) && is_uid("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"));
        assert!(!is_uid("0f6c8e2a-1b2c") && !is_uid("0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5fz"));
    }

    #[test]
    fn into_workload_keeps_the_path() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        let workload = parse(&path).into_workload(&path);
        assert_eq!(workload.cgroup.as_deref(), Some(path.as_str()));
        assert_eq!(workload.pod.map(|p| p.uid), Some(UID.into()));
        assert_eq!(
            workload.container.map(|c| (c.id, c.runtime)),
            Some((ID.into(), Runtime::Containerd))
        );
    }
}
