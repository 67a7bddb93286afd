//! The report as a short Markdown summary: the run, a table with a row per node, the order,
//! gate decisions, skipped nodes and failures. Text from the journal is escaped so it cannot break the table
//! or inject markup.

use super::RunReport;
use crate::report::short_duration;
use std::fmt::Write;

/// Escapes Markdown punctuation and inline HTML; a newline becomes a space (table cells).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn time(t: Option<jiff::Timestamp>) -> String {
    t.map_or("?".into(), |t| {
        t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

pub fn render(r: &RunReport) -> String {
    let (done, failed, not_started) = r.counts();
    let d = &r.durations;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# rollgate run {}: {}{}\n",
        esc(&r.run_id),
        esc(&r.outcome),
        if r.dry_run { " (dry run)" } else { "" }
    );
    let _ = writeln!(
        out,
        "- Playbook: **{}** ({})",
        esc(&r.playbook),
        esc(&r.playbook_file)
    );
    let _ = writeln!(
        out,
        "- Started by: {}",
        esc(r.started_by.as_deref().unwrap_or("unknown"))
    );
    let _ = writeln!(
        out,
        "- From {} to {}, total {}{}",
        time(r.started_at),
        time(r.ended_at),
        short_duration(d.total_ms),
        if r.resumes > 0 {
            format!(
                "; resumed {} time(s){}",
                r.resumes,
                esc(&super::resumed_text(r))
            )
        } else {
            String::new()
        }
    );
    let skipped = r.skipped();
    let skipped_count = if skipped.is_empty() {
        String::new()
    } else {
        format!(", {} skipped", skipped.len())
    };
    let _ = writeln!(
        out,
        "- Nodes: {done} done, {failed} failed{skipped_count}, {not_started} not started"
    );
    if let (Some(avg), Some((min_n, min)), Some((max_n, max))) = (d.average_ms, &d.min, &d.max) {
        let _ = writeln!(
            out,
            "- Node duration: average {}, min {} ({}), max {} ({})",
            short_duration(avg),
            short_duration(*min),
            esc(min_n),
            short_duration(*max),
            esc(max_n)
        );
    }
    if let Some(t) = crate::journal::skipped_text(&r.skipped_lines) {
        let _ = writeln!(out, "- Journal: {t} (torn by a crash or a full disk)");
    }
    out.push_str(
        "\n## Nodes\n\n| node | phase | state | duration | failure |\n|---|---|---|---|---|\n",
    );
    for n in &r.nodes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            esc(&n.name),
            esc(&n.phase),
            super::state_name(n.state),
            n.duration_ms.map_or("-".into(), short_duration),
            super::RunReport::note(n).map_or(String::new(), |t| esc(&t))
        );
    }
    let names = |v: &mut dyn Iterator<Item = &String>| v.map(|n| esc(n)).collect::<Vec<_>>();
    let plan = names(&mut r.plan.iter().map(|(n, _)| n));
    let actual = names(&mut r.actual.iter());
    out.push_str("\n## Order\n\n");
    if plan == actual {
        let _ = writeln!(out, "As planned: {}", plan.join(", "));
    } else {
        let _ = writeln!(
            out,
            "- Planned: {}\n- Actual: {}",
            plan.join(", "),
            actual.join(", ")
        );
    }
    if !r.operator.is_empty() {
        out.push_str("\n## Operator requests\n\n");
        for (ms, what) in &r.operator {
            let _ = writeln!(out, "- +{}: {}", short_duration(*ms), esc(what));
        }
    }
    if !r.waits.is_empty() {
        out.push_str("\n## Waits\n\n");
        for w in &r.waits {
            let _ = writeln!(
                out,
                "- +{} to {}: {}",
                short_duration(w.from_ms),
                w.to_ms.map_or("end of journal".to_owned(), |t| format!(
                    "+{}",
                    short_duration(t)
                )),
                esc(&w.why)
            );
        }
    }
    if !r.preflight.is_empty() {
        out.push_str("\n## Pre-flight\n\n");
        for p in &r.preflight {
            let _ = writeln!(
                out,
                "- +{}: {}",
                short_duration(p.at_ms),
                esc(&p.verdicts.join(", "))
            );
            for f in &p.findings {
                let _ = writeln!(out, "  - {}", esc(f));
            }
        }
    }
    if !r.gates.is_empty() {
        out.push_str("\n## Gate decisions\n\n");
        for g in &r.gates {
            let _ = writeln!(
                out,
                "- +{} **{}** by {}: {}",
                short_duration(g.at_ms),
                esc(&g.decision),
                esc(&g.signal),
                esc(&g.evidence)
            );
        }
    }
    if !skipped.is_empty() {
        out.push_str("\n## Skipped nodes\n\nUncordoned without their command (`on-pdb-timeout = \"skip\"`): not upgraded, not failures; a new run includes them again.\n\n");
        for (node, skip) in &skipped {
            let _ = writeln!(
                out,
                "- {}: held by PodDisruptionBudget {} (pods {}): {}",
                esc(node),
                esc(&skip.pdbs.join(", ")),
                esc(&skip.pods.join(", ")),
                esc(&skip.reason)
            );
        }
    }
    if !r.failures.is_empty() {
        out.push_str("\n## Failures\n\n");
        for f in &r.failures {
            let _ = writeln!(
                out,
                "- +{} {} at {}: {}",
                short_duration(f.at_ms),
                esc(&f.node),
                f.step,
                esc(&f.reason)
            );
        }
    }
    out
}
