//! Pre-flight: what would go wrong tonight, known at 6 p.m. Each check reads the live cluster
//! (and the state directory's history) against the plan and yields findings that name the
//! node, the object and the fix. `rollgate preflight` prints them and exits 9 on a blocker of a
//! check not named by `--ignore-preflight CHECK`; `plan` shows them; `run` and `resume` run
//! them before the first cordon and refuse to start the same way (their [`Report::summary`] is
//! the run's `preflight` event).
//!
//! - [`preview`]: the plan resolved against one [`crate::cluster::Snapshot`], with what each
//!   node's drain would do (the snapshot the checks read too).
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
pub mod preview;
pub mod skew;
pub mod ssh;

pub use gather::{Options, gather};

use crate::vocab::{CheckVerdict, PreflightFinding, PreflightSummary, Verdict};
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

    /// Each check's verdict (those that ran, then those skipped).
    pub fn verdicts(&self, ignored: &[Check]) -> Vec<CheckVerdict> {
        let ran = self.ran.iter().map(|check| {
            let worst = self
                .findings
                .iter()
                .filter(|f| f.check == *check)
                .map(|f| f.severity)
                .max();
            let verdict = match worst {
                Some(Severity::Blocker) if ignored.contains(check) => Verdict::Ignored,
                Some(Severity::Blocker) => Verdict::Blocked,
                Some(Severity::Warning) => Verdict::Warning,
                _ => Verdict::Ok,
            };
            CheckVerdict {
                check: check.name().into(),
                verdict,
                note: None,
            }
        });
        let skipped = self.skipped.iter().map(|(check, why)| CheckVerdict {
            check: check.name().into(),
            verdict: Verdict::Skipped,
            note: Some(why.clone()),
        });
        ran.chain(skipped).collect()
    }

    /// What a run records and tells people: the verdicts, the blockers and the warnings.
    pub fn summary(&self, ignored: &[Check]) -> PreflightSummary {
        PreflightSummary {
            checks: self.verdicts(ignored),
            findings: self
                .sorted()
                .into_iter()
                .filter(|f| f.severity >= Severity::Warning)
                .map(|f| PreflightFinding {
                    check: f.check.name().into(),
                    blocker: f.severity == Severity::Blocker,
                    node: f.node.clone(),
                    object: f.object.clone(),
                    message: f.message.clone(),
                    fix: f.fix.clone(),
                })
                .collect(),
        }
    }

    /// The findings as a table for the terminal.
    pub fn render(&self, ignored: &[Check]) -> String {
        let mut out = String::from("pre-flight:\n");
        for v in self.verdicts(ignored) {
            let verdict = match v.verdict {
                Verdict::Ignored => "BLOCKED (ignored)".to_owned(),
                Verdict::Blocked => "BLOCKED".to_owned(),
                Verdict::Warning => "warning".to_owned(),
                Verdict::Ok => "ok".to_owned(),
                Verdict::Skipped => format!("skipped: {}", v.note.unwrap_or_default()),
            };
            out.push_str(&format!("  {:<15} {verdict}\n", v.check));
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

    #[test]
    fn the_run_summary_refuses_only_on_blockers_of_checks_not_ignored() {
        let report = Report {
            findings: vec![
                Finding::new(
                    Check::DrainBlockers,
                    Severity::Blocker,
                    "maxUnavailable is 0",
                )
                .node("n1")
                .object("PodDisruptionBudget ns/db")
                .fix("raise it"),
                Finding::new(Check::Eta, Severity::Warning, "slow when slow"),
                Finding::new(Check::Capacity, Severity::Info, "worst wave"),
            ],
            ran: vec![Check::DrainBlockers, Check::Capacity, Check::Eta],
            skipped: vec![(Check::Ssh, "--no-ssh-check".into())],
            ..Default::default()
        };
        let summary = report.summary(&[]);
        let verdicts: Vec<(&str, Verdict)> = summary
            .checks
            .iter()
            .map(|c| (c.check.as_str(), c.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("drain-blockers", Verdict::Blocked),
                ("capacity", Verdict::Ok),
                ("eta", Verdict::Warning),
                ("ssh", Verdict::Skipped)
            ]
        );
        // Blockers and warnings, blockers first; no info.
        assert_eq!(summary.findings.len(), 2);
        assert!(summary.findings[0].blocker && !summary.findings[1].blocker);
        let refusal = summary.refusal().expect("a blocker refuses");
        assert!(
            refusal.starts_with("error: refusing to start: pre-flight found 1 blocker(s) (drain-blockers): [drain-blockers] n1 PodDisruptionBudget ns/db: maxUnavailable is 0"),
            "{refusal}"
        );
        assert!(
            refusal.contains("--ignore-preflight drain-blockers"),
            "{refusal}"
        );
        // Ignored: the same finding, recorded, but the run goes; warnings never refuse.
        let ignored = report.summary(&[Check::DrainBlockers]);
        assert_eq!(ignored.checks[0].verdict, Verdict::Ignored);
        assert_eq!(ignored.findings.len(), 2);
        assert_eq!(ignored.refusal(), None);
        assert!(
            report
                .render(&[Check::DrainBlockers])
                .contains("drain-blockers  BLOCKED (ignored)")
        );
        // The summary is the journal's `preflight` event: it reads back as written.
        let event = crate::vocab::RunEvent::Preflight { summary };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.starts_with("{\"event\":\"preflight\""), "{text}");
        assert_eq!(
            serde_json::from_str::<crate::vocab::RunEvent>(&text).unwrap(),
            event
        );
    }
}
