//! The journal's own tests: writing, torn lines, status and resume points. The typed round
//! trip of every event is in [`round_trip`].

mod round_trip;

use super::*;
use crate::vocab::{RunEvent, Stamped, Step};
use std::fs::OpenOptions;
use std::io::Write;

#[test]
fn status_is_rebuilt_from_the_journal_even_after_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(
        dir.path(),
        &Header {
            run_id: "r1".into(),
            playbook: "p".into(),
            nodes: ["a", "b", "c"]
                .map(|n| (n.to_owned(), "w".to_owned()))
                .to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    let at = std::time::SystemTime::now();
    for event in [
        RunEvent::NodeStarted {
            node: "a".into(),
            phase: "w".into(),
        },
        RunEvent::StepStarted {
            node: "a".into(),
            step: Step::Cordon,
        },
        RunEvent::NodeDone {
            node: "a".into(),
            elapsed_ms: 5,
        },
        RunEvent::NodeStarted {
            node: "b".into(),
            phase: "w".into(),
        },
        RunEvent::StepStarted {
            node: "b".into(),
            step: Step::Command,
        },
        RunEvent::CommandOutput {
            node: "b".into(),
            stream: crate::vocab::Stream::Stdout,
            line: "not journaled".into(),
        },
    ] {
        j.record(&Stamped { at, event }).unwrap();
    }
    drop(j);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join(FILE))
        .unwrap();
    write!(f, r#"{{"event":"node-do"#).unwrap();
    let s = RunStatus::from_journal(&dir.path().join(FILE)).unwrap();
    assert_eq!(s.nodes["a"].state, NodeState::Done);
    assert_eq!(
        (s.nodes["b"].state, s.nodes["b"].step.as_deref()),
        (NodeState::InProgress, Some("command"))
    );
    assert_eq!(s.nodes["c"].state, NodeState::Pending);
    assert_eq!(s.state, "running");
    let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
    assert!(!text.contains("not journaled"));
}

#[test]
fn resume_points_follow_the_last_step_of_each_node() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(
        dir.path(),
        &Header {
            run_id: "r1".into(),
            playbook_file: "/p.toml".into(),
            nodes: vec![
                ("done".into(), "all".into()),
                ("draining".into(), "all".into()),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let at = std::time::SystemTime::now();
    let started = |n: &str, s| RunEvent::StepStarted {
        node: n.into(),
        step: s,
    };
    let finished = |n: &str, s| RunEvent::StepFinished {
        node: n.into(),
        step: s,
        elapsed_ms: 1,
        detail: None,
    };
    for event in [
        started("done", Step::Settle),
        RunEvent::NodeDone {
            node: "done".into(),
            elapsed_ms: 1,
        },
        started("draining", Step::Cordon),
        finished("draining", Step::Cordon),
        started("draining", Step::Drain),
        started("commanded", Step::Command),
        finished("commanded", Step::Command),
        started("in-command", Step::Command),
        started("settling", Step::Settle),
        started("command-failed", Step::Command),
        RunEvent::NodeFailed {
            node: "command-failed".into(),
            step: Step::Command,
            reason: "exit 3".into(),
        },
    ] {
        j.record(&Stamped { at, event }).unwrap();
    }
    let path = dir.path().join(FILE);
    // A command that may have started goes back to the command step (which reattaches);
    // the node's record decides, so resume checks it first (uncertain).
    let p = resume_points(&path, &[]).unwrap();
    assert_eq!(p.from["in-command"], Step::Command);
    assert_eq!(p.uncertain.iter().collect::<Vec<_>>(), ["in-command"]);
    // A command whose failure was recorded runs again: a new attempt, not an attach.
    assert_eq!(p.from["command-failed"], Step::Command);
    assert_eq!(p.retry.iter().collect::<Vec<_>>(), ["command-failed"]);
    let p = resume_points(&path, &["in-command".into()]).unwrap();
    assert!(p.uncertain.is_empty());
    assert_eq!(p.run_id, "r1");
    // The nodes the run planned at its start (its header): a resume keeps to them.
    assert_eq!(p.planned.iter().collect::<Vec<_>>(), ["done", "draining"]);
    assert!(p.done.contains("done") && !p.from.contains_key("done"));
    assert_eq!(p.from["draining"], Step::Cordon);
    assert_eq!(p.from["commanded"], Step::WaitReady);
    assert_eq!(p.from["in-command"], Step::WaitReady);
    assert_eq!(p.from["settling"], Step::Settle);
}

#[test]
fn node_annotations_ahead_of_a_lagging_journal_copy_move_resume_points_forward() {
    let record = |node: &str, by: &str, step: &str, last: &str| NodeRecord {
        node: node.into(),
        cordoned_by: (!by.is_empty()).then(|| by.into()),
        step: (!step.is_empty()).then(|| step.into()),
        failed_step: None,
        last_run: (!last.is_empty()).then(|| last.into()),
    };
    let points = || {
        let mut p = ResumePoints {
            run_id: "r1".into(),
            ..Default::default()
        };
        p.done.insert("done".into());
        p.from.insert("ahead".into(), Step::Drain);
        // The journal saw drain finish, not the command start the annotations record.
        p.from.insert("lagging".into(), Step::Command);
        p
    };
    let records = [
        record("done", "", "", "r1 2026-11-25T01:00:00Z"),
        record("ahead", "r1", "wait-ready", ""),
        record("uncordoned", "", "", "r1 2026-11-25T01:00:00Z"),
        record("other-run", "r0", "command", ""),
        record("old-run", "", "", "r0 2026-11-24T01:00:00Z"),
        record("in-command", "r1", "command", ""),
        record("lagging", "r1", "command", ""),
    ];
    let mut p = points();
    reconcile_with_nodes(&mut p, &records, &[]).unwrap();
    assert_eq!(
        p.uncertain.iter().collect::<Vec<_>>(),
        ["in-command", "lagging"]
    );
    assert_eq!(p.from["in-command"], Step::Command);
    let mut p = points();
    reconcile_with_nodes(&mut p, &records, &["in-command".into(), "lagging".into()]).unwrap();
    assert!(p.uncertain.is_empty());
    assert_eq!(p.from["lagging"], Step::WaitReady);
    assert!(p.done.contains("done") && !p.from.contains_key("done"));
    assert_eq!(p.from["ahead"], Step::WaitReady);
    assert_eq!(p.from["uncordoned"], Step::Settle);
    assert_eq!(p.from["in-command"], Step::WaitReady);
    assert!(!p.from.contains_key("other-run") && !p.from.contains_key("old-run"));
}

#[test]
fn a_dry_run_is_not_resumable_and_a_resumed_deadline_replaces_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let header = |dry_run| Header {
        run_id: "r1".into(),
        dry_run,
        deadline: Some("2026-11-25T02:00:00Z".into()),
        lock_name: Some("blue".into()),
        lock_duration_secs: Some(10),
        ..Default::default()
    };
    let dry = dir.path().join("dry");
    Journal::create(&dry, &header(true)).unwrap();
    let err = resume_points(&dry.join(FILE), &[]).unwrap_err();
    assert!(err.contains("dry run"), "{err}");
    let real = dir.path().join("real");
    let j = Journal::create(&real, &header(false)).unwrap();
    let p = resume_points(&real.join(FILE), &[]).unwrap();
    assert_eq!(p.deadline, Some("2026-11-25T02:00:00Z".parse().unwrap()));
    assert_eq!(p.lock_name.as_deref(), Some("blue"));
    assert_eq!(p.lock_duration, Some(std::time::Duration::from_secs(10)));
    j.record(&Stamped {
        at: std::time::SystemTime::now(),
        event: RunEvent::DeadlineSet {
            deadline: "2026-11-26T06:00:00Z".into(),
        },
    })
    .unwrap();
    let p = resume_points(&real.join(FILE), &[]).unwrap();
    assert_eq!(p.deadline, Some("2026-11-26T06:00:00Z".parse().unwrap()));
}

fn stamped(event: RunEvent) -> Stamped {
    Stamped {
        at: std::time::SystemTime::now(),
        event,
    }
}

fn started(node: &str, step: Step) -> RunEvent {
    RunEvent::StepStarted {
        node: node.into(),
        step,
    }
}

fn header(nodes: &[&str]) -> Header {
    Header {
        run_id: "r1".into(),
        playbook_file: "/p.toml".into(),
        nodes: nodes.iter().map(|n| (n.to_string(), "w".into())).collect(),
        ..Default::default()
    }
}

#[test]
fn a_record_that_cannot_be_written_is_refused_and_so_is_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
    j.record(&stamped(started("a", Step::Cordon))).unwrap();
    assert_eq!(j.failure(), None);
    // The disk fills up.
    j.write_to(OpenOptions::new().append(true).open("/dev/full").unwrap());
    let err = j.record(&stamped(started("a", Step::Drain))).unwrap_err();
    assert!(
        err.to_string().contains("No space left on device") && err.to_string().contains(FILE),
        "{err}"
    );
    assert_eq!(j.failure(), Some(err.clone()));
    assert!(j.watch_failure().borrow().is_some());
    // Space again: still refused (a record after a gap would lie), with the first reason.
    j.write_to(
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap(),
    );
    assert_eq!(
        j.record(&stamped(started("a", Step::Drain))),
        Err(err.clone())
    );
    // Events that are not journaled still pass.
    j.record(&stamped(RunEvent::Warning {
        node: None,
        message: "x".into(),
    }))
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.ends_with("\n"));
}

#[test]
fn a_torn_line_anywhere_is_skipped_by_every_reader_and_its_place_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let j = Journal::create(dir.path(), &header(&["a", "b"])).unwrap();
    for e in [
        RunEvent::NodeStarted {
            node: "a".into(),
            phase: "w".into(),
        },
        started("a", Step::Cordon),
    ] {
        j.record(&stamped(e)).unwrap();
    }
    drop(j);
    // The run dies in the middle of a record (and of a multi-byte character).
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(
        &"{\"at\":\"2026-11-25T01:00:00Z\",\"event\":\"step-finished\",\"reason\":\"—".as_bytes()
            [..60],
    )
    .unwrap();
    drop(f);
    let (j, torn) = Journal::open_append(dir.path()).unwrap();
    assert_eq!(torn, Some(4));
    for e in [
        RunEvent::RunStarted {
            run_id: "r1".into(),
            playbook: "p".into(),
            nodes: 2,
            dry_run: false,
            by: None,
        },
        RunEvent::StepFinished {
            node: "a".into(),
            step: Step::Cordon,
            elapsed_ms: 1,
            detail: None,
        },
        started("a", Step::Drain),
        RunEvent::NodeDone {
            node: "b".into(),
            elapsed_ms: 1,
        },
    ] {
        j.record(&stamped(e)).unwrap();
    }
    drop(j);
    // Reopening a journal that ends cleanly adds nothing.
    let (_, torn) = Journal::open_append(dir.path()).unwrap();
    assert_eq!(torn, None);
    let records = Records::read(&path).unwrap();
    assert_eq!(records.skipped, vec![4]);
    assert_eq!(records.records.len(), 6);
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(status.skipped_lines, vec![4]);
    assert_eq!(status.nodes["a"].step.as_deref(), Some("drain"));
    assert_eq!(status.nodes["b"].state, NodeState::Done);
    let points = resume_points(&path, &[]).unwrap();
    assert_eq!(points.skipped_lines, vec![4]);
    assert_eq!(points.from["a"], Step::Cordon);
    assert!(points.done.contains("b"));
    // The report reads the same fold: see report::run_report::tests.
    let history = RunHistory::read(&path).unwrap();
    assert_eq!(history.skipped, vec![4]);
    assert_eq!(
        history
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Done)
            .count(),
        1
    );
    assert_eq!(
        skipped_text(&[4]).unwrap(),
        "1 line that does not parse was skipped (line 4)"
    );
    assert_eq!(
        skipped_text(&[4, 9]).unwrap(),
        "2 lines that do not parse were skipped (lines 4, 9)"
    );
    assert_eq!(skipped_text(&[]), None);
}

#[test]
fn a_resume_refused_by_its_before_run_gate_leaves_the_run_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
    for event in [
        RunEvent::RunStarted {
            run_id: "r1".into(),
            playbook: "p".into(),
            nodes: 1,
            dry_run: false,
            by: None,
        },
        RunEvent::NodeStarted {
            node: "a".into(),
            phase: "w".into(),
        },
        started("a", Step::Cordon),
        RunEvent::StepFinished {
            node: "a".into(),
            step: Step::Cordon,
            elapsed_ms: 5,
            detail: None,
        },
        started("a", Step::Drain),
        // The runner died; a resume was refused by its before-run gate.
        RunEvent::RunRefused {
            reason: "refusing to start: gate pods failed before the run".into(),
        },
    ] {
        j.record(&stamped(event)).unwrap();
    }
    let path = dir.path().join(FILE);
    let points = resume_points(&path, &[]).expect("still resumable");
    assert_eq!(points.from.get("a"), Some(&Step::Cordon));
    let status = RunStatus::from_journal(&path).unwrap();
    assert!(!status.state.starts_with("refused"), "{}", status.state);
}

#[test]
fn a_run_refused_before_it_started_is_marked_and_not_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
    j.record(&stamped(RunEvent::RunRefused {
        reason: "refusing to start: gate pods failed before the run".into(),
    }))
    .unwrap();
    let path = dir.path().join(FILE);
    let status = RunStatus::from_journal(&path).unwrap();
    assert!(
        status.state.starts_with("refused: refusing to start"),
        "{}",
        status.state
    );
    let err = resume_points(&path, &[]).unwrap_err();
    assert!(err.contains("never started"), "{err}");
    let history = RunHistory::read(&path).unwrap();
    assert!(
        matches!(&history.last_end, Some(RunEnd::Refused(r)) if r.starts_with("refusing to start")),
        "{:?}",
        history.last_end
    );
}

#[test]
fn a_node_started_again_after_a_failed_command_is_retried_and_its_old_error_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
    let run_started = || RunEvent::RunStarted {
        run_id: "r1".into(),
        playbook: "p".into(),
        nodes: 1,
        dry_run: false,
        by: None,
    };
    let node_started = || RunEvent::NodeStarted {
        node: "a".into(),
        phase: "w".into(),
    };
    for e in [
        run_started(),
        node_started(),
        started("a", Step::Command),
        RunEvent::NodeFailed {
            node: "a".into(),
            step: Step::Command,
            reason: "exit 3".into(),
        },
    ] {
        j.record(&stamped(e)).unwrap();
    }
    let path = dir.path().join(FILE);
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(status.nodes["a"].state, NodeState::Failed);
    assert_eq!(status.nodes["a"].last_error.as_deref(), Some("exit 3"));
    // Resumed; the node starts again and the run dies before its command step is recorded.
    for e in [run_started(), node_started()] {
        j.record(&stamped(e)).unwrap();
    }
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(status.nodes["a"].state, NodeState::InProgress);
    assert_eq!(status.nodes["a"].last_error, None);
    let points = resume_points(&path, &[]).unwrap();
    assert_eq!(points.from["a"], Step::Command);
    assert_eq!(points.retry.iter().collect::<Vec<_>>(), ["a"]);
    assert!(points.uncertain.is_empty());
    // Once its command step is recorded as started again, the old failure no longer counts.
    j.record(&stamped(started("a", Step::Command))).unwrap();
    let points = resume_points(&path, &[]).unwrap();
    assert!(points.retry.is_empty());
    assert_eq!(points.uncertain.iter().collect::<Vec<_>>(), ["a"]);
}

#[test]
fn a_skipped_node_is_a_recorded_outcome_that_resume_leaves_alone() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a", "b", "c"])).unwrap();
    let skipped = RunEvent::NodeSkipped {
        node: "a".into(),
        reason: "drain timed out after 3s: PodDisruptionBudget shop/db allowed no eviction".into(),
        pdbs: vec!["shop/db".into()],
        pods: vec!["shop/db-0".into()],
    };
    for e in [
        RunEvent::RunStarted {
            run_id: "r1".into(),
            playbook: "p".into(),
            nodes: 3,
            dry_run: false,
            by: None,
        },
        RunEvent::NodeStarted {
            node: "a".into(),
            phase: "w".into(),
        },
        started("a", Step::Cordon),
        started("a", Step::Drain),
        skipped,
        // b: the run died after giving it back, before recording the skip.
        RunEvent::NodeStarted {
            node: "b".into(),
            phase: "w".into(),
        },
        started("b", Step::Drain),
    ] {
        j.record(&stamped(e)).unwrap();
    }
    let path = dir.path().join(FILE);
    let history = RunHistory::read(&path).unwrap();
    let a = &history.nodes[0];
    assert_eq!(a.state, NodeState::Skipped);
    assert_eq!(a.step, None);
    let skip = a.skip.as_ref().expect("why it was skipped");
    assert_eq!(
        (skip.pdbs.as_slice(), skip.pods.as_slice()),
        (&["shop/db".to_owned()][..], &["shop/db-0".to_owned()][..])
    );
    assert_eq!(
        a.steps.last().map(|s| (s.step, s.end)),
        Some((Step::Drain, SpanEnd::Failed))
    );
    assert!(
        a.failure.is_none() && history.failures.is_empty(),
        "not a failure"
    );
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(status.nodes["a"].state.name(), "skipped");
    assert!(
        status.nodes["a"]
            .skipped
            .as_deref()
            .unwrap()
            .contains("shop/db")
    );
    assert_eq!(status.nodes["a"].last_error, None);

    let mut points = resume_points(&path, &[]).unwrap();
    assert_eq!(points.skipped.iter().collect::<Vec<_>>(), ["a"]);
    assert!(!points.from.contains_key("a") && !points.done.contains("a"));
    // b's skip was not recorded: drained again from the start (its command never runs
    // before a drain that finished).
    assert_eq!(points.from["b"], Step::Cordon);
    // Annotations a failed hand back would leave do not bring a skipped node back.
    let record = NodeRecord {
        node: "a".into(),
        cordoned_by: Some("r1".into()),
        step: Some("drain".into()),
        ..Default::default()
    };
    reconcile_with_nodes(&mut points, &[record], &[]).unwrap();
    assert!(!points.from.contains_key("a"), "{points:?}");
}

#[test]
fn status_says_which_node_finish_by_end_holds_back_until_a_node_starts() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header(&["a", "b"])).unwrap();
    let path = dir.path().join(FILE);
    for event in [
        RunEvent::FinishByEnd(crate::vocab::FinishByEnd {
            node: "a".into(),
            needs_secs: 90,
            from_runs: 0,
            closes_at: "2026-11-25T05:00:00Z".into(),
            closes_in_secs: 45,
        }),
        RunEvent::WindowClosed {
            window: "daily 01:00-05:00 UTC".into(),
            reopens_at: Some("2026-11-26T01:00:00Z".into()),
        },
    ] {
        j.record(&stamped(event)).unwrap();
    }
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(
        status.state,
        "waiting for the maintenance window (reopens 2026-11-26T01:00:00Z)"
    );
    assert_eq!(
        status.finish_by_end.as_deref(),
        Some(
            "node a would need 1m 30s (p95 of the default step times: no earlier run), the window closes in 45s (at 2026-11-25T05:00:00Z)"
        )
    );
    j.record(&stamped(RunEvent::WindowOpened)).unwrap();
    j.record(&stamped(RunEvent::NodeStarted {
        node: "a".into(),
        phase: "w".into(),
    }))
    .unwrap();
    let status = RunStatus::from_journal(&path).unwrap();
    assert_eq!(status.finish_by_end, None);
}
