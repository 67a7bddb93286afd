//! The report as one self-contained HTML page: inline CSS, an inline SVG timeline (one
//! `<g class="timeline-row" data-node="NAME">` per node, a bar per step coloured by
//! [`step_color`]), no script, nothing fetched. Everything taken from the journal is escaped.

use super::{NodeState, RunReport, SpanEnd};
use crate::report::short_duration;
use crate::vocab::Step;
use std::fmt::Write;

/// The colour of a step's bars (and its legend swatch), as RGB.
pub fn step_color(step: Step) -> (u8, u8, u8) {
    match step {
        Step::Cordon => (142, 108, 196),
        Step::Drain => (232, 134, 42),
        Step::Command => (47, 126, 216),
        Step::WaitReady => (20, 165, 165),
        Step::Uncordon => (106, 168, 79),
        Step::Settle => (190, 170, 60),
    }
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Escapes text for HTML content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
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

fn dur(ms: Option<u64>) -> String {
    ms.map_or("-".into(), short_duration)
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}\
.meta{color:#555;margin:2px 0}.stats span{display:inline-block;margin-right:18px}\
.badge{padding:1px 8px;border-radius:9px;font-size:13px;color:#fff;background:#777}\
.ok{background:#2e7d32}.bad{background:#c62828}.warn{background:#ef6c00}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;white-space:nowrap}\
td.text{white-space:normal;min-width:200px}\
th{background:#f4f4f4}.legend span{display:inline-block;margin-right:14px}\
.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}\
.state-failed,.state-abandoned{color:#c62828;font-weight:bold}.state-interrupted,.state-skipped{color:#ef6c00}\
svg text{font:12px system-ui,sans-serif;fill:#333}";

const WIDTH: u64 = 1100;
const LABEL: u64 = 210;
const PLOT: u64 = WIDTH - LABEL - 20;
const ROW: u64 = 22;
const AXIS: u64 = 20;

/// A tick interval that gives at most ten ticks over `total_ms`.
fn tick_ms(total_ms: u64) -> u64 {
    const STEPS: [u64; 14] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
    ];
    STEPS
        .iter()
        .map(|s| s * 1000)
        .find(|s| total_ms / s <= 10)
        .unwrap_or(total_ms.div_ceil(10).max(1))
}

fn timeline(r: &RunReport, out: &mut String) {
    let total = r.durations.total_ms.max(1);
    let x = |ms: u64| LABEL + ms.min(total) * PLOT / total;
    let height = AXIS + ROW * r.nodes.len() as u64 + 4;
    let _ = write!(
        out,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" shape-rendering="crispEdges">"#
    );
    let tick = tick_ms(total);
    let mut t = 0;
    while t <= total {
        let _ = write!(
            out,
            r##"<line x1="{0}" y1="{AXIS}" x2="{0}" y2="{height}" stroke="#e4e4e4"/><text x="{0}" y="13" text-anchor="middle">{1}</text>"##,
            x(t),
            if t == 0 {
                "0".into()
            } else {
                short_duration(t)
            }
        );
        t += tick;
    }
    for (i, n) in r.nodes.iter().enumerate() {
        let y = AXIS + ROW * i as u64;
        let label: String = if n.name.chars().count() > 30 {
            n.name.chars().take(29).chain(['…']).collect()
        } else {
            n.name.clone()
        };
        let _ = write!(
            out,
            r##"<g class="timeline-row" data-node="{name}" data-state="{state}"><rect x="0" y="{y}" width="{WIDTH}" height="{ROW}" fill="{bg}"/><text x="{lx}" y="{ty}" text-anchor="end"><title>{name}</title>{label}</text>"##,
            name = esc(&n.name),
            state = super::state_name(n.state),
            bg = if i % 2 == 0 { "#fafafa" } else { "#ffffff" },
            lx = LABEL - 8,
            ty = y + 15,
            label = esc(&label),
        );
        // A node's steps follow each other: a step too short to see gets 3 px, and the next
        // one starts after it, so every step shows its colour.
        let mut next_free = 0;
        for s in &n.steps {
            let x0 = x(s.start_ms).max(next_free);
            let w = x(s.end_ms).saturating_sub(x0).max(3);
            next_free = x0 + w;
            let style = match s.end {
                SpanEnd::Finished => String::new(),
                SpanEnd::Failed => r##" stroke="#c62828" stroke-width="2""##.into(),
                SpanEnd::Interrupted => {
                    r##" fill-opacity="0.45" stroke="#555" stroke-dasharray="3 2""##.into()
                }
            };
            let end = match s.end {
                SpanEnd::Finished => "",
                SpanEnd::Failed => " FAILED",
                SpanEnd::Interrupted => " interrupted",
            };
            let _ = write!(
                out,
                r#"<rect class="bar step-{step}" x="{x0}" y="{by}" width="{w}" height="14" fill="{fill}"{style}><title>{step}{end}: {d} (at +{at}){detail}</title></rect>"#,
                step = s.step.name(),
                by = y + 4,
                fill = hex(step_color(s.step)),
                d = short_duration(s.end_ms - s.start_ms),
                at = short_duration(s.start_ms),
                detail = s
                    .detail
                    .as_deref()
                    .map(|d| format!(" — {}", esc(d)))
                    .unwrap_or_default(),
            );
        }
        if n.state == NodeState::Pending {
            let _ = write!(
                out,
                r##"<text x="{}" y="{}" fill="#999">not started</text>"##,
                LABEL + 4,
                y + 15
            );
        }
        out.push_str("</g>");
    }
    for w in &r.waits {
        let (x0, x1) = (x(w.from_ms), x(w.to_ms.unwrap_or(total)));
        let _ = write!(
            out,
            r##"<rect class="wait" x="{x0}" y="{AXIS}" width="{}" height="{}" fill="#9e9e9e" fill-opacity="0.18"><title>waiting: {}</title></rect>"##,
            (x1 - x0).max(2),
            height - AXIS,
            esc(&w.why)
        );
    }
    for g in &r.gates {
        let color = match g.decision.as_str() {
            "abort" => "#c62828",
            "pause" => "#ef6c00",
            _ => "#888",
        };
        let _ = write!(
            out,
            r#"<line class="gate" x1="{0}" y1="{AXIS}" x2="{0}" y2="{height}" stroke="{color}" stroke-width="2" stroke-dasharray="4 3"><title>gate {1} by {2}: {3}</title></line>"#,
            x(g.at_ms),
            esc(&g.decision),
            esc(&g.signal),
            esc(&g.evidence)
        );
    }
    out.push_str("</svg>\n<div class=\"legend\">");
    for step in Step::ALL {
        let _ = write!(
            out,
            r#"<span><i class="sw" style="background:{}"></i>{}</span>"#,
            hex(step_color(step)),
            step.name()
        );
    }
    out.push_str("<span>red outline: failed step; faded, dashed: interrupted; dashed vertical line: gate decision; grey band: waiting (window closed or paused)</span></div>\n");
}

pub fn render(r: &RunReport) -> String {
    let (done, failed, not_started) = r.counts();
    let skipped = r.skipped();
    let skipped_stat = if skipped.is_empty() {
        String::new()
    } else {
        format!("<span><b>{}</b> skipped</span>", skipped.len())
    };
    let badge = match r.outcome.as_str() {
        "succeeded" => "ok",
        o if o.starts_with("stopped") => "bad",
        _ => "warn",
    };
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rollgate run {id}</title><style>{CSS}</style></head><body>\n\
         <h1>rollgate run {id} <span class=\"badge {badge}\">{outcome}</span>{dry}</h1>\n\
         <p class=\"meta\">playbook <b>{pb}</b> ({file}) · started by {who} · {start} → {end}{resumed}{torn}</p>\n\
         <p class=\"stats\"><span><b>{done}</b> done</span><span><b>{failed}</b> failed</span>{skipped_stat}<span><b>{not_started}</b> not started</span>\
         <span>total <b>{total}</b></span><span>per node: average <b>{avg}</b>, min {min}, max {max}</span></p>\n<h2>Timeline</h2>\n",
        id = esc(&r.run_id),
        outcome = esc(&r.outcome),
        dry = if r.dry_run {
            " <span class=\"badge\">dry run</span>"
        } else {
            ""
        },
        pb = esc(&r.playbook),
        file = esc(&r.playbook_file),
        who = esc(r.started_by.as_deref().unwrap_or("unknown")),
        start = time(r.started_at),
        end = time(r.ended_at),
        resumed = if r.resumes > 0 {
            format!(
                " · resumed {} time(s){}",
                r.resumes,
                esc(&super::resumed_text(r))
            )
        } else {
            String::new()
        },
        torn = crate::journal::skipped_text(&r.skipped_lines)
            .map(|t| format!(" · journal: {t} (torn by a crash or a full disk)"))
            .unwrap_or_default(),
        total = short_duration(r.durations.total_ms),
        avg = dur(r.durations.average_ms),
        min = r
            .durations
            .min
            .as_ref()
            .map_or("-".into(), |(n, d)| format!(
                "{} ({})",
                short_duration(*d),
                esc(n)
            )),
        max = r
            .durations
            .max
            .as_ref()
            .map_or("-".into(), |(n, d)| format!(
                "{} ({})",
                short_duration(*d),
                esc(n)
            )),
    );
    timeline(r, &mut out);

    out.push_str("<h2>Nodes</h2>\n<table><tr><th>node</th><th>phase</th><th>state</th><th>started</th><th>duration</th><th>steps</th><th>failure</th></tr>\n");
    for n in &r.nodes {
        let steps: Vec<String> = n
            .steps
            .iter()
            .map(|s| match s.end {
                SpanEnd::Finished => {
                    format!("{} {}", s.step, short_duration(s.end_ms - s.start_ms))
                }
                SpanEnd::Failed => format!(
                    "{} failed after {}",
                    s.step,
                    short_duration(s.end_ms - s.start_ms)
                ),
                SpanEnd::Interrupted => format!("{} interrupted", s.step),
            })
            .collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"state-{}\">{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td></tr>",
            esc(&n.name),
            esc(&n.phase),
            super::state_name(n.state).replace(' ', "-"),
            super::state_name(n.state),
            n.steps
                .first()
                .map_or("-".into(), |s| format!("+{}", short_duration(s.start_ms))),
            dur(n.duration_ms),
            esc(&steps.join(", ")),
            super::RunReport::note(n).map_or(String::new(), |t| esc(&t)),
        );
    }
    out.push_str("</table>\n<h2>Plan vs actual order</h2>\n");
    if r.plan.iter().map(|(n, _)| n).eq(r.actual.iter()) {
        out.push_str("<p>Nodes started in the planned order.</p>\n");
    }
    out.push_str("<table><tr><th>#</th><th>planned</th><th>phase</th><th>actual</th></tr>\n");
    for i in 0..r.plan.len().max(r.actual.len()) {
        let (planned, phase) = r
            .plan
            .get(i)
            .map_or(("", ""), |(n, p)| (n.as_str(), p.as_str()));
        let actual = r.actual.get(i).map_or("", String::as_str);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            i + 1,
            esc(planned),
            esc(phase),
            esc(actual),
            if actual != planned && !actual.is_empty() {
                " ≠"
            } else {
                ""
            }
        );
    }
    out.push_str("</table>\n");
    if !r.operator.is_empty() {
        out.push_str("<h2>Operator requests</h2>\n<table><tr><th>at</th><th>what</th></tr>\n");
        for (ms, what) in &r.operator {
            let _ = writeln!(
                out,
                "<tr><td>+{}</td><td class=\"text\">{}</td></tr>",
                short_duration(*ms),
                esc(what)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.waits.is_empty() {
        out.push_str("<h2>Waits</h2>\n<table><tr><th>from</th><th>to</th><th>why</th></tr>\n");
        for w in &r.waits {
            let _ = writeln!(
                out,
                "<tr><td>+{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
                short_duration(w.from_ms),
                w.to_ms.map_or("end of journal".to_owned(), |t| format!(
                    "+{}",
                    short_duration(t)
                )),
                esc(&w.why)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.preflight.is_empty() {
        out.push_str(
            "<h2>Pre-flight</h2>\n<table><tr><th>at</th><th>checks</th><th>findings</th></tr>\n",
        );
        for p in &r.preflight {
            let _ = writeln!(
                out,
                "<tr><td>+{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
                short_duration(p.at_ms),
                esc(&p.verdicts.join(", ")),
                p.findings
                    .iter()
                    .map(|f| esc(f))
                    .collect::<Vec<_>>()
                    .join("<br>")
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Gate decisions</h2>\n");
    if r.gates.is_empty() {
        out.push_str("<p>None: no gate fired.</p>\n");
    } else {
        out.push_str("<table><tr><th>at</th><th>decision</th><th>gate</th><th>evidence</th><th>nodes in flight</th></tr>\n");
        for g in &r.gates {
            let in_flight: Vec<String> = g
                .in_flight
                .iter()
                .map(|(n, s)| format!("{n} ({s})"))
                .collect();
            let _ = writeln!(
                out,
                "<tr><td>+{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td><td>{}</td></tr>",
                short_duration(g.at_ms),
                esc(&g.decision),
                esc(&g.signal),
                esc(&g.evidence),
                esc(&in_flight.join(", "))
            );
        }
        out.push_str("</table>\n");
    }
    if !skipped.is_empty() {
        out.push_str("<h2>Skipped nodes</h2>\n<p>Uncordoned without their command (<code>on-pdb-timeout = \"skip\"</code>): not upgraded, not failures; a new run includes them again.</p>\n<table><tr><th>node</th><th>PodDisruptionBudget</th><th>pods</th><th>reason</th></tr>\n");
        for (node, skip) in &skipped {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
                esc(node),
                esc(&skip.pdbs.join(", ")),
                esc(&skip.pods.join(", ")),
                esc(&skip.reason)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>Failures</h2>\n");
    if r.failures.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<table><tr><th>at</th><th>node</th><th>step</th><th>reason</th></tr>\n");
        for f in &r.failures {
            let _ = writeln!(
                out,
                "<tr><td>+{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
                short_duration(f.at_ms),
                esc(&f.node),
                f.step,
                esc(&f.reason)
            );
        }
        out.push_str("</table>\n");
    }
    let _ = write!(
        out,
        "<p class=\"meta\">rollgate {} · from the run journal</p>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}
