//! Failed program runs, counted per program (`PROBE_*` in port-trace-common) and per CPU.
//!
//! Every program is a thin wrapper: `errors::count(PROBE_X, try_x(&ctx))`. `try_*` returns
//! `Err` only for a real failure: a helper or a kernel read that failed. A socket that is not
//! traced, or a call that is not a port request, is `Ok`: nothing went wrong.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use port_trace_common::PROBE_PROGRAMS;

#[map]
static PROBE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_PROGRAMS, 0);

/// What a program's `try_*` returns: the helper's error code on failure (only counted).
pub type Outcome = Result<(), i64>;

/// An argument `ctx.arg` could not give (past the registers that carry arguments).
pub const NO_ARG: i64 = -1;

/// Counts `outcome` if it is a failure of `program`. A success costs one branch, no map
/// operation.
#[inline(always)]
pub fn count(program: u32, outcome: Outcome) {
    if outcome.is_err() {
        failed(program);
    }
}

#[inline(always)]
fn failed(program: u32) {
    if let Some(counter) = PROBE_ERRORS.get_ptr_mut(program) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *counter += 1 };
    }
}
