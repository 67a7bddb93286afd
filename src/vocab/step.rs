//! The steps of one node's upgrade, and what each step is to the rest of rollgate.

use super::ProbeWhen;
use serde::{Deserialize, Serialize};

/// The steps of one node's upgrade, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Cordon,
    Drain,
    Command,
    WaitReady,
    Uncordon,
    Settle,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Cordon,
        Step::Drain,
        Step::Command,
        Step::WaitReady,
        Step::Uncordon,
        Step::Settle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Cordon => "cordon",
            Step::Drain => "drain",
            Step::Command => "command",
            Step::WaitReady => "wait-ready",
            Step::Uncordon => "uncordon",
            Step::Settle => "settle",
        }
    }
}

/// Where a resumed run picks up a node that was interrupted *inside* a step (started, not
/// finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// From the first step: the step only reads or undoes itself safely (cordon, drain).
    Start,
    /// The step again: it is idempotent (wait-ready, uncordon, settle).
    ThisStep,
    /// Only after finding out what the interrupted command did (its record on the node, or
    /// `--command-done`): running it twice is what rollgate never does by accident.
    AfterCheckingTheCommand,
}

/// What a step is to the rest of rollgate: one row per step, so the engine, the health gates
/// and the journal agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTraits {
    /// A gate abort or a lost lock stops the step at once (it only waits); otherwise the step
    /// runs to its end first.
    pub interruptible: bool,
    /// The node is cordoned while a failure at this step leaves it (the failure is said with
    /// the command that hands it back).
    pub leaves_node_cordoned: bool,
    /// The node is out of service during the step: its own NotReady and its pods' restarts are
    /// expected, not held against the run.
    pub takes_node_down: bool,
    /// The probes that run once the step is done.
    pub probes_after: Option<ProbeWhen>,
    /// Where a resumed run picks up a node interrupted inside this step.
    pub resume_from: ResumeFrom,
}

impl Step {
    /// The step table.
    pub const fn traits(self) -> StepTraits {
        use ResumeFrom::*;
        let (interruptible, leaves_node_cordoned, takes_node_down, probes_after, resume_from) =
            match self {
                Step::Cordon => (false, false, true, None, Start),
                Step::Drain => (true, true, true, Some(ProbeWhen::AfterDrain), Start),
                Step::Command => (
                    false,
                    true,
                    true,
                    Some(ProbeWhen::AfterCommand),
                    AfterCheckingTheCommand,
                ),
                Step::WaitReady => (true, true, true, None, ThisStep),
                Step::Uncordon => (false, true, false, Some(ProbeWhen::AfterUncordon), ThisStep),
                Step::Settle => (true, false, false, None, ThisStep),
            };
        StepTraits {
            interruptible,
            leaves_node_cordoned,
            takes_node_down,
            probes_after,
            resume_from,
        }
    }

    /// The step after this one (None after settle).
    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self).expect("a step");
        Step::ALL.get(i + 1).copied()
    }

    /// Parses a step's name (as in the journal and the `rollgate.dev/step` annotation).
    pub fn from_name(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
