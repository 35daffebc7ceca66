//! Who the holders are: the cgroup of each process seen holding ports and that cgroup's
//! workload, and the one workload (pod or container) that owns a network namespace alone. Learnt from the events,
//! which the `workload` stage has named already, so naming a warning's holders or a
//! namespace needs no lookup of its own.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use crate::event::{
    Event,
    workload::{CgroupId, Workload},
};

/// Cgroups (and namespace-cgroup pairs) remembered before the memory starts afresh: a host
/// that starts a container a second for days must not grow this without end. Starting
/// afresh forgets names, never gives a wrong one: the next event of each cgroup teaches it
/// again.
const MAX_REMEMBERED: usize = 65_536;

#[derive(Debug, Clone, PartialEq)]
enum Owner {
    One(Arc<Workload>),
    /// Two workloads allocate there: nobody owns it alone.
    Shared,
}

#[derive(Debug, Default)]
pub struct Workloads {
    by_cgroup: HashMap<CgroupId, Arc<Workload>>,
    /// Each process's cgroup, as last seen allocating: the holders name their workload by it.
    by_pid: HashMap<u32, CgroupId>,
    /// The namespace-cgroup-process triples already learnt from.
    seen: HashSet<(u32, CgroupId, u32)>,
    owners: HashMap<u32, Owner>,
    /// The host's namespace: shared by every host-network container, owned by none.
    host_netns: Option<u32>,
}

impl Workloads {
    pub fn new(host_netns: Option<u32>) -> Self {
        Self {
            host_netns,
            ..Self::default()
        }
    }

    /// Learns from a port being held: one set lookup unless the process or its cgroup is
    /// new to the namespace.
    pub fn learn(&mut self, event: &Event) {
        let Some(workload) = &event.workload else {
            return;
        };
        let key = (event.netns, event.cgroup, event.pid);
        if self.seen.contains(&key) {
            return;
        }
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.clear();
            self.by_cgroup.clear();
            self.by_pid.clear();
        }
        self.seen.insert(key);
        self.by_pid.insert(event.pid, event.cgroup);
        self.by_cgroup
            .entry(event.cgroup)
            .or_insert_with(|| Arc::clone(workload));
        if Some(event.netns) == self.host_netns {
            return;
        }
        let owner = owner_of(workload);
        match (self.owners.get(&event.netns), owner) {
            (None, Some(owner)) => {
                self.owners.insert(event.netns, Owner::One(owner));
            }
            (Some(Owner::One(known)), Some(owner)) if *known == owner => {}
            // A second owner, or a process of no pod or container, allocating there.
            (Some(Owner::One(_)), _) | (None, None) => {
                self.owners.insert(event.netns, Owner::Shared);
            }
            (Some(Owner::Shared), _) => {}
        }
    }

    /// The cgroup of a process seen holding ports, and its workload.
    pub fn of_pid(&self, pid: u32) -> (CgroupId, Option<Arc<Workload>>) {
        let cgroup = self.by_pid.get(&pid).copied().unwrap_or_default();
        (cgroup, self.by_cgroup.get(&cgroup).cloned())
    }

    /// The pod or container that alone allocates in a namespace.
    /// Forgets namespace `netns`'s owner (gone).
    pub fn forget(&mut self, netns: u32) {
        self.owners.remove(&netns);
    }

    pub fn owner(&self, netns: u32) -> Option<Arc<Workload>> {
        match self.owners.get(&netns) {
            Some(Owner::One(owner)) => Some(Arc::clone(owner)),
            _ => None,
        }
    }
}

/// What owns a namespace a workload allocates in: its pod (all of a pod's containers share
/// one), else its container; nothing for a process outside both.
fn owner_of(workload: &Arc<Workload>) -> Option<Arc<Workload>> {
    if workload.pod.is_some() {
        if workload.container.is_none() && workload.cgroup.is_none() {
            return Some(Arc::clone(workload));
        }
        return Some(Arc::new(Workload {
            pod: workload.pod.clone(),
            ..Workload::default()
        }));
    }
    workload.container.as_ref().map(|_| {
        Arc::new(Workload {
            container: workload.container.clone(),
            ..Workload::default()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        decode_raw,
        tests::raw_connect,
        workload::{Container, Pod, Runtime},
    };

    fn container(id: &str, name: &str) -> Arc<Workload> {
        Arc::new(Workload {
            cgroup: Some(format!("/docker/{id}").into()),
            container: Some(Container {
                id: id.into(),
                name: Some(name.into()),
                runtime: Runtime::Docker,
            }),
            ..Workload::default()
        })
    }

    fn event(netns: u32, cgroup: u64, workload: Option<Arc<Workload>>) -> Event {
        let mut event = decode_raw(&raw_connect()).expect("a valid record");
        event.netns = netns;
        event.cgroup = CgroupId(cgroup);
        event.workload = workload;
        event
    }

    #[test]
    fn a_namespace_one_container_uses_is_owned_by_it() {
        let mut workloads = Workloads::new(Some(1));
        let web = container("aa", "web");
        workloads.learn(&event(7, 70, Some(Arc::clone(&web))));
        workloads.learn(&event(7, 70, Some(Arc::clone(&web))));
        let owner = workloads.owner(7).expect("owned");
        assert_eq!(owner.to_string(), "container web (aa)");
        // The events' pid (raw_connect's 7) names its cgroup and workload.
        assert_eq!(workloads.of_pid(7), (CgroupId(70), Some(web)));
        assert_eq!(workloads.of_pid(8), (CgroupId::UNKNOWN, None));
    }

    #[test]
    fn the_host_and_shared_namespaces_have_no_owner() {
        let mut workloads = Workloads::new(Some(1));
        // Host-network containers share the host's namespace.
        workloads.learn(&event(1, 70, Some(container("aa", "web"))));
        assert_eq!(workloads.owner(1), None);
        workloads.learn(&event(8, 80, Some(container("bb", "db"))));
        workloads.learn(&event(8, 81, Some(container("cc", "cache"))));
        assert_eq!(workloads.owner(8), None, "two containers in one namespace");
        // A process outside any container there makes it shared too.
        workloads.learn(&event(9, 90, Some(container("dd", "api"))));
        workloads.learn(&event(9, 91, Some(Arc::new(Workload::default()))));
        assert_eq!(workloads.owner(9), None);
    }

    #[test]
    fn a_pods_containers_share_its_namespace() {
        let mut workloads = Workloads::new(None);
        let pod = Pod {
            namespace: Some("shop".into()),
            name: Some("api-7d9f".into()),
            uid: "u1".into(),
        };
        for (cgroup, name) in [(100, "api"), (101, "sidecar")] {
            let mut workload = (*container(name, name)).clone();
            workload.pod = Some(pod.clone());
            workloads.learn(&event(5, cgroup, Some(Arc::new(workload))));
        }
        let owner = workloads.owner(5).expect("the pod owns it");
        assert_eq!(owner.to_string(), "pod shop/api-7d9f");
    }

    #[test]
    fn memory_starts_afresh_rather_than_grow() {
        let mut workloads = Workloads::new(None);
        let web = container("aa", "web");
        for cgroup in 0..=MAX_REMEMBERED as u64 {
            workloads.learn(&event(7, cgroup + 1, Some(Arc::clone(&web))));
        }
        assert!(workloads.seen.len() <= MAX_REMEMBERED);
        assert!(workloads.by_cgroup.len() <= MAX_REMEMBERED);
        // The owner is kept: it is one entry per namespace.
        assert!(workloads.owner(7).is_some());
    }
}
