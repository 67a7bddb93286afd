//! The report model from synthetic journals, and both renderings of it.

use super::*;
use serde_json::{Value, json};

/// A journal: the header, then events `(seconds after 10:00:00, event)`.
fn journal(header: Value, events: &[(f64, Value)]) -> String {
    let mut text = format!("{header}\n");
    for (secs, e) in events {
        let at =
            jiff::Timestamp::from_millisecond(1_780_000_000_000 + (secs * 1000.0) as i64).unwrap();
        let mut e = e.clone();
        e["at"] = json!(at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        text.push_str(&format!("{e}\n"));
    }
    text
}

fn header() -> Value {
    json!({"journal": 1, "run_id": "r1", "playbook": "upgrade", "playbook_file": "/pb.toml",
           "dry_run": false, "started_by": "ops@bastion",
           "nodes": [["a", "cp"], ["b", "workers"], ["c", "workers"]]})
}

fn step(ev: &str, node: &str, step: &str) -> Value {
    json!({"event": ev, "node": node, "step": step})
}

fn node_steps(node: &str, from: f64) -> Vec<(f64, Value)> {
    let mut v = vec![(
        from,
        json!({"event": "node-started", "node": node, "phase": "x"}),
    )];
    let mut t = from;
    for s in [
        "cordon",
        "drain",
        "command",
        "wait-ready",
        "uncordon",
        "settle",
    ] {
        v.push((t, step("step-started", node, s)));
        t += 1.0;
        v.push((t, step("step-finished", node, s)));
    }
    v.push((
        t,
        json!({"event": "node-done", "node": node, "elapsed_ms": 6000}),
    ));
    v
}

fn finished_run() -> RunReport {
    let mut events = vec![(
        0.0,
        json!({"event": "run-started", "run_id": "r1", "playbook": "upgrade", "nodes": 3, "dry_run": false}),
    )];
    // b starts before a: the actual order differs from the plan.
    events.extend(node_steps("b", 1.0));
    events.extend(node_steps("a", 8.0));
    events.extend([
        (20.0, json!({"event": "node-started", "node": "c", "phase": "workers"})),
        (20.0, step("step-started", "c", "cordon")),
        (20.5, step("step-finished", "c", "cordon")),
        (20.5, step("step-started", "c", "drain")),
        (
            22.0,
            json!({"event": "gate-decision", "decision": {"decision": "abort", "signal": "pods",
                   "evidence": "pod web-1 <crash-looping>", "in_flight": [["c", "drain"]]}}),
        ),
        (
            23.0,
            json!({"event": "node-failed", "node": "c", "step": "drain", "reason": "aborted by gate | pods"}),
        ),
        (
            23.0,
            json!({"event": "run-finished", "outcome": {"stopped": "gate-abort"}, "done": 2, "failed": 1, "not_started": 0, "elapsed_ms": 23000}),
        ),
    ]);
    RunReport::from_journal(&journal(header(), &events)).unwrap()
}

#[test]
fn a_finished_run_gives_order_steps_states_gates_failures_and_durations() {
    let r = finished_run();
    assert_eq!(
        (
            r.run_id.as_str(),
            r.playbook.as_str(),
            r.started_by.as_deref()
        ),
        ("r1", "upgrade", Some("ops@bastion"))
    );
    assert_eq!(r.outcome, "stopped: gate-abort");
    assert_eq!(r.plan[0], ("a".into(), "cp".into()));
    assert_eq!(r.actual, ["b", "a", "c"]);
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "nodes in plan order");
    let b = &r.nodes[1];
    assert_eq!(b.state, NodeState::Done);
    assert_eq!(b.steps.len(), 6);
    assert_eq!(
        (b.steps[1].step, b.steps[1].start_ms, b.steps[1].end_ms),
        (Step::Drain, 2000, 3000)
    );
    assert_eq!(b.duration_ms, Some(6000));
    let c = &r.nodes[2];
    assert_eq!(c.state, NodeState::Failed);
    assert_eq!(
        c.failure,
        Some((Step::Drain, "aborted by gate | pods".into()))
    );
    assert_eq!(
        (c.steps[1].end, c.steps[1].end_ms),
        (SpanEnd::Failed, 23000)
    );
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.gates.len(), 1);
    assert_eq!(
        (r.gates[0].at_ms, r.gates[0].in_flight[0].0.as_str()),
        (22000, "c")
    );
    assert_eq!(r.counts(), (2, 1, 0));
    assert_eq!(r.durations.total_ms, 23000);
    assert_eq!(r.durations.average_ms, Some(6000));
    assert_eq!(r.durations.max.as_ref().unwrap().1, 6000);
    assert!(r.skipped_lines.is_empty());
}

#[test]
fn a_torn_last_line_and_an_old_header_still_give_a_report() {
    let old = json!({"run_id": "r0", "playbook": "p", "nodes": [["a", "w"], ["b", "w"]]});
    let mut text = journal(
        old,
        &[
            (0.0, json!({"event": "run-started"})),
            (1.0, json!({"event": "node-started", "node": "a"})),
            (1.0, step("step-started", "a", "command")),
        ],
    );
    text.push_str(r#"{"event":"step-fini"#);
    let r = RunReport::from_journal(&text).unwrap();
    assert_eq!(r.skipped_lines, vec![5]);
    assert_eq!(r.started_by, None);
    assert!(r.outcome.starts_with("no end recorded"), "{}", r.outcome);
    assert_eq!(r.nodes[0].state, NodeState::Interrupted);
    assert_eq!(r.nodes[0].steps[0].end, SpanEnd::Interrupted);
    assert_eq!(r.nodes[1].state, NodeState::NotStarted);
    assert_eq!(r.counts(), (0, 0, 1));
    assert!(RunReport::from_journal("").is_none());
    assert!(RunReport::from_journal("{torn").is_none());
}

#[test]
fn a_resumed_run_cuts_the_interrupted_step_at_the_crash_and_starts_it_again() {
    let mut events = vec![
        (0.0, json!({"event": "run-started"})),
        (1.0, json!({"event": "node-started", "node": "a"})),
        (1.0, step("step-started", "a", "command")),
        (
            4.0,
            json!({"event": "gate-decision", "decision": {"decision": "warn", "signal": "pings", "evidence": "x", "in_flight": []}}),
        ),
        // Crash here; resumed at 100 s.
        (
            100.0,
            json!({"event": "run-started", "by": "night@bastion-2"}),
        ),
        (100.0, json!({"event": "node-started", "node": "a"})),
        (100.0, step("step-started", "a", "command")),
        (101.0, step("step-finished", "a", "command")),
        (101.0, json!({"event": "node-done", "node": "a"})),
    ];
    events.extend(node_steps("b", 102.0));
    events.push((
        108.0,
        json!({"event": "run-finished", "outcome": "succeeded"}),
    ));
    let r = RunReport::from_journal(&journal(header(), &events)).unwrap();
    assert_eq!(r.resumes, 1);
    assert_eq!(
        r.resumed_by,
        vec![(100_000, Some("night@bastion-2".into()))]
    );
    assert!(markdown::render(&r).contains("resumed 1 time(s) (by night@bastion-2 at +1m 40s)"));
    assert_eq!(r.outcome, "succeeded");
    let a = &r.nodes[0];
    assert_eq!(a.state, NodeState::Done);
    let spans: Vec<(Step, u64, u64, SpanEnd)> = a
        .steps
        .iter()
        .map(|s| (s.step, s.start_ms, s.end_ms, s.end))
        .collect();
    assert_eq!(
        spans,
        [
            (Step::Command, 1000, 4000, SpanEnd::Interrupted),
            (Step::Command, 100_000, 101_000, SpanEnd::Finished)
        ]
    );
    assert_eq!(a.duration_ms, Some(100_000), "wall clock, crash included");
    assert_eq!(
        r.actual,
        ["a", "b"],
        "a restarted node keeps its first place"
    );
    assert_eq!(r.nodes[2].state, NodeState::NotStarted);
    assert_eq!(r.durations.min.as_ref().unwrap(), &("b".to_owned(), 6000));
    let html = html::render(&r);
    assert!(html.contains("command interrupted, command 1.0s"), "{html}");
    assert!(html.contains("resumed 1 time(s)"));
}

#[test]
fn html_has_one_timeline_row_per_node_escapes_the_journal_and_loads_nothing() {
    let mut r = finished_run();
    r.nodes[0].name = "a\"><script>alert(1)</script>".into();
    let html = html::render(&r);
    assert_eq!(html.matches("class=\"timeline-row\"").count(), 3);
    assert!(html.contains("data-node=\"b\""));
    assert!(!html.contains("<script"), "journal text is escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains("pod web-1 &lt;crash-looping&gt;"));
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "no external resource: {external}");
    }
    let drain = html::step_color(Step::Drain);
    assert!(html.contains(&format!(
        "fill=\"#{:02x}{:02x}{:02x}\"",
        drain.0, drain.1, drain.2
    )));
    assert!(html.contains("stopped: gate-abort") && html.contains("ops@bastion"));
    // The bars of b are in time order and inside the plot.
    assert_eq!(html.matches("class=\"bar step-").count(), 6 + 6 + 2);
}

#[test]
fn markdown_has_a_row_per_node_and_cannot_be_broken_by_the_journal() {
    let r = finished_run();
    let md = markdown::render(&r);
    assert!(
        md.starts_with("# rollgate run r1: stopped: gate-abort\n"),
        "{md}"
    );
    assert!(md.contains("| a | cp | done | 6.0s |  |"), "{md}");
    assert!(
        md.contains("| c | workers | failed | 3.0s | at drain: aborted by gate \\| pods |"),
        "{md}"
    );
    assert!(md.contains("- Planned: a, b, c\n- Actual: b, a, c"), "{md}");
    assert!(
        md.contains("**abort** by pods: pod web-1 &lt;crash-looping&gt;"),
        "{md}"
    );
    assert!(md.contains("- Started by: ops@bastion"));
}

#[test]
fn write_puts_the_requested_files_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join(crate::journal::FILE),
        journal(header(), &node_steps("a", 0.0)),
    )
    .unwrap();
    let out = dir.path().join("out");
    let report = RunReport::load(&run.join(crate::journal::FILE)).unwrap();
    let written = write(&report, &out, Formats::Both).unwrap();
    assert_eq!(written, [out.join(HTML_FILE), out.join(MARKDOWN_FILE)]);
    assert_eq!(
        write(&report, &out, Formats::Markdown).unwrap(),
        [out.join(MARKDOWN_FILE)]
    );
    assert_eq!(
        write_for_run(&run).unwrap(),
        [run.join(HTML_FILE), run.join(MARKDOWN_FILE)]
    );
    assert!(
        std::fs::read_to_string(run.join(HTML_FILE))
            .unwrap()
            .contains("data-node=\"a\"")
    );
    let err = write_for_run(&dir.path().join("nope")).unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn window_waits_and_pauses_are_shown_with_their_reason_and_length() {
    let mut events = vec![(
        0.0,
        json!({"event": "run-started", "run_id": "r1", "playbook": "upgrade", "nodes": 3, "dry_run": false}),
    )];
    events.extend(node_steps("a", 0.0));
    events.push((
        7.0,
        json!({"event": "window-closed", "window": "mon-fri 01:00-05:00 UTC", "reopens_at": "2026-11-26T01:00:00Z"}),
    ));
    events.push((60.0, json!({"event": "window-opened"})));
    events.extend(node_steps("b", 61.0));
    events.push((
        68.0,
        json!({"event": "paused", "decision": {"signal": "queue", "decision": "pause", "evidence": "no consumers"}, "resume_hint": ""}),
    ));
    let r = RunReport::from_journal(&journal(header(), &events)).unwrap();
    assert_eq!(r.waits.len(), 2);
    assert_eq!((r.waits[0].from_ms, r.waits[0].to_ms), (7000, Some(60000)));
    assert!(r.waits[0].why.contains("reopens 2026-11-26T01:00:00Z"));
    assert_eq!(r.waits[1].to_ms, None, "still paused at the journal's end");
    assert!(
        r.waits[1]
            .why
            .contains("paused by gate queue: no consumers")
    );
    let html = html::render(&r);
    assert_eq!(html.matches("<rect class=\"wait\"").count(), 2);
    assert!(html.contains("<h2>Waits</h2>"));
    let md = markdown::render(&r);
    assert!(
        md.contains("## Waits") && md.contains("+7.0s to +1m"),
        "{md}"
    );
}
