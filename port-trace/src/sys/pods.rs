//! Kubernetes pods and containers by name, from the node's log directories, which the kubelet
//! names after them: `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` and the symlinks
//! `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`. Neither a
//! namespace nor a pod or container name can hold `_` (they are DNS labels), so the names
//! split unambiguously. Read under a host root, so this works from a DaemonSet's container
//! with the node's directories mounted.

use std::{collections::HashMap, path::Path};

/// A pod's names, from its log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub name: String,
}

/// A container's names, from its log symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// What the node's log directories name: pod uid -> pod, container id -> container.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodLogs {
    pub pods: HashMap<String, PodNames>,
    pub containers: HashMap<String, ContainerNames>,
}

impl PodLogs {
    /// Reads `<host_root>/var/log/pods` and `<host_root>/var/log/containers`; what is not
    /// there (not a Kubernetes node) is simply empty.
    pub fn read(host_root: &Path) -> Self {
        let names = |dir: &str| -> Vec<String> {
            std::fs::read_dir(host_root.join(dir))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        };
        Self {
            pods: names("var/log/pods")
                .iter()
                .filter_map(|n| pod_dir(n))
                .collect(),
            containers: names("var/log/containers")
                .iter()
                .filter_map(|n| container_log(n))
                .collect(),
        }
    }
}

/// `<namespace>_<pod>_<uid>` -> (uid, names).
fn pod_dir(name: &str) -> Option<(String, PodNames)> {
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        uid.to_string(),
        PodNames {
            namespace: namespace.to_string(),
            name: pod.to_string(),
        },
    ))
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log` -> (id, names).
fn container_log(name: &str) -> Option<(String, ContainerNames)> {
    let (names, id) = name.strip_suffix(".log")?.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = names.splitn(3, '_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some((
        id.to_ascii_lowercase(),
        ContainerNames {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d0e44b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4";

    #[test]
    fn splits_pod_directories() {
        let (uid, pod) =
            pod_dir("shop_api-7d9f-x2x_0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6").expect("a pod");
        assert_eq!(uid, "0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "api-7d9f-x2x")
        );
        // A static pod's uid is a hash without dashes.
        assert!(pod_dir("kube-system_etcd-node1_9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d").is_some());
        assert_eq!(pod_dir("lonely"), None);
        assert_eq!(pod_dir("ns__uid"), None);
    }

    #[test]
    fn splits_container_log_links() {
        let (id, c) = container_log(&format!("api-7d9f-x2x_shop_server-{ID}.log")).expect("one");
        assert_eq!(id, ID);
        assert_eq!(
            (c.pod.as_str(), c.namespace.as_str(), c.container.as_str()),
            ("api-7d9f-x2x", "shop", "server")
        );
        // Dashes in the container name stay with the name: the id is after the last one.
        let (_, c) = container_log(&format!("p_ns_side-car-{ID}.log")).expect("one");
        assert_eq!(c.container, "side-car");
        assert_eq!(container_log(&format!("p_ns_c-{ID}.txt")), None);
        assert_eq!(container_log("p_ns_c-abc.log"), None, "not an id");
        assert_eq!(
            container_log(&format!("p_ns-{ID}.log")),
            None,
            "no container"
        );
    }

    #[test]
    fn reads_a_node_fixture() {
        let root = std::env::temp_dir().join(format!("port-trace-pods-{}", std::process::id()));
        let pod = root.join("var/log/pods/shop_api-1_0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6/server");
        std::fs::create_dir_all(&pod).expect("mkdir");
        let containers = root.join("var/log/containers");
        std::fs::create_dir_all(&containers).expect("mkdir");
        std::os::unix::fs::symlink(
            pod.join("0.log"),
            containers.join(format!("api-1_shop_server-{ID}.log")),
        )
        .expect("symlink");
        let logs = PodLogs::read(&root);
        std::fs::remove_dir_all(&root).ok();
        assert_eq!(
            logs.pods["0f6c8e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6"].name,
            "api-1"
        );
        assert_eq!(logs.containers[ID].container, "server");
        assert_eq!(PodLogs::read(Path::new("/nonexistent")), PodLogs::default());
    }
}
