//! Filters. `--netns` and `--proto` choose what is traced at all: the kernel programs skip
//! other namespaces and protocols before they reserve ring buffer space or a table entry,
//! and occupancy stays exact, since each namespace and protocol has its own port space.
//! `--pid`, `--comm`, `--family`, `--container`, `--pod` and `--cgroup` choose what is
//! reported (event lines, totals, histograms, metrics): occupancy and warnings still count
//! every socket of the traced namespaces, since a port another process holds fills the range
//! all the same (containers on the host network share the host's range).

use port_trace_common::{FILTER_TCP, FILTER_UDP, KernelFilter, MAX_NETNS_FILTER};

use crate::event::{Event, Family, Proto, workload::Workload};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub netns: Vec<u32>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
    /// Container names, ids or id prefixes.
    pub containers: Vec<String>,
    pub pods: Vec<PodName>,
    /// cgroup v2 paths: a cgroup and everything below it.
    pub cgroups: Vec<String>,
}

/// `--pod NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for PodName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "`{text}`: a pod is NAMESPACE/NAME, as `kubectl get pods -A` lists it"
            )),
        }
    }
}

/// The shortest container id prefix taken, so a short word cannot match by accident.
const MIN_ID_PREFIX: usize = 4;

fn container_matches(workload: &Workload, wanted: &str) -> bool {
    workload.container.as_ref().is_some_and(|c| {
        c.name.as_deref() == Some(wanted)
            || (wanted.len() >= MIN_ID_PREFIX && c.id.starts_with(wanted))
    })
}

fn pod_matches(workload: &Workload, wanted: &PodName) -> bool {
    workload.pod.as_ref().is_some_and(|p| {
        p.namespace.as_deref() == Some(wanted.namespace.as_str())
            && p.name.as_deref() == Some(wanted.name.as_str())
    })
}

/// The cgroup itself or one below it (`/kubepods` takes every pod).
fn cgroup_matches(workload: &Workload, wanted: &str) -> bool {
    let wanted = wanted.trim_end_matches('/');
    workload.cgroup.as_deref().is_some_and(|path| {
        wanted.is_empty()
            || path
                .strip_prefix(wanted)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

impl Filter {
    /// Whether `event` is to be reported. Each given criterion must hold; a list matches
    /// any of its values.
    pub fn matches(&self, event: &Event) -> bool {
        (self.pids.is_empty() || self.pids.contains(&event.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| event.comm == c.as_str()))
            && (self.netns.is_empty() || self.netns.contains(&event.netns))
            && self.proto.is_none_or(|p| p == event.proto)
            && self.family.is_none_or(|f| f == event.family)
            && self.matches_workload(event.workload.as_deref())
    }

    /// The workload criteria: an event whose workload is not known matches none of them.
    fn matches_workload(&self, workload: Option<&Workload>) -> bool {
        if self.containers.is_empty() && self.pods.is_empty() && self.cgroups.is_empty() {
            return true;
        }
        let Some(workload) = workload else {
            return false;
        };
        (self.containers.is_empty()
            || self
                .containers
                .iter()
                .any(|c| container_matches(workload, c)))
            && (self.pods.is_empty() || self.pods.iter().any(|p| pod_matches(workload, p)))
            && (self.cgroups.is_empty() || self.cgroups.iter().any(|c| cgroup_matches(workload, c)))
    }

    /// Whether any criterion needs to know the workload.
    pub fn needs_workloads(&self) -> bool {
        !(self.containers.is_empty() && self.pods.is_empty() && self.cgroups.is_empty())
    }

    /// Whether sockets of this namespace and protocol are traced at all.
    pub fn traces(&self, netns: u32, proto: Proto) -> bool {
        (self.netns.is_empty() || self.netns.contains(&netns))
            && self.proto.is_none_or(|p| p == proto)
    }

    /// The part of `traces` the kernel programs apply. More namespaces than the kernel side
    /// holds are left to the daemon (`traces`).
    pub fn kernel(&self) -> KernelFilter {
        let mut filter = KernelFilter {
            protos: match self.proto {
                None => 0,
                Some(Proto::Tcp) => FILTER_TCP,
                Some(Proto::Udp) => FILTER_UDP,
            },
            ..Default::default()
        };
        if self.netns.len() <= MAX_NETNS_FILTER {
            filter.netns[..self.netns.len()].copy_from_slice(&self.netns);
            filter.netns_count = self.netns.len() as u32;
        }
        filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    fn event() -> Event {
        decode_raw(&raw_connect()).expect("decodes")
    }

    #[test]
    fn the_kernel_gets_netns_and_proto() {
        assert_eq!(Filter::default().kernel(), KernelFilter::default());
        let filter = Filter {
            netns: vec![7, 9],
            proto: Some(Proto::Udp),
            pids: vec![1],
            ..Default::default()
        };
        let kernel = filter.kernel();
        assert_eq!(kernel.netns_count, 2);
        assert_eq!(&kernel.netns[..2], &[7, 9]);
        assert_eq!(kernel.protos, FILTER_UDP);
        assert!(filter.traces(9, Proto::Udp));
        assert!(!filter.traces(9, Proto::Tcp) && !filter.traces(8, Proto::Udp));
        // Too many for the kernel: it traces every namespace and the daemon narrows.
        let many = Filter {
            netns: (1..=MAX_NETNS_FILTER as u32 + 1).collect(),
            ..Default::default()
        };
        assert_eq!(many.kernel().netns_count, 0);
        assert!(many.traces(1, Proto::Tcp) && !many.traces(100, Proto::Tcp));
    }

    #[test]
    fn no_criteria_match_everything() {
        assert!(Filter::default().matches(&event()));
    }

    #[test]
    fn every_criterion_must_hold_and_lists_match_any() {
        let e = event();
        let by_pid = Filter {
            pids: vec![1, e.pid],
            ..Default::default()
        };
        assert!(by_pid.matches(&e));
        let wrong_comm = Filter {
            pids: vec![e.pid],
            comms: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(!wrong_comm.matches(&e));
        let udp = Filter {
            proto: Some(Proto::Udp),
            ..Default::default()
        };
        assert!(!udp.matches(&e));
        let v4_here = Filter {
            family: Some(Family::Ipv4),
            netns: vec![e.netns],
            ..Default::default()
        };
        assert!(v4_here.matches(&e));
    }

    #[test]
    fn workloads_match_by_container_pod_and_cgroup() {
        use crate::event::workload::{Pod, fixtures::in_container};
        let mut e = event();
        let by_name = Filter {
            containers: vec!["web".into()],
            ..Default::default()
        };
        // Not known: no workload criterion matches it.
        assert!(!by_name.matches(&e));
        in_container(&mut e, 0xabcdef, "web");
        assert!(by_name.matches(&e));
        let id = format!("{:064x}", 0xabcdef);
        let by_prefix = |prefix: &str| Filter {
            containers: vec![prefix.to_string()],
            ..Default::default()
        };
        assert!(by_prefix(&id).matches(&e) && by_prefix(&id[..12]).matches(&e));
        assert!(!by_prefix(&id[..3]).matches(&e), "too short a prefix");
        assert!(!by_prefix("db").matches(&e));
        let by_cgroup = |path: &str| Filter {
            cgroups: vec![path.to_string()],
            ..Default::default()
        };
        assert!(by_cgroup("/docker").matches(&e) && by_cgroup("/docker/").matches(&e));
        assert!(by_cgroup(&format!("/docker/{id}")).matches(&e));
        assert!(
            !by_cgroup("/dock").matches(&e),
            "whole path components only"
        );
        let pod: PodName = "shop/api-7d9f".parse().expect("a pod name");
        let by_pod = Filter {
            pods: vec![pod],
            ..Default::default()
        };
        assert!(!by_pod.matches(&e));
        if let Some(w) = e.workload.as_mut().map(std::sync::Arc::make_mut) {
            w.pod = Some(Pod {
                namespace: Some("shop".into()),
                name: Some("api-7d9f".into()),
                uid: "u".into(),
            });
        }
        assert!(by_pod.matches(&e));
        assert!(by_pod.needs_workloads() && !Filter::default().needs_workloads());
    }

    #[test]
    fn pod_names_are_namespace_slash_name() {
        assert!("shop/api".parse::<PodName>().is_ok());
        for bad in ["api", "/api", "shop/", "a/b/c", ""] {
            assert!(bad.parse::<PodName>().is_err(), "{bad}");
        }
    }
}
