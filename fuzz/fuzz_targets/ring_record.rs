//! The ring buffer record decoder: every record the eBPF programs submit reaches the daemon as
//! bytes through `event::decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::event::{EventType, Family, decode};
use port_trace_common::PortEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = decode(data) else {
        return;
    };
    assert!(
        data.len() >= size_of::<PortEvent>(),
        "decoded a short record"
    );
    // Both addresses are of the record's family.
    let v4 = event.family == Family::Ipv4;
    assert_eq!(event.laddr.is_ipv4(), v4, "{event:?}");
    assert_eq!(event.raddr.is_ipv4(), v4, "{event:?}");
    // The kernel never hands out port 0: an allocation or a release of it is no port at all.
    if event.event != EventType::Fail {
        assert_ne!(event.port, 0, "a port of 0 in {event:?}");
    }
    assert!(!event.time_wait_end || event.event == EventType::Release);
    // The name is text, its length the kernel's at most; shown to people, it carries no
    // control character (its `Display` escapes them).
    let comm = event.comm.as_str();
    assert!(comm.len() <= 16, "{comm:?}");
    assert!(!comm.contains('\0'), "{comm:?}");
    let shown = event.comm.to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    let _ = (event.local(), event.remote());
});
