//! A finding for the sinks' tests.

use super::*;

/// TIME_WAIT churn to 10.0.0.5:443 by curl[42], as first emitted.
pub fn churn() -> Finding {
    Finding {
        kind: Kind::TimeWaitChurn,
        severity: Severity::Warn,
        state: State::Appeared,
        netns: 7,
        proto: Some(Proto::Tcp),
        destination: Some(Destination {
            laddr: IpAddr::from([127, 0, 0, 1]),
            raddr: IpAddr::from([10, 0, 0, 5]),
            rport: 443,
        }),
        who: Some(Who {
            pid: 42,
            comm: Comm::from("curl"),
            cgroup: CgroupId::UNKNOWN,
            workload: None,
        }),
        evidence: Evidence::TimeWait {
            held: 800,
            time_wait: 780,
            time_wait_share: 0.975,
            alloc_rate_per_s: 13.0,
            mean_lifetime_s: None,
            steady_state_held: Some(780.0),
            range_size: 1000,
        },
        remedy: "reuse connections; `sysctl -w net.ipv4.tcp_tw_reuse=1`".into(),
        ts_ns: 1,
    }
}
