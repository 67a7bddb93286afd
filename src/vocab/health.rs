//! The health vocabulary: what a probe found, what a gate decided, the problems the monitor
//! sees, and the moments probes run at.

use super::Step;
use serde::{Deserialize, Serialize};

/// What a gate does when its limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Abort,
    Pause,
    Warn,
}

/// The result of one probe or signal check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "evidence", rename_all = "kebab-case")]
pub enum ProbeOutcome {
    Pass,
    Fail(String),
    Inconclusive(String),
}

/// A gate's decision with what led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    pub decision: Decision,
    pub signal: String,
    pub evidence: String,
    /// Nodes in flight when it was decided, with their step.
    pub in_flight: Vec<(String, Step)>,
}

/// The kinds of problem, from the least to the most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    CrashLoop,
    WaitingError,
    RestartsRising,
    NotReady,
    Pending,
    NodeNotReady,
    Unreachable,
}

/// A problem the monitor sees on a pod or a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `namespace/name` for pods, the node name for nodes.
    pub object: String,
    pub node: Option<String>,
    pub kind: ProblemKind,
    /// The evidence: status reason and message, restart counts, for how long.
    pub detail: String,
}

/// When a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeWhen {
    BeforeRun,
    AfterDrain,
    AfterCommand,
    AfterUncordon,
    AfterWave,
    Periodic,
}

/// The playbook's name for a probe moment.
pub fn when_name(w: ProbeWhen) -> &'static str {
    match w {
        ProbeWhen::BeforeRun => "before-run",
        ProbeWhen::AfterDrain => "after-drain",
        ProbeWhen::AfterCommand => "after-command",
        ProbeWhen::AfterUncordon => "after-uncordon",
        ProbeWhen::AfterWave => "after-wave",
        ProbeWhen::Periodic => "periodic",
    }
}
