//! The report's pre-flight section.

use super::*;

#[test]
fn the_preflight_verdicts_and_findings_of_each_start_are_in_both_reports() {
    use crate::vocab::{CheckVerdict, PreflightFinding, PreflightSummary, Verdict};
    let summary = PreflightSummary {
        checks: vec![
            CheckVerdict {
                check: "drain-blockers".into(),
                verdict: Verdict::Ignored,
                note: None,
            },
            CheckVerdict {
                check: "ssh".into(),
                verdict: Verdict::Skipped,
                note: Some("--no-ssh-check".into()),
            },
        ],
        findings: vec![PreflightFinding {
            check: "drain-blockers".into(),
            blocker: true,
            node: Some("a".into()),
            object: Some("PodDisruptionBudget shop/<db>".into()),
            message: "allows no disruption".into(),
            fix: String::new(),
        }],
    };
    let events = [
        (0.0, run_started(None)),
        (0.5, RunEvent::Preflight { summary }),
        (1.0, node_started("a", "cp")),
        (6.0, node_done("a")),
        (7.0, run_finished(Outcome::Succeeded)),
    ];
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    let md = markdown::render(&r);
    assert!(
        md.contains("## Pre-flight\n\n- +500ms: drain-blockers: ignored, ssh: skipped (--no-ssh-check)\n  - blocker \\[drain-blockers\\] a PodDisruptionBudget shop/&lt;db&gt;: allows no disruption"),
        "{md}"
    );
    let html = html::render(&r);
    assert!(
        html.contains("<h2>Pre-flight</h2>")
            && html.contains("blocker [drain-blockers] a PodDisruptionBudget shop/&lt;db&gt;: allows no disruption"),
        "{html}"
    );
}
