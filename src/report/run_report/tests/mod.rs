//! The report model from synthetic journals, and both renderings of it.

use super::*;
use crate::journal::{Header, Journal};
use crate::vocab::{Decision, GateDecision, Outcome, RunEvent, Stamped, Step, StopReason};
use std::time::{Duration, UNIX_EPOCH};

mod preflight;

/// A journal: the header line, then events `(seconds after 10:00:00, event)`, each line as the
/// journal writes it.
fn journal(header: &str, events: &[(f64, RunEvent)]) -> String {
    let mut text = format!("{header}\n");
    for (secs, event) in events {
        let at = UNIX_EPOCH + Duration::from_millis(1_780_000_000_000 + (secs * 1000.0) as u64);
        let record = Stamped {
            at,
            event: event.clone(),
        };
        text.push_str(&format!("{}\n", serde_json::to_string(&record).unwrap()));
    }
    text
}

fn header() -> String {
    serde_json::to_string(&Header {
        journal: 1,
        run_id: "r1".into(),
        playbook: "upgrade".into(),
        playbook_file: "/pb.toml".into(),
        dry_run: false,
        started_by: Some("ops@bastion".into()),
        nodes: [("a", "cp"), ("b", "workers"), ("c", "workers")]
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
            .to_vec(),
        ..Default::default()
    })
    .unwrap()
}

fn step(started: bool, node: &str, step: Step) -> RunEvent {
    if started {
        RunEvent::StepStarted {
            node: node.into(),
            step,
        }
    } else {
        RunEvent::StepFinished {
            node: node.into(),
            step,
            elapsed_ms: 1000,
            detail: None,
        }
    }
}

fn run_started(by: Option<&str>) -> RunEvent {
    RunEvent::RunStarted {
        run_id: "r1".into(),
        playbook: "upgrade".into(),
        nodes: 3,
        dry_run: false,
        by: by.map(str::to_owned),
    }
}

fn node_started(node: &str, phase: &str) -> RunEvent {
    RunEvent::NodeStarted {
        node: node.into(),
        phase: phase.into(),
    }
}

fn node_done(node: &str) -> RunEvent {
    RunEvent::NodeDone {
        node: node.into(),
        elapsed_ms: 6000,
    }
}

fn run_finished(outcome: Outcome) -> RunEvent {
    RunEvent::RunFinished {
        outcome,
        done: 2,
        failed: 1,
        skipped: 0,
        not_started: 0,
        elapsed_ms: 23000,
    }
}

fn gate(
    decision: Decision,
    signal: &str,
    evidence: &str,
    in_flight: &[(&str, Step)],
) -> GateDecision {
    GateDecision {
        decision,
        signal: signal.into(),
        evidence: evidence.into(),
        in_flight: in_flight.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
    }
}

fn node_steps(node: &str, from: f64) -> Vec<(f64, RunEvent)> {
    let mut v = vec![(from, node_started(node, "x"))];
    let mut t = from;
    for s in Step::ALL {
        v.push((t, step(true, node, s)));
        t += 1.0;
        v.push((t, step(false, node, s)));
    }
    v.push((t, node_done(node)));
    v
}

fn finished_run() -> RunReport {
    let mut events = vec![(0.0, run_started(None))];
    // b starts before a: the actual order differs from the plan.
    events.extend(node_steps("b", 1.0));
    events.extend(node_steps("a", 8.0));
    events.extend([
        (20.0, node_started("c", "workers")),
        (20.0, step(true, "c", Step::Cordon)),
        (20.5, step(false, "c", Step::Cordon)),
        (20.5, step(true, "c", Step::Drain)),
        (
            22.0,
            RunEvent::GateDecision {
                decision: gate(
                    Decision::Abort,
                    "pods",
                    "pod web-1 <crash-looping>",
                    &[("c", Step::Drain)],
                ),
            },
        ),
        (
            23.0,
            RunEvent::NodeFailed {
                node: "c".into(),
                step: Step::Drain,
                reason: "aborted by gate | pods".into(),
            },
        ),
        (23.0, run_finished(Outcome::Stopped(StopReason::GateAbort))),
    ]);
    RunReport::from_journal(&journal(&header(), &events)).unwrap()
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
    let old = r#"{"run_id": "r0", "playbook": "p", "nodes": [["a", "w"], ["b", "w"]]}"#;
    let mut text = journal(
        old,
        &[
            (0.0, run_started(None)),
            (1.0, node_started("a", "w")),
            (1.0, step(true, "a", Step::Command)),
        ],
    );
    text.push_str(r#"{"event":"step-fini"#);
    let r = RunReport::from_journal(&text).unwrap();
    assert_eq!(r.skipped_lines, vec![5]);
    assert_eq!(r.started_by, None);
    assert!(r.outcome.starts_with("no end recorded"), "{}", r.outcome);
    assert_eq!(r.nodes[0].state, NodeState::InProgress);
    assert_eq!(r.nodes[0].steps[0].end, SpanEnd::Interrupted);
    assert_eq!(r.nodes[1].state, NodeState::Pending);
    assert_eq!(r.counts(), (0, 0, 1));
    assert!(RunReport::from_journal("").is_none());
    assert!(RunReport::from_journal("{torn").is_none());
}

#[test]
fn a_resumed_run_cuts_the_interrupted_step_at_the_crash_and_starts_it_again() {
    let mut events = vec![
        (0.0, run_started(None)),
        (1.0, node_started("a", "cp")),
        (1.0, step(true, "a", Step::Command)),
        (
            4.0,
            RunEvent::GateDecision {
                decision: gate(Decision::Warn, "pings", "x", &[]),
            },
        ),
        // Crash here; resumed at 100 s.
        (100.0, run_started(Some("night@bastion-2"))),
        (100.0, node_started("a", "cp")),
        (100.0, step(true, "a", Step::Command)),
        (101.0, step(false, "a", Step::Command)),
        (101.0, node_done("a")),
    ];
    events.extend(node_steps("b", 102.0));
    events.push((108.0, run_finished(Outcome::Succeeded)));
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
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
    assert_eq!(r.nodes[2].state, NodeState::Pending);
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
        journal(&header(), &node_steps("a", 0.0)),
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
    let mut events = vec![(0.0, run_started(None))];
    events.extend(node_steps("a", 0.0));
    events.push((
        7.0,
        RunEvent::WindowClosed {
            window: "mon-fri 01:00-05:00 UTC".into(),
            reopens_at: Some("2026-11-26T01:00:00Z".into()),
        },
    ));
    events.push((60.0, RunEvent::WindowOpened));
    events.extend(node_steps("b", 61.0));
    events.push((
        68.0,
        RunEvent::Paused {
            decision: gate(Decision::Pause, "queue", "no consumers", &[]),
            resume_hint: String::new(),
        },
    ));
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
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

fn held(node: &str) -> RunEvent {
    RunEvent::FinishByEnd(crate::vocab::FinishByEnd {
        node: node.into(),
        needs_secs: 720,
        from_runs: 2,
        closes_at: "2026-11-25T05:00:00Z".into(),
        closes_in_secs: 480,
    })
}

#[test]
fn a_finish_by_end_hold_says_which_node_needs_how_long_and_how_long_was_left() {
    // outside = "wait": the hold, then the wait it causes, until the next window.
    let mut events = vec![(0.0, run_started(None))];
    events.extend(node_steps("a", 0.0));
    events.push((7.0, held("b")));
    events.push((
        7.0,
        RunEvent::WindowClosed {
            window: "mon-fri 01:00-05:00 UTC".into(),
            reopens_at: Some("2026-11-26T01:00:00Z".into()),
        },
    ));
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    let why = &r.waits[0].why;
    assert_eq!(
        why,
        "finish-by-end: node b would need 12m (p95 from 2 earlier run(s)), the window closes in 8m (at 2026-11-25T05:00:00Z); the next window opens 2026-11-26T01:00:00Z"
    );
    // A later plain close is not blamed on it: a node started in between.
    events.push((60.0, RunEvent::WindowOpened));
    events.extend(node_steps("b", 61.0));
    events.push((
        70.0,
        RunEvent::WindowClosed {
            window: "mon-fri 01:00-05:00 UTC".into(),
            reopens_at: None,
        },
    ));
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    assert!(
        r.waits[1].why.starts_with("outside the maintenance window"),
        "{:?}",
        r.waits
    );
    // outside = "exit": the hold, then the stop; the outcome says why.
    let mut events = vec![(0.0, run_started(None))];
    events.extend(node_steps("a", 0.0));
    events.push((7.0, held("b")));
    events.push((
        7.0,
        RunEvent::Stopping {
            reason: StopReason::OutsideWindow,
        },
    ));
    events.push((
        8.0,
        RunEvent::RunFinished {
            outcome: Outcome::Stopped(StopReason::OutsideWindow),
            done: 1,
            failed: 0,
            skipped: 0,
            not_started: 1,
            elapsed_ms: 8000,
        },
    ));
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    assert!(
        r.outcome
            .starts_with("stopped: outside-window (finish-by-end: node b would need 12m"),
        "{}",
        r.outcome
    );
    assert!(markdown::render(&r).contains("finish-by-end: node b"));
}

/// Moved from the journal's tests (the journal does not depend on the report): a journal with a
/// torn line in its middle, written and reopened by [`Journal`], reports as status and resume do.
#[test]
fn a_torn_line_in_the_middle_of_a_journal_is_skipped_and_its_place_reported() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::journal::FILE);
    let record = |j: &Journal, event| {
        j.record(&Stamped {
            at: std::time::SystemTime::now(),
            event,
        })
        .unwrap()
    };
    let j = Journal::create(dir.path(), &serde_json::from_str(&header()).unwrap()).unwrap();
    record(&j, node_started("a", "cp"));
    record(&j, step(true, "a", Step::Cordon));
    drop(j);
    // The run dies in the middle of a record (and of a multi-byte character).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(
        &"{\"at\":\"2026-11-25T01:00:00Z\",\"event\":\"step-finished\",\"reason\":\"—".as_bytes()
            [..60],
    )
    .unwrap();
    drop(f);
    let (j, torn) = Journal::open_append(dir.path()).unwrap();
    assert_eq!(torn, Some(4));
    record(&j, run_started(None));
    record(&j, step(false, "a", Step::Cordon));
    record(&j, step(true, "a", Step::Drain));
    record(&j, node_done("b"));
    drop(j);
    let report = RunReport::load(&path).unwrap();
    assert_eq!(report.skipped_lines, vec![4]);
    assert_eq!(report.counts().0, 1);
    assert_eq!(report.nodes[0].steps.last().unwrap().step, Step::Drain);
    assert!(markdown::render(&report).contains("(line 4)"));
}

/// Moved from the journal's tests: a run refused before it started says so.
#[test]
fn a_run_refused_before_it_started_is_reported_as_refused() {
    let events = [(
        0.0,
        RunEvent::RunRefused {
            reason: "refusing to start: gate pods failed before the run".into(),
        },
    )];
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    assert!(r.outcome.starts_with("refused"), "{}", r.outcome);
    assert_eq!(r.counts(), (0, 0, 3));
}

#[test]
fn a_skipped_node_is_listed_apart_from_failures_with_its_budget_and_pods() {
    let events = [
        (0.0, run_started(None)),
        (1.0, node_started("a", "cp")),
        (1.0, step(true, "a", Step::Cordon)),
        (1.5, step(false, "a", Step::Cordon)),
        (1.5, step(true, "a", Step::Drain)),
        (
            4.5,
            RunEvent::NodeSkipped {
                node: "a".into(),
                reason: "drain timed out after 3s: PodDisruptionBudget shop/db allowed no eviction"
                    .into(),
                pdbs: vec!["shop/db".into()],
                pods: vec!["shop/db-0".into()],
            },
        ),
        (5.0, node_started("b", "workers")),
        (11.0, node_done("b")),
        (12.0, run_finished(Outcome::Succeeded)),
    ];
    let r = RunReport::from_journal(&journal(&header(), &events)).unwrap();
    assert_eq!(r.outcome, "succeeded");
    assert!(r.failures.is_empty());
    let skipped = r.skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, "a");
    assert_eq!(state_name(r.nodes[0].state), "skipped");
    let md = markdown::render(&r);
    assert!(
        md.contains("- Nodes: 1 done, 0 failed, 1 skipped, 1 not started"),
        "{md}"
    );
    assert!(
        md.contains("## Skipped nodes")
            && md.contains("- a: held by PodDisruptionBudget shop/db (pods shop/db-0)"),
        "{md}"
    );
    assert!(md.contains("| a | cp | skipped |"), "{md}");
    assert!(!md.contains("## Failures"), "{md}");
    let html = html::render(&r);
    assert!(
        html.contains("<h2>Skipped nodes</h2>")
            && html.contains("<td>shop/db</td><td>shop/db-0</td>")
            && html.contains("<b>1</b> skipped"),
        "{html}"
    );
}
