//! Warnings: a scope crossed a line, or an allocation in it failed; with how full it is, how
//! long until it is full, and who holds its ports. Built here, rendered by the sinks.

use std::sync::Arc;

use serde::Serialize;

use super::{
    level::Level,
    scope::{Holder, ScopeKey, Usage},
};
use crate::event::workload::{CgroupId, Workload};

/// Why a warning was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The scope's usage crossed the warn or critical line.
    Threshold,
    /// An allocation drawing from the scope failed.
    Failure,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub level: Level,
    pub reason: Reason,
    pub scope: ScopeKey,
    pub usage: Usage,
    /// Seconds to exhaustion at the current pace; None when the scope is not filling.
    pub forecast_s: Option<f64>,
    /// Who holds the most ports in the scope, most first.
    pub top: Vec<Top>,
    /// The workload whose network namespace it is, where one owns it alone.
    pub owner: Option<Arc<Workload>>,
}

/// One of the holders a warning names.
#[derive(Debug, Clone, PartialEq)]
pub struct Top {
    pub holder: Holder,
    /// Distinct ports it holds in the scope.
    pub ports: u32,
    /// Its cgroup (as last seen allocating).
    pub cgroup: CgroupId,
    /// The workload its cgroup belongs to, where that was found.
    pub workload: Option<Arc<Workload>>,
}
