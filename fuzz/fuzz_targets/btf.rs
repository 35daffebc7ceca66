//! The BTF reader: the kernel's `/sys/kernel/btf/vmlinux`, parsed at start-up for the struct
//! offsets the eBPF programs need.
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_trace::probes::btf::Btf;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    // What the daemon asks of it, then paths through anonymous members and aliases at any
    // depth the input builds.
    let _ = btf.kernel_offsets();
    for path in [
        "sock",
        "sock.",
        "sock..x",
        "net.ns.inum.x",
        "a.b.c.d.e.f.g.h",
    ] {
        let _ = btf.offset_of(path);
    }
});
