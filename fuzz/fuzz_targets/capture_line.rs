//! Lines of a `--events json` capture, as `port-trace analyze` reads them back (a capture
//! copied from another host is outside input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::event::{
    EventType,
    capture::{Record, decode_line},
};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    // Never a panic; and what decodes is what the pipeline may take: only a failure has no
    // port (the same rule as for the ring's records).
    if let Ok(Record::Event { event, .. }) = decode_line(&line) {
        assert!(
            event.port != 0 || event.event == EventType::Fail,
            "{:?} with port 0 from {line:?}",
            event.event
        );
    }
});
