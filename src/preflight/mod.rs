//! Pre-flight: what would go wrong tonight, known at 6 p.m. Each check reads the live cluster
//! (and the state directory's history) against the plan and yields findings that name the
//! node, the object and the fix. `rollgate preflight` prints them and exits 9 on a blocker of a
//! check not named by `--ignore-preflight CHECK`; `plan` shows them. (`run` does not run them
//! yet.)
//!
//! - [`skew`]: kubelet version skew against the apiserver, control-plane order, nodes already
//!   at the target.
//! - [`eta`]: per-step durations from earlier runs' journals (p50, p95) and whether the run
//!   fits its window and deadline.
//! - [`capacity`]: whether the nodes that stay schedulable can take the pods of `concurrency`
//!   drained nodes at once.
//! - [`drain_blockers`]: budgets, refused pods, single replicas, per node and per wave.
//! - [`ssh`]: every node reached with the run's SSH settings.

pub mod capacity;
pub mod drain_blockers;
pub mod eta;
mod gather;
pub mod skew;
pub mod ssh;

pub use gather::{Options, gather};

use serde::Serialize;

/// The checks, by the names flags, JSON and docs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    DrainBlockers,
    Capacity,
    VersionSkew,
    Ssh,
    Eta,
}

impl Check {
    pub const ALL: [Check; 5] = [
        Check::DrainBlockers,
        Check::Capacity,
        Check::VersionSkew,
        Check::Ssh,
        Check::Eta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::DrainBlockers => "drain-blockers",
            Check::Capacity => "capacity",
            Check::VersionSkew => "version-skew",
            Check::Ssh => "ssh",
            Check::Eta => "eta",
        }
    }

    pub fn parse(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Worth knowing (e.g. a drain that will serialise).
    Info,
    /// The run can go, but something will hurt (downtime, a slow wave).
    Warning,
    /// The run cannot succeed as planned: it refuses to start unless the check is ignored.
    Blocker,
}

/// One thing pre-flight found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    /// The node it is about, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The object it is about (`Kind namespace/name`), if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    pub fn new(check: Check, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            check,
            severity,
            node: None,
            object: None,
            message: message.into(),
            fix: String::new(),
        }
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

/// All checks' findings, with the checks that ran and those skipped (and why).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub ran: Vec<Check>,
    pub skipped: Vec<(Check, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<eta::Forecast>,
}

impl Report {
    /// Blockers of checks not ignored: the run must not start while there are any.
    pub fn blockers(&self, ignored: &[Check]) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker && !ignored.contains(&f.check))
            .collect()
    }

    /// Findings, most severe first, then by check and node.
    pub fn sorted(&self) -> Vec<&Finding> {
        let mut all: Vec<&Finding> = self.findings.iter().collect();
        all.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.check.cmp(&b.check))
                .then(a.node.cmp(&b.node))
        });
        all
    }

    /// The findings as a table for the terminal.
    pub fn render(&self, ignored: &[Check]) -> String {
        let mut out = String::from("pre-flight:\n");
        for check in &self.ran {
            let mine: Vec<&Finding> = self.findings.iter().filter(|f| f.check == *check).collect();
            let worst = mine.iter().map(|f| f.severity).max();
            let verdict = match worst {
                Some(Severity::Blocker) if ignored.contains(check) => "BLOCKED (ignored)",
                Some(Severity::Blocker) => "BLOCKED",
                Some(Severity::Warning) => "warning",
                _ => "ok",
            };
            out.push_str(&format!("  {:<15} {verdict}\n", check.name()));
        }
        for (check, why) in &self.skipped {
            out.push_str(&format!("  {:<15} skipped: {why}\n", check.name()));
        }
        for f in self.sorted() {
            let tag = match f.severity {
                Severity::Blocker => "BLOCKER",
                Severity::Warning => "warning",
                Severity::Info => "info",
            };
            let about = [f.node.as_deref(), f.object.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&format!("  {tag:<8} [{}] {about}", f.check));
            if !about.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&f.message);
            out.push('\n');
            if !f.fix.is_empty() {
                out.push_str(&format!("           fix: {}\n", f.fix));
            }
        }
        if let Some(eta) = &self.eta {
            out.push_str(&eta.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_round_trip_and_blockers_respect_ignored_checks() {
        for c in Check::ALL {
            assert_eq!(Check::parse(c.name()), Some(c));
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.name())
            );
        }
        let report = Report {
            findings: vec![
                Finding::new(Check::Ssh, Severity::Blocker, "unreachable").node("n1"),
                Finding::new(Check::Capacity, Severity::Warning, "tight"),
            ],
            ran: vec![Check::Ssh, Check::Capacity],
            ..Default::default()
        };
        assert_eq!(report.blockers(&[]).len(), 1);
        assert!(report.blockers(&[Check::Ssh]).is_empty());
        let text = report.render(&[]);
        assert!(text.contains("ssh             BLOCKED"), "{text}");
        assert!(text.contains("BLOCKER  [ssh] n1: unreachable"), "{text}");
    }
}
