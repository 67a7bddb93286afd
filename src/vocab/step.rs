//! The steps of one node's upgrade, and what each step is to the rest of rollgate.

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

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
