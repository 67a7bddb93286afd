//! What someone may ask of a live run from outside it: the words shared by the cluster path
//! (`driver::control`) and the Slack buttons (`notify::slack_control`).

use serde::{Deserialize, Serialize};

/// Pause, resume or abort a live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlAction {
    Pause,
    Resume,
    Abort,
}

impl ControlAction {
    pub const ALL: [ControlAction; 3] = [Self::Pause, Self::Resume, Self::Abort];

    /// `pause`, `resume`, `abort`: a Slack button's action id, the command's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }

    /// `paused`, `resumed`, `aborted`.
    pub fn past(self) -> &'static str {
        match self {
            Self::Pause => "paused",
            Self::Resume => "resumed",
            Self::Abort => "aborted",
        }
    }

    /// The action named `name` (see [`ControlAction::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for a in ControlAction::ALL {
            assert_eq!(ControlAction::from_name(a.name()), Some(a));
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.name())
            );
        }
        assert_eq!(ControlAction::from_name("reboot"), None);
    }
}
