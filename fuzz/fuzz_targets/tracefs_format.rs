//! Tracepoint `format` files from tracefs, read at start-up for where `ret` sits in the syscall
//! exit records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::probes::tracefs::field_offset;

fuzz_target!(|data: &[u8]| {
    // The file as the daemon reads it (text), and the field names it asks for plus one the
    // input names (its first line).
    let format = String::from_utf8_lossy(data);
    let own = format.lines().next().unwrap_or_default().trim();
    for name in ["ret", "__syscall_nr", own] {
        if let Some(offset) = field_offset(&format, name) {
            // An offset is only ever read from a `field:` line that declares `name`.
            let declared = format.lines().any(|line| {
                let line = line.trim();
                line.starts_with("field:") && line.contains(name) && line.contains("offset:")
            });
            assert!(
                declared,
                "offset {offset} of {name:?} from nowhere in {format:?}"
            );
        }
    }
});
