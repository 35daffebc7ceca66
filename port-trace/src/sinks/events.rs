//! Event lines: `--events json` (one object per line, the contract other tools parse) and
//! `--events text` (aligned, for people).

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::human_ns;
use crate::{
    event::{
        AllocKind, Event, EventType, Family, Proto,
        capture::EventLine,
        comm::Comm,
        errno_name,
        workload::{CgroupId, Workload},
    },
    exhaustion::{
        level::Level,
        scope::ScopeKind,
        warning::{Reason, Warning},
    },
    findings::{Evidence, Finding, Kind, Severity, State},
    probes::Backend,
    sys::clock::WallClock,
    track::Outcome,
};

/// How `--events` streams them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    Json,
    Text,
}

/// One JSON line. Field names and meanings are the daemon's contract (README); the fields
/// are `capture::EventLine`'s, which `analyze` reads back.
#[derive(Debug, Serialize)]
pub struct EventRecord {
    #[serde(rename = "type")]
    pub event: EventType,
    #[serde(flatten)]
    pub line: EventLine,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// `cgroup`, `container`, `pod`: who allocated, where known.
    #[serde(flatten)]
    pub workload: WorkloadFields,
}

/// `{"type":"existing",...}`: a socket of the start-up snapshot (`existing_gone` when it is
/// gone). For replay.
#[derive(Debug, Serialize)]
pub struct ExistingRecord {
    #[serde(rename = "type")]
    pub record: &'static str,
    #[serde(flatten)]
    pub line: EventLine,
    #[serde(flatten)]
    pub workload: WorkloadFields,
}

impl ExistingRecord {
    pub fn new(event: &Event, clock: WallClock) -> Self {
        Self {
            record: "existing",
            line: line_of(event, None, clock),
            workload: WorkloadFields::of(event),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What changes the ports held but is no event line, for replay: `time_wait` (a TCP socket
/// closed actively; its port is held until its release line), `reconciled` (a port found
/// free, its release lost), and a port asked for by number: `explicit_alloc`,
/// `explicit_release`, `explicit_time_wait`.
#[derive(Debug, Serialize)]
pub struct HeldRecord {
    #[serde(rename = "type")]
    pub record: &'static str,
    #[serde(flatten)]
    pub line: EventLine,
    #[serde(flatten)]
    pub workload: WorkloadFields,
}

impl HeldRecord {
    pub fn new(event: &Event, outcome: Outcome, clock: WallClock) -> Self {
        let record = match (event.explicit, outcome) {
            (false, Outcome::Reconciled) => "reconciled",
            (false, _) => "time_wait",
            (true, Outcome::Allocated) => "explicit_alloc",
            (true, Outcome::EnteredTimeWait) => "explicit_time_wait",
            (true, Outcome::Failed) => "explicit_fail",
            (true, _) => "explicit_release",
        };
        Self {
            record,
            line: line_of(event, Some(outcome), clock),
            workload: WorkloadFields::of(event),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event's line fields; `outcome` gives a release its lifetime.
fn line_of(event: &Event, outcome: Option<Outcome>, clock: WallClock) -> EventLine {
    // Only a connect() has a destination of its own: an unconnected UDP socket may send
    // anywhere after the send that bound it.
    // A socket bound to port 0 that connects names its peer in its `bound_connect` line.
    let has_peer = event.kind == AllocKind::Connect || event.event == EventType::BoundConnect;
    let failed = event.event == EventType::Fail;
    EventLine {
        ts_ns: clock.to_epoch_ns(event.ts_ns),
        proto: event.proto,
        family: event.family,
        port: event.port,
        kind: event.kind,
        pid: event.pid,
        comm: event.comm,
        netns: event.netns,
        cgroup_id: event.cgroup,
        laddr: event.laddr,
        raddr: has_peer.then_some(event.raddr),
        rport: has_peer.then_some(event.rport),
        lifetime_ns: match outcome {
            Some(Outcome::Released { lifetime_ns, .. }) => Some(lifetime_ns),
            _ => None,
        },
        time_wait_ns: match outcome {
            Some(Outcome::Released { time_wait_ns, .. }) => time_wait_ns,
            _ => None,
        },
        errno: failed.then_some(event.errno),
        cookie: event.cookie,
    }
}

/// The workload fields of a record: `cgroup` (its path, or its id where the path is not
/// known), `container` {id, name, runtime} and `pod` {namespace, name, uid} when known.
/// Nothing when the kernel named no cgroup.
#[derive(Debug, Clone, Default)]
pub struct WorkloadFields {
    pub cgroup: CgroupId,
    pub workload: Option<Arc<Workload>>,
}

impl WorkloadFields {
    pub fn of(event: &Event) -> Self {
        Self::new(event.cgroup, event.workload.as_ref())
    }

    pub fn new(cgroup: CgroupId, workload: Option<&Arc<Workload>>) -> Self {
        Self {
            cgroup,
            workload: workload.cloned(),
        }
    }

    /// An owner: no cgroup of its own, just the pod or container.
    fn owner(workload: &Arc<Workload>) -> Self {
        Self::new(CgroupId::UNKNOWN, Some(workload))
    }

    /// For people: `container web (3f2a9c1b7d0e)`; empty where nothing is known.
    pub fn display(&self) -> String {
        self.workload
            .as_deref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

impl Serialize for WorkloadFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        let workload = self.workload.as_deref();
        match workload.and_then(|w| w.cgroup.as_deref()) {
            Some(path) => map.serialize_entry("cgroup", path)?,
            None if self.cgroup.is_known() => map.serialize_entry("cgroup", &self.cgroup)?,
            None => {}
        }
        if let Some(container) = workload.and_then(|w| w.container.as_ref()) {
            map.serialize_entry("container", container)?;
        }
        if let Some(pod) = workload.and_then(|w| w.pod.as_ref()) {
            map.serialize_entry("pod", pod)?;
        }
        if let Some(service) = workload.and_then(|w| w.service.as_ref()) {
            map.serialize_entry("service", service)?;
        }
        map.end()
    }
}

impl EventRecord {
    pub fn new(event: &Event, outcome: Outcome, clock: WallClock) -> Self {
        let failed = event.event == EventType::Fail;
        Self {
            event: event.event,
            line: line_of(event, Some(outcome), clock),
            error: failed.then(|| errno_name(event.errno)),
            workload: WorkloadFields::of(event),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing plain fields to a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        let line = &self.line;
        let peer = match (line.raddr, line.rport) {
            (Some(addr), Some(port)) => format!("-> {}", socket_addr(addr, port)),
            _ => String::new(),
        };
        let lifetime = match (line.lifetime_ns, line.time_wait_ns, self.error) {
            (Some(ns), Some(tw), _) if tw > 0 => {
                format!("held {} ({} TIME_WAIT)", human_ns(ns), human_ns(tw))
            }
            (Some(ns), _, _) => format!("held {}", human_ns(ns)),
            (None, _, Some(error)) => error.to_string(),
            _ => String::new(),
        };
        format!(
            "{:<7} {:<3} {:<4} {:<7} {:>7} {:<16} {:<30} {:<30} {}",
            self.event.to_string(),
            line.proto.to_string(),
            if line.family == Family::Ipv4 {
                "v4"
            } else {
                "v6"
            },
            line.kind.to_string(),
            line.pid,
            line.comm,
            socket_addr(line.laddr, line.port),
            peer,
            lifetime
        )
        .trim_end()
        .to_string()
    }
}

pub fn text_header() -> String {
    format!(
        "{:<7} {:<3} {:<4} {:<7} {:>7} {:<16} {:<30} {:<30} {}",
        "EVENT", "PRO", "FAM", "KIND", "PID", "COMM", "LOCAL", "REMOTE", "LIFETIME"
    )
}

fn socket_addr(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// A scope is filling up, or an allocation in it failed.
#[derive(Debug, Serialize)]
pub struct WarningRecord {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub level: Level,
    /// "threshold" (the scope crossed a line) or "failure" (an allocation in it failed).
    pub reason: Reason,
    pub netns: u32,
    pub proto: Proto,
    /// "namespace" or "destination".
    pub scope: ScopeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub laddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rport: Option<u16>,
    pub used: u32,
    pub capacity: u32,
    pub ratio: f64,
    /// Seconds to exhaustion at the current pace; null when the scope is not filling.
    pub forecast_s: Option<f64>,
    /// The pod or container whose namespace it is, where one owns it alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<WorkloadFields>,
    pub top: Vec<TopHolder>,
}

#[derive(Debug, Serialize)]
pub struct TopHolder {
    pub pid: u32,
    pub comm: Comm,
    #[serde(flatten)]
    pub workload: WorkloadFields,
    pub count: u32,
}

impl From<&Warning> for WarningRecord {
    fn from(warning: &Warning) -> Self {
        let key = &warning.scope;
        let usage = warning.usage;
        let dest = key.destination();
        Self {
            record: "warning",
            level: warning.level,
            reason: warning.reason,
            netns: key.netns,
            proto: key.proto,
            scope: key.kind(),
            laddr: dest.map(|d| d.laddr),
            raddr: dest.map(|d| d.raddr),
            rport: dest.map(|d| d.rport),
            used: usage.used,
            capacity: usage.capacity,
            ratio: (usage.ratio() * 1000.0).round() / 1000.0,
            forecast_s: warning.forecast_s.map(|s| (s * 10.0).round() / 10.0),
            owner: warning.owner.as_ref().map(WorkloadFields::owner),
            top: warning
                .top
                .iter()
                .map(|top| TopHolder {
                    pid: top.holder.pid,
                    comm: top.holder.comm,
                    workload: WorkloadFields::new(top.cgroup, top.workload.as_ref()),
                    count: top.ports,
                })
                .collect(),
        }
    }
}

/// One finding as a record: `{"type":"finding",...}` (README, event contract).
#[derive(Debug, Serialize)]
pub struct FindingRecord<'a> {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub kind: Kind,
    pub severity: Severity,
    /// "appeared", "updated" or "cleared".
    pub state: State,
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// "namespace" or "destination".
    pub scope: ScopeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub laddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rport: Option<u16>,
    /// The process behind it, where one is: pid, comm, cgroup, container, pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who: Option<FindingWho>,
    pub evidence: &'a Evidence,
    pub remedy: &'a str,
}

#[derive(Debug, Serialize)]
pub struct FindingWho {
    pub pid: u32,
    pub comm: Comm,
    #[serde(flatten)]
    pub workload: WorkloadFields,
}

impl<'a> From<&'a Finding> for FindingRecord<'a> {
    fn from(f: &'a Finding) -> Self {
        let dest = f.destination;
        Self {
            record: "finding",
            kind: f.kind,
            severity: f.severity,
            state: f.state,
            netns: f.netns,
            proto: f.proto,
            scope: if dest.is_some() {
                ScopeKind::Destination
            } else {
                ScopeKind::Namespace
            },
            laddr: dest.map(|d| d.laddr),
            raddr: dest.map(|d| d.raddr),
            rport: dest.map(|d| d.rport),
            who: f.who.as_ref().map(|w| FindingWho {
                pid: w.pid,
                comm: w.comm,
                workload: WorkloadFields::new(w.cgroup, w.workload.as_ref()),
            }),
            evidence: &f.evidence,
            remedy: &f.remedy,
        }
    }
}

impl FindingRecord<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One line for people: `FINDING warn time_wait_churn (appeared) netns 1 to
    /// 10.0.0.5:443, curl[42]: 812 of 840 held in TIME_WAIT (97%), ...; fix: ...`.
    pub fn to_text(&self) -> String {
        let scope = match (self.raddr, self.rport) {
            (Some(addr), Some(port)) => format!(" to {}", socket_addr(addr, port)),
            _ => String::new(),
        };
        let who = self
            .who
            .as_ref()
            .map(|w| match w.workload.display().as_str() {
                "" => format!(", {}[{}]", w.comm, w.pid),
                wl => format!(", {}[{}] in {wl}", w.comm, w.pid),
            })
            .unwrap_or_default();
        format!(
            "FINDING {} {} ({}) netns {}{scope}{who}: {}; fix: {}",
            self.severity.as_str(),
            self.kind.as_str(),
            serde_json::to_value(self.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            self.netns,
            evidence_text(self.evidence),
            self.remedy
        )
    }
}

/// A finding's numbers for people.
pub fn evidence_text(evidence: &Evidence) -> String {
    match evidence {
        Evidence::TimeWait {
            held,
            time_wait,
            time_wait_share,
            alloc_rate_per_s,
            steady_state_held,
            range_size,
            ..
        } => format!(
            "{time_wait} of {held} held ports in TIME_WAIT ({:.0}%), {alloc_rate_per_s:.0} \
             connections/s, which hold ~{:.0} ports at steady state (range {range_size})",
            time_wait_share * 100.0,
            steady_state_held.unwrap_or(0.0)
        ),
        Evidence::Leak {
            held,
            slope_per_s,
            oldest_age_s,
            releases,
            ..
        } => format!(
            "{held} connections held, +{slope_per_s:.1}/s, {releases} closed, oldest \
             {oldest_age_s:.0}s"
        ),
        Evidence::Listener {
            port,
            range_low,
            range_high,
            ..
        } => format!("port {port} inside {range_low}-{range_high}"),
        Evidence::SynSent {
            syn_sent,
            held,
            range_size,
        } => format!(
            "{syn_sent} connects not answered (SYN_SENT) of {held} ports held (range \
             {range_size})"
        ),
        Evidence::Parity {
            half_used,
            half_capacity,
            used,
            capacity,
            preferred,
        } => format!(
            "{half_used} of the {half_capacity} {preferred} ports connect() tries first held \
             ({used} of {capacity} in all)"
        ),
        Evidence::BindConnect {
            connects,
            destinations,
            bound_held,
            bind_failures,
            range_size,
        } => format!(
            "{connects} connects from ports bound with bind(0), to {destinations} \
             destination(s); {bound_held} such ports held (range {range_size}){}",
            if *bind_failures > 0 {
                format!("; bind() found no port {bind_failures} time(s)")
            } else {
                String::new()
            }
        ),
        Evidence::Range {
            range_low,
            range_high,
            size,
            ..
        } => format!("range {range_low}-{range_high} ({size} ports)"),
    }
}

impl WarningRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One line for people; `colour` when it goes to a terminal.
    pub fn to_text(&self, colour: bool) -> String {
        let level = match (self.level, colour) {
            (Level::Critical, true) => "\x1b[1;31mCRITICAL\x1b[0m".to_string(),
            (Level::Warn, true) => "\x1b[1;33mWARNING\x1b[0m".to_string(),
            (Level::Critical, false) => "CRITICAL".to_string(),
            _ => "WARNING".to_string(),
        };
        let scope = match (self.raddr, self.rport) {
            (Some(addr), Some(port)) => format!("to {}", socket_addr(addr, port)),
            _ => "namespace".to_string(),
        };
        let forecast = self
            .forecast_s
            .map(|s| format!(", full in ~{s:.0}s"))
            .unwrap_or_default();
        let top: Vec<String> = self
            .top
            .iter()
            .map(|t| match t.workload.display().as_str() {
                "" => format!("{}[{}] {}", t.comm, t.pid, t.count),
                who => format!("{}[{}] in {who} {}", t.comm, t.pid, t.count),
            })
            .collect();
        let owner = self
            .owner
            .as_ref()
            .map(|owner| format!(" ({})", owner.display()))
            .unwrap_or_default();
        format!(
            "{level} {} ports {scope} in netns {}{owner}: {}/{} used ({:.0}%){forecast}{}; \
             top: {}",
            self.proto,
            self.netns,
            self.used,
            self.capacity,
            self.ratio * 100.0,
            if self.reason == Reason::Failure {
                ", an allocation failed"
            } else {
                ""
            },
            top.join(", ")
        )
    }
}

/// The first JSON line, printed once every program is attached.
#[derive(Debug, Serialize)]
pub struct ReadyRecord<'a> {
    #[serde(rename = "type")]
    pub record: &'static str,
    /// When tracing started (Unix epoch ns): replay's first interval starts there.
    pub ts_ns: u64,
    /// port-trace's own pid: its own sockets are no finding (replay too).
    pub pid: u32,
    pub backend: Backend,
    pub programs: &'a [String],
    pub version: &'static str,
    /// The host's name and kernel release, for whoever reads the capture elsewhere.
    pub host: &'a str,
    pub kernel: &'a str,
    /// Where Prometheus metrics are served (`--prometheus`), with the port really bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use port_trace_common::EVENT_RELEASE;

    use super::*;
    use crate::event::{decode_raw, tests::raw_connect};

    #[test]
    fn connect_alloc_json_has_the_destination() {
        let event = decode_raw(&raw_connect()).expect("decodes");
        let json =
            EventRecord::new(&event, Outcome::Allocated, WallClock::with_offset(10)).to_json();
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["type"], "alloc");
        assert_eq!(value["ts_ns"], 1_010);
        assert_eq!(value["proto"], "tcp");
        assert_eq!(value["family"], "ipv4");
        assert_eq!(value["kind"], "connect");
        assert_eq!(value["port"], 40001);
        assert_eq!(value["raddr"], "10.1.2.3");
        assert_eq!(value["rport"], 443);
        assert_eq!(value["comm"], "curl");
        assert_eq!(value["cgroup_id"], 0, "unknown is 0, not left out");
        assert!(value.get("lifetime_ns").is_none());
    }

    /// What an event line writes, `analyze` reads back as the same event (times in epoch
    /// ns); so does an `existing` line.
    #[test]
    fn event_lines_round_trip_through_the_capture_decoder() {
        use crate::event::capture::{Record, decode_line};
        let mut raw = raw_connect();
        raw.cgroup = 77;
        let alloc = decode_raw(&raw).expect("decodes");
        let clock = WallClock::with_offset(1_000_000);
        let mut release = alloc.clone();
        release.event = EventType::Release;
        release.ts_ns += 500;
        let mut fail = alloc.clone();
        fail.event = EventType::Fail;
        fail.errno = 99;
        let released = Outcome::Released {
            lifetime_ns: 500,
            time_wait_ns: Some(200),
        };
        for (event, outcome) in [
            (&alloc, Outcome::Allocated),
            (&release, released),
            (&fail, Outcome::Failed),
        ] {
            let line = EventRecord::new(event, outcome, clock).to_json();
            let Ok(Record::Event {
                event: back,
                lifetime_ns,
                time_wait_ns,
            }) = decode_line(&line)
            else {
                panic!("{line} decodes as an event");
            };
            let mut expected = event.clone();
            expected.ts_ns += 1_000_000;
            assert_eq!(back, expected, "{line}");
            let (lifetime, time_wait) = match outcome {
                Outcome::Released {
                    lifetime_ns,
                    time_wait_ns,
                } => (Some(lifetime_ns), time_wait_ns),
                _ => (None, None),
            };
            assert_eq!((lifetime_ns, time_wait_ns), (lifetime, time_wait));
        }
        let existing = ExistingRecord::new(&alloc, clock).to_json();
        assert!(existing.starts_with(r#"{"type":"existing","#), "{existing}");
        let Ok(Record::Existing(back)) = decode_line(&existing) else {
            panic!("{existing} decodes");
        };
        assert_eq!(
            (back.port, back.cookie, back.raddr),
            (alloc.port, alloc.cookie, alloc.raddr)
        );
        // What is held but no event line: the same fields, its own type.
        let mut explicit = alloc.clone();
        explicit.explicit = true;
        for (event, outcome, kind) in [
            (&release, Outcome::EnteredTimeWait, "time_wait"),
            (&release, Outcome::Reconciled, "reconciled"),
            (&explicit, Outcome::Allocated, "explicit_alloc"),
        ] {
            let line = HeldRecord::new(event, outcome, clock).to_json();
            assert!(
                line.starts_with(&format!(r#"{{"type":"{kind}","#)),
                "{line}"
            );
            let back = match decode_line(&line) {
                Ok(Record::TimeWait(back) | Record::Reconciled(back)) => back,
                Ok(Record::Event { event, .. }) => event,
                other => panic!("{line}: {other:?}"),
            };
            assert_eq!((back.cookie, back.explicit), (event.cookie, event.explicit));
        }
    }

    #[test]
    fn json_names_the_cgroup_id() {
        let mut raw = raw_connect();
        raw.cgroup = 1 << 40;
        let event = decode_raw(&raw).expect("decodes");
        let json =
            EventRecord::new(&event, Outcome::Allocated, WallClock::with_offset(0)).to_json();
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["cgroup_id"].as_u64(), Some(1 << 40), "{json}");
    }

    #[test]
    fn release_json_has_the_lifetime_and_bind_has_no_destination() {
        let mut raw = raw_connect();
        raw.event = EVENT_RELEASE;
        raw.kind = port_trace_common::KIND_BIND;
        let event = decode_raw(&raw).expect("decodes");
        let record = EventRecord::new(
            &event,
            Outcome::Released {
                lifetime_ns: 77,
                time_wait_ns: None,
            },
            WallClock::with_offset(0),
        );
        let value: serde_json::Value = serde_json::from_str(&record.to_json()).expect("JSON");
        assert_eq!(value["type"], "release");
        assert_eq!(value["lifetime_ns"], 77);
        assert!(value.get("raddr").is_none() && value.get("rport").is_none());
        assert!(record.to_text().contains("held 77ns"));
        assert!(value.get("time_wait_ns").is_none() && value.get("errno").is_none());
    }

    #[test]
    fn fail_json_names_the_error_and_the_destination() {
        let mut raw = raw_connect();
        raw.event = port_trace_common::EVENT_FAIL;
        raw.errno = 99;
        let event = decode_raw(&raw).expect("decodes");
        let record = EventRecord::new(&event, Outcome::Failed, WallClock::with_offset(0));
        let value: serde_json::Value = serde_json::from_str(&record.to_json()).expect("JSON");
        assert_eq!(value["type"], "fail");
        assert_eq!(value["errno"], 99);
        assert_eq!(value["error"], "EADDRNOTAVAIL");
        assert_eq!(value["raddr"], "10.1.2.3");
        assert!(record.to_text().ends_with("EADDRNOTAVAIL"));
    }

    #[test]
    fn warning_json_has_the_scope_usage_and_a_null_forecast() {
        use crate::{
            event::workload::{Container, Runtime},
            exhaustion::{
                scope::{Destination, Holder, Scope, ScopeKey, Usage},
                warning::Top,
            },
        };
        let id = "3f2a9c1b7d0e".repeat(5) + "abcd";
        let web = Workload {
            cgroup: Some(format!("/docker/{id}").into()),
            container: Some(Container {
                id: id.as_str().into(),
                name: Some("web".into()),
                runtime: Runtime::Docker,
            }),
            ..Workload::default()
        };
        let warning = Warning {
            level: Level::Critical,
            reason: Reason::Failure,
            scope: ScopeKey {
                netns: 7,
                proto: Proto::Tcp,
                scope: Scope::Destination(Destination {
                    laddr: IpAddr::from([127, 0, 0, 1]),
                    raddr: IpAddr::from([10, 1, 2, 3]),
                    rport: 443,
                }),
            },
            usage: Usage {
                used: 10,
                capacity: 10,
            },
            forecast_s: None,
            top: vec![Top {
                holder: Holder {
                    pid: 7,
                    comm: "curl".into(),
                },
                ports: 10,
                cgroup: CgroupId(99),
                workload: Some(Arc::new(web.clone())),
            }],
            owner: Some(Arc::new(Workload {
                container: web.container.clone(),
                ..Workload::default()
            })),
        };
        let record = WarningRecord::from(&warning);
        let json: serde_json::Value = serde_json::from_str(&record.to_json()).expect("json");
        assert_eq!(json["type"], "warning");
        assert_eq!(json["level"], "critical");
        assert_eq!(json["reason"], "failure");
        assert_eq!(json["scope"], "destination");
        assert_eq!(json["used"], 10);
        assert_eq!(json["rport"], 443);
        assert_eq!(json["top"][0]["comm"], "curl");
        assert_eq!(json["top"][0]["cgroup"], format!("/docker/{id}"));
        assert_eq!(json["top"][0]["container"]["name"], "web");
        assert_eq!(json["top"][0]["container"]["id"], id);
        assert_eq!(json["top"][0]["container"]["runtime"], "docker");
        assert_eq!(json["owner"]["container"]["name"], "web");
        assert!(json["owner"].get("cgroup").is_none());
        assert!(
            json.get("forecast_s").is_some(),
            "null, not absent, when unknown"
        );
        let text = record.to_text(false);
        assert!(
            text.starts_with(
                "CRITICAL tcp ports to 10.1.2.3:443 in netns 7 (container web (3f2a9c1b7d0e)): \
                 10/10"
            ),
            "{text}"
        );
        assert!(
            text.contains("an allocation failed; top: curl[7] in container web (3f2a9c1b7d0e) 10"),
            "{text}"
        );
    }

    #[test]
    fn json_names_the_workload_where_known() {
        use crate::event::workload::{CgroupId, Container, Pod, Runtime, Workload};
        let mut event = decode_raw(&raw_connect()).expect("decodes");
        let json = |event: &Event| -> serde_json::Value {
            let line = EventRecord::new(event, Outcome::Allocated, WallClock::with_offset(0));
            serde_json::from_str(&line.to_json()).expect("JSON")
        };
        let none = json(&event);
        assert!(
            none.get("cgroup").is_none() && none.get("container").is_none(),
            "cgroup 0: the kernel named none"
        );
        event.cgroup = CgroupId(4242);
        assert_eq!(json(&event)["cgroup"], 4242, "known by id only");
        event.workload = Some(Arc::new(Workload {
            cgroup: Some("/kubepods/burstable/pod0f6c/3f2a".into()),
            container: Some(Container {
                id: "3f2a".into(),
                name: Some("server".into()),
                runtime: Runtime::Containerd,
            }),
            pod: Some(Pod {
                namespace: Some("shop".into()),
                name: Some("api-7d9f".into()),
                uid: "0f6c".into(),
            }),
            service: None,
        }));
        let value = json(&event);
        assert_eq!(value["cgroup"], "/kubepods/burstable/pod0f6c/3f2a");
        assert_eq!(
            value["container"],
            serde_json::json!({"id": "3f2a", "name": "server", "runtime": "containerd"})
        );
        assert_eq!(
            value["pod"],
            serde_json::json!({"namespace": "shop", "name": "api-7d9f", "uid": "0f6c"})
        );
        assert_eq!(value["port"], 40001, "the rest is as it was");
    }
}
