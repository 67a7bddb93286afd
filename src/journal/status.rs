//! The run's status as `rollgate status` shows it and the cluster copy carries it
//! (`status.json`): a view of the [`RunHistory`].

use super::{NodeState, Records, RunEnd, RunHistory, RunState, wire_name};
use crate::vocab::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One node's state as the journal tells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub phase: String,
    pub state: NodeState,
    pub step: Option<String>,
    pub since: Option<String>,
    pub last_error: Option<String>,
    /// Why it was skipped (`on-pdb-timeout = "skip"`), naming the budgets and pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunStatus {
    pub run_id: String,
    pub playbook: String,
    /// `running` (or crashed: the journal has no end), `paused`, `waiting for the maintenance
    /// window (...)`, `succeeded`, `succeeded-with-failures`, `stopped: REASON`, `refused: WHY`.
    pub state: String,
    pub nodes: BTreeMap<String, NodeStatus>,
    pub decisions: Vec<String>,
    /// `[window] finish-by-end`: the node it holds back now and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_by_end: Option<String>,
    /// Journal lines that do not parse (torn by a crash or a full disk), 1-based: skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_lines: Vec<usize>,
}

impl RunEnd {
    /// `succeeded`, `succeeded-with-failures`, `stopped: gate-abort`, `refused: WHY`.
    pub fn name(&self) -> String {
        match self {
            RunEnd::Finished(Outcome::Stopped(reason)) => format!("stopped: {}", wire_name(reason)),
            RunEnd::Finished(outcome) => wire_name(outcome),
            RunEnd::Refused(reason) => format!("refused: {reason}"),
        }
    }
}

impl RunState {
    pub fn name(&self) -> String {
        match self {
            RunState::Running => "running".into(),
            RunState::Paused => "paused".into(),
            RunState::WaitingForWindow { reopens_at } => format!(
                "waiting for the maintenance window (reopens {})",
                reopens_at.as_deref().unwrap_or("not within a year")
            ),
            RunState::Ended(end) => end.name(),
        }
    }
}

impl RunStatus {
    pub fn from_journal(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_history(&RunHistory::read(path)?))
    }

    pub fn from_records(journal: Records) -> Self {
        Self::from_history(&RunHistory::fold(journal))
    }

    pub fn from_history(history: &RunHistory) -> Self {
        let header = history.header.clone().unwrap_or_default();
        let time = |t: std::time::SystemTime| humantime::format_rfc3339_millis(t).to_string();
        RunStatus {
            run_id: header.run_id,
            playbook: header.playbook,
            state: history.state.name(),
            nodes: history
                .nodes
                .iter()
                .map(|n| {
                    let status = NodeStatus {
                        phase: n.phase.clone(),
                        state: n.state,
                        step: n.step.map(|s| s.name().to_owned()),
                        since: n.since.map(time),
                        last_error: n.failure.as_ref().map(|(_, reason)| reason.clone()),
                        skipped: n.skip.as_ref().map(|s| s.reason.clone()),
                    };
                    (n.name.clone(), status)
                })
                .collect(),
            decisions: history
                .decisions
                .iter()
                .map(|(_, d)| format!("{} by {}: {}", wire_name(&d.decision), d.signal, d.evidence))
                .collect(),
            finish_by_end: history.finish_by_end.as_ref().map(|h| h.describe()),
            skipped_lines: history.skipped.clone(),
        }
    }
}
