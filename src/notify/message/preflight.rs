//! The pre-flight summary in words, for the run's own message and a refused run's.

use crate::vocab::{PreflightSummary, Verdict};

/// Findings a message lists at most (the rest are counted).
const MAX_FINDINGS: usize = 8;

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "ok",
        Verdict::Warning => "warning",
        Verdict::Blocked => "BLOCKED",
        Verdict::Ignored => "blocked (ignored)",
        Verdict::Skipped => "skipped",
    }
}

/// `check verdict, ...` for a field.
pub(super) fn verdicts(summary: &PreflightSummary) -> String {
    summary
        .checks
        .iter()
        .map(|c| format!("{} {}", c.check, verdict_word(c.verdict)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The summary for people: one line of verdicts, then the findings (at most
/// [`MAX_FINDINGS`]), blockers first.
pub(super) fn preflight_text(summary: &PreflightSummary) -> String {
    let mut text = format!(
        "pre-flight: {}",
        summary
            .checks
            .iter()
            .map(|c| format!("{} *{}*", c.check, verdict_word(c.verdict)))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    for f in summary.findings.iter().take(MAX_FINDINGS) {
        let tag = if f.blocker { "BLOCKER" } else { "warning" };
        text.push_str(&format!("\n• {tag} {}", f.line()));
    }
    if summary.findings.len() > MAX_FINDINGS {
        text.push_str(&format!(
            "\n• … and {} more (`rollgate preflight` lists them)",
            summary.findings.len() - MAX_FINDINGS
        ));
    }
    text
}
