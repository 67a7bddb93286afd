//! What the pre-flight checks said before a run started, as the run records it (the
//! `preflight` event) and tells people about it: the verdict per check and the blocker and
//! warning findings. Whether it refuses the run is decided here, from the verdicts.

use serde::{Deserialize, Serialize};

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    /// Warnings only: the run goes.
    Warning,
    /// A blocker: the run refuses to start.
    Blocked,
    /// A blocker, but the check was named by `--ignore-preflight`: the run goes.
    Ignored,
    /// Not run (e.g. `--no-ssh-check`); `note` says why.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckVerdict {
    /// The check's name (`drain-blockers`, `capacity`, `version-skew`, `ssh`, `eta`).
    pub check: String,
    pub verdict: Verdict,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A blocker or warning, as short as the terminal table's line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightFinding {
    pub check: String,
    /// A blocker (else a warning).
    pub blocker: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `Kind namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl PreflightFinding {
    /// `[check] node object: message`, on one line (a message quoting a tool's output, such as
    /// ssh's host key warning, has its line breaks and runs of spaces folded).
    pub fn line(&self) -> String {
        let message = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let about = [self.node.as_deref(), self.object.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if about.is_empty() {
            format!("[{}] {message}", self.check)
        } else {
            format!("[{}] {about}: {message}", self.check)
        }
    }
}

/// The pre-flight checks' summary for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightSummary {
    pub checks: Vec<CheckVerdict>,
    /// Blockers (of every check, ignored ones too) and warnings, blockers first.
    pub findings: Vec<PreflightFinding>,
}

impl PreflightSummary {
    /// The checks that refuse the run (a blocker, not ignored).
    pub fn blocked(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Blocked)
            .map(|c| c.check.as_str())
            .collect()
    }

    /// The blockers that refuse the run.
    pub fn blockers(&self) -> Vec<&PreflightFinding> {
        let blocked = self.blocked();
        self.findings
            .iter()
            .filter(|f| f.blocker && blocked.contains(&f.check.as_str()))
            .collect()
    }

    /// Why the run refuses to start (first line: what blocks it), or None when it may.
    pub fn refusal(&self) -> Option<String> {
        let blocked = self.blocked();
        if blocked.is_empty() {
            return None;
        }
        let blockers = self.blockers();
        let mut text = format!(
            "error: refusing to start: pre-flight found {} blocker(s) ({}): {}",
            blockers.len(),
            blocked.join(", "),
            blockers
                .iter()
                .map(|f| f.line())
                .collect::<Vec<_>>()
                .join("; ")
        );
        text.push_str(&format!(
            "\n  nothing was changed; fix them (`rollgate preflight PLAYBOOK` shows each fix), or run despite them with {}",
            blocked
                .iter()
                .map(|c| format!("--ignore-preflight {c}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        Some(text)
    }
}
