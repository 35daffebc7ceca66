#![no_std]
// This file exists so port-trace can list this crate as a build-dependency (cargo needs a lib
// target); the programs are the binary target, built for bpf by port-trace/build.rs.
