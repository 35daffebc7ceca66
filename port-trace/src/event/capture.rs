//! Captures: the `--events json` lines read back as typed records, for `port-trace analyze`.
//! The field names are the event contract (README); `sinks::events` writes an event line
//! through the same `EventLine`, so what is written is what is read.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::probes::Backend;
use thiserror::Error;

use super::{
    AllocKind, Event, EventType, Family, Proto,
    comm::Comm,
    workload::{CgroupId, Container, Pod, Workload},
};

/// The fields an event line (`alloc`, `release`, `fail`) and an `existing` line share, as
/// written and as read back. Times are Unix-epoch nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    pub ts_ns: u64,
    pub proto: Proto,
    pub family: Family,
    pub port: u16,
    pub kind: AllocKind,
    pub pid: u32,
    pub comm: Comm,
    pub netns: u32,
    /// The allocating task's cgroup v2 id (the inode of its cgroup directory); 0 unknown.
    #[serde(default)]
    pub cgroup_id: CgroupId,
    pub laddr: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raddr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ns: Option<u64>,
    /// Of `lifetime_ns`, the time in TIME_WAIT (TCP active closes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_wait_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    pub cookie: u64,
}

/// The workload fields of a line, as `sinks::events::WorkloadFields` writes them: `cgroup`
/// is the path, or the id (a number) where the path was not known.
#[derive(Debug, Default, Deserialize)]
struct WorkloadLine {
    #[serde(default)]
    cgroup: Option<serde_json::Value>,
    #[serde(default)]
    container: Option<Container>,
    #[serde(default)]
    pod: Option<Pod>,
    #[serde(default)]
    service: Option<Box<str>>,
}

impl WorkloadLine {
    fn workload(self) -> Option<Arc<Workload>> {
        let workload = Workload {
            cgroup: self
                .cgroup
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .map(Into::into),
            container: self.container,
            pod: self.pod,
            service: self.service,
        };
        (workload != Workload::default()).then(|| Arc::new(workload))
    }
}

/// `{"type":"range",...}`: a namespace's ephemeral range when first seen and whenever it
/// changes; `reserved` as inclusive [from, to] pairs (`ip_local_reserved_ports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLine {
    #[serde(rename = "type")]
    #[serde(skip_deserializing, default = "range_type")]
    pub record: &'static str,
    pub netns: u32,
    pub low: u16,
    pub high: u16,
    #[serde(default)]
    pub reserved: Vec<(u16, u16)>,
    /// `net.ipv4.ip_unprivileged_port_start`, where it was read (the range lint uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unprivileged_start: Option<u16>,
}

fn range_type() -> &'static str {
    "range"
}

/// `{"type":"syn_sent",...}`: TCP sockets connecting to one destination and not answered
/// yet, as a look counted them once an interval, written when the count changes (0: none
/// left). For replay: the SYN_SENT pile-up finding is judged on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynSentLine {
    #[serde(rename = "type")]
    #[serde(skip_deserializing, default = "syn_sent_type")]
    pub record: &'static str,
    pub netns: u32,
    pub laddr: IpAddr,
    pub raddr: IpAddr,
    pub rport: u16,
    pub count: u32,
}

fn syn_sent_type() -> &'static str {
    "syn_sent"
}

impl SynSentLine {
    pub fn new(netns: u32, laddr: IpAddr, raddr: IpAddr, rport: u16, count: u32) -> Self {
        Self {
            record: "syn_sent",
            netns,
            laddr,
            raddr,
            rport,
            count,
        }
    }
}

impl RangeLine {
    pub fn new(netns: u32, low: u16, high: u16, reserved: Vec<(u16, u16)>) -> Self {
        Self {
            record: "range",
            netns,
            low,
            high,
            reserved,
            unprivileged_start: None,
        }
    }
}

/// One line of a capture, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `ready`: the backend that attached (None: one this version does not know).
    Ready {
        backend: Option<Backend>,
        /// When the live trace started and its pid (absent in captures of older versions).
        ts_ns: Option<u64>,
        pid: Option<u32>,
        /// The host's name and kernel release (absent in captures of older versions).
        host: Option<String>,
        kernel: Option<String>,
    },
    /// `alloc`, `release`, `fail`: the event as the pipeline takes it (times in epoch ns),
    /// with the line's lifetime fields.
    Event {
        event: Event,
        lifetime_ns: Option<u64>,
        time_wait_ns: Option<u64>,
    },
    /// `existing`: a socket of the start-up snapshot.
    Existing(Event),
    /// `existing_gone`: that socket is gone (found at a tick).
    ExistingGone(Event),
    /// `reconciled`: a port found free, its release lost; as the release.
    Reconciled(Event),
    /// `time_wait`: a TCP socket closed actively, its port held on in TIME_WAIT; as the
    /// release event that parks it (`time_wait` set).
    TimeWait(Event),
    Range(RangeLine),
    SynSent(SynSentLine),
    /// `end`: the capture's last line, with how long the trace ran.
    End {
        elapsed_ns: u64,
    },
    /// What replay recomputes (`warning`) or does not know (a newer port-trace's records):
    /// its type, skipped and counted.
    Skipped(String),
}

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no \"type\" field")]
    NoType,
    #[error("a {record} record: {source}")]
    Field {
        record: String,
        source: serde_json::Error,
    },
    #[error("a {record} record without {field}")]
    Missing { record: String, field: &'static str },
    #[error("a {0} record with port 0")]
    NoPort(String),
}

impl EventLine {
    /// The event, with no TIME_WAIT flags: replay derives those (see `cmd::analyze`).
    pub fn to_event(&self, event: EventType) -> Event {
        let unspecified = match self.family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Event {
            event,
            ts_ns: self.ts_ns,
            cookie: self.cookie,
            pid: self.pid,
            comm: self.comm,
            cgroup: self.cgroup_id,
            workload: None,
            netns: self.netns,
            proto: self.proto,
            family: self.family,
            kind: self.kind,
            laddr: self.laddr,
            port: self.port,
            raddr: self.raddr.unwrap_or(unspecified),
            rport: self.rport.unwrap_or(0),
            errno: self.errno.unwrap_or(0),
            time_wait: false,
            time_wait_made: false,
            time_wait_end: false,
            explicit: false,
        }
    }
}

/// Decodes one line of a capture.
pub fn decode_line(line: &str) -> Result<Record, CaptureError> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(CaptureError::NoType)?
        .to_string();
    let field = |source| CaptureError::Field {
        record: kind.clone(),
        source,
    };
    // A port asked for by number: the same records, marked (replay counts it in occupancy
    // only, as the live trace did).
    let (explicit, base) = match kind.strip_prefix("explicit_") {
        Some(base) => (true, base),
        None => (false, kind.as_str()),
    };
    let event_type = match base {
        "alloc" => Some(EventType::Alloc),
        "release" => Some(EventType::Release),
        "fail" => Some(EventType::Fail),
        "bound_connect" => Some(EventType::BoundConnect),
        _ => None,
    };
    match base {
        "ready" => Ok(Record::Ready {
            backend: value
                .get("backend")
                .and_then(|b| b.as_str())
                .and_then(Backend::from_name),
            ts_ns: value.get("ts_ns").and_then(serde_json::Value::as_u64),
            pid: value
                .get("pid")
                .and_then(serde_json::Value::as_u64)
                .and_then(|pid| u32::try_from(pid).ok()),
            host: value
                .get("host")
                .and_then(|h| h.as_str())
                .map(str::to_string),
            kernel: value
                .get("kernel")
                .and_then(|k| k.as_str())
                .map(str::to_string),
        }),
        "end" => Ok(Record::End {
            elapsed_ns: value
                .get("elapsed_ns")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| CaptureError::Missing {
                    record: kind.clone(),
                    field: "elapsed_ns",
                })?,
        }),
        "range" => {
            let range = RangeLine::deserialize(&value).map_err(field)?;
            Ok(Record::Range(range))
        }
        "syn_sent" => Ok(Record::SynSent(
            SynSentLine::deserialize(&value).map_err(field)?,
        )),
        "existing" | "existing_gone" | "time_wait" | "reconciled" | "alloc" | "release"
        | "fail" | "bound_connect" => {
            let line = EventLine::deserialize(&value).map_err(field)?;
            let workload = WorkloadLine::deserialize(&value).map_err(field)?.workload();
            // As the ring's decoder: the kernel never hands out port 0.
            if line.port == 0 && base != "fail" {
                return Err(CaptureError::NoPort(kind));
            }
            let event = |event_type| Event {
                explicit,
                workload: workload.clone(),
                ..line.to_event(event_type)
            };
            Ok(match (event_type, base) {
                (Some(event_type), _) => Record::Event {
                    event: event(event_type),
                    lifetime_ns: line.lifetime_ns,
                    time_wait_ns: line.time_wait_ns,
                },
                (None, "existing_gone") => Record::ExistingGone(event(EventType::Alloc)),
                (None, "reconciled") => Record::Reconciled(event(EventType::Release)),
                (None, "time_wait") => Record::TimeWait(Event {
                    time_wait: true,
                    ..event(EventType::Release)
                }),
                _ => Record::Existing(event(EventType::Alloc)),
            })
        }
        _ => Ok(Record::Skipped(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOC: &str = r#"{"type":"alloc","ts_ns":1000,"proto":"tcp","family":"ipv4","port":40001,"kind":"connect","pid":7,"comm":"curl","netns":4026531840,"cgroup_id":5,"laddr":"127.0.0.1","raddr":"10.1.2.3","rport":443,"cookie":9,"cgroup":"/a"}"#;

    #[test]
    fn decodes_an_alloc() {
        let Record::Event { event, .. } = decode_line(ALLOC).expect("decodes") else {
            panic!("an event");
        };
        assert_eq!(event.event, EventType::Alloc);
        assert_eq!(event.ts_ns, 1000);
        assert_eq!(event.port, 40001);
        assert_eq!(event.comm, "curl");
        assert_eq!(event.cgroup, CgroupId(5));
        assert_eq!(event.raddr, IpAddr::from([10, 1, 2, 3]));
        assert_eq!(event.rport, 443);
        assert_eq!(event.cookie, 9);
        let workload = event.workload.expect("a workload");
        assert_eq!(workload.cgroup.as_deref(), Some("/a"));
    }

    #[test]
    fn decodes_a_release_with_time_wait_and_a_bind_without_peer() {
        let line = r#"{"type":"release","ts_ns":5,"proto":"udp","family":"ipv6","port":5000,"kind":"bind","pid":1,"comm":"x","netns":1,"cgroup_id":0,"laddr":"::1","lifetime_ns":4,"time_wait_ns":2,"cookie":3}"#;
        let Record::Event {
            event,
            lifetime_ns,
            time_wait_ns,
        } = decode_line(line).expect("decodes")
        else {
            panic!("an event");
        };
        assert_eq!(event.event, EventType::Release);
        assert_eq!((lifetime_ns, time_wait_ns), (Some(4), Some(2)));
        assert_eq!(event.raddr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(event.rport, 0);
    }

    #[test]
    fn a_syn_sent_line_round_trips() {
        let line = SynSentLine::new(
            7,
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 9, 0, 2]),
            80,
            150,
        );
        let text = serde_json::to_string(&line).expect("serializes");
        assert!(text.starts_with(r#"{"type":"syn_sent","#), "{text}");
        assert_eq!(decode_line(&text).expect("decodes"), Record::SynSent(line));
    }

    #[test]
    fn decodes_a_bound_connect_with_its_peer() {
        let line = ALLOC
            .replace(r#""type":"alloc""#, r#""type":"bound_connect""#)
            .replace(r#""kind":"connect""#, r#""kind":"bind""#);
        let Record::Event { event, .. } = decode_line(&line).expect("decodes") else {
            panic!("an event");
        };
        assert_eq!(
            (event.event, event.kind, event.rport),
            (EventType::BoundConnect, AllocKind::Bind, 443)
        );
        assert_eq!(event.raddr, IpAddr::from([10, 1, 2, 3]));
    }

    #[test]
    fn decodes_a_fail_existing_range_ready_and_skips_the_rest() {
        let fail = ALLOC.replace(r#""type":"alloc""#, r#""type":"fail","errno":99"#);
        let Record::Event { event, .. } = decode_line(&fail).expect("decodes") else {
            panic!("an event");
        };
        assert_eq!((event.event, event.errno), (EventType::Fail, 99));
        let existing = ALLOC.replace(r#""type":"alloc""#, r#""type":"existing""#);
        assert!(matches!(decode_line(&existing), Ok(Record::Existing(e)) if e.port == 40001));
        let range =
            r#"{"type":"range","netns":7,"low":40000,"high":40009,"reserved":[[40001,40002]]}"#;
        assert_eq!(
            decode_line(range).expect("decodes"),
            Record::Range(RangeLine::new(7, 40000, 40009, vec![(40001, 40002)]))
        );
        assert_eq!(
            decode_line(r#"{"type":"ready","backend":"kprobe","programs":[]}"#).expect("ok"),
            Record::Ready {
                backend: Some(Backend::Kprobe),
                ts_ns: None,
                pid: None,
                host: None,
                kernel: None,
            }
        );
        assert_eq!(
            decode_line(r#"{"type":"end","ts_ns":5,"elapsed_ns":3}"#).expect("ok"),
            Record::End { elapsed_ns: 3 }
        );
        assert_eq!(
            decode_line(r#"{"type":"finding","x":1}"#).expect("ok"),
            Record::Skipped("finding".into())
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        assert!(matches!(
            decode_line(r#"{"type":"alloc","ts_ns":1"#),
            Err(CaptureError::Json(_))
        ));
        assert!(matches!(
            decode_line(r#"{"ts_ns":1}"#),
            Err(CaptureError::NoType)
        ));
        let err = decode_line(r#"{"type":"alloc","ts_ns":1}"#).expect_err("fields missing");
        assert!(
            err.to_string().starts_with("a alloc record: missing field"),
            "{err}"
        );
        let zero = ALLOC.replace("40001", "0");
        assert!(matches!(decode_line(&zero), Err(CaptureError::NoPort(_))));
    }

    #[test]
    fn a_range_round_trips() {
        let range = RangeLine::new(3, 1, 2, vec![]);
        let json = serde_json::to_string(&range).expect("json");
        assert_eq!(
            json,
            r#"{"type":"range","netns":3,"low":1,"high":2,"reserved":[]}"#
        );
        assert_eq!(decode_line(&json).expect("ok"), Record::Range(range));
    }
}
