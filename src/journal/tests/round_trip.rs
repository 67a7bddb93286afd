//! The typed round trip: every event the vocabulary has, written through [`Journal::record`]
//! and read back by [`Records`]; and a journal written before the typed reader existed.

use super::super::*;
use crate::vocab::{
    Decision, GateDecision, Outcome, ProbeOutcome, ProblemKind, RetryCause, RunEvent, Stamped,
    Step, StopReason, Stream,
};
use std::time::{Duration, UNIX_EPOCH};

/// Which kind of event `e` is. No wildcard: a new event kind does not compile until it is
/// numbered here, and then [`one_of_each`] must hold one of it (checked by the tests).
fn kind(e: &RunEvent) -> usize {
    use RunEvent::*;
    match e {
        RunStarted { .. } => 0,
        WaveStarted { .. } => 1,
        NodeStarted { .. } => 2,
        StepStarted { .. } => 3,
        StepFinished { .. } => 4,
        PodEvicted { .. } => 5,
        PodSkipped { .. } => 6,
        EvictionBlocked { .. } => 7,
        EvictionRetried { .. } => 8,
        PodDeleted { .. } => 9,
        CommandOutput { .. } => 10,
        DryRunAction { .. } => 11,
        Warning { .. } => 12,
        NodeDone { .. } => 13,
        NodeFailed { .. } => 14,
        NodeAbandoned { .. } => 15,
        Stopping { .. } => 16,
        Baseline { .. } => 17,
        ProbeResult { .. } => 18,
        GateDecision { .. } => 19,
        Paused { .. } => 20,
        Resumed { .. } => 21,
        WindowClosed { .. } => 22,
        WindowOpened => 23,
        DeadlineSet { .. } => 24,
        Problem { .. } => 25,
        RunRefused { .. } => 26,
        WatchLost { .. } => 27,
        WatchRestored { .. } => 28,
        RunFinished { .. } => 29,
        ReportWritten { .. } => 30,
        NodeSkipped { .. } => 31,
        FinishByEnd(_) => 32,
        Preflight { .. } => 33,
        ControlRefused { .. } => 34,
    }
}
const KINDS: usize = 35;

fn decision() -> GateDecision {
    GateDecision {
        decision: Decision::Pause,
        signal: "pods".into(),
        evidence: "pod web-1 <crash-looping> \"quoted\" — ünïcode".into(),
        in_flight: vec![("w-1".into(), Step::Drain), ("w-2".into(), Step::Command)],
    }
}

/// At least one event of every kind, with optional fields both set and unset.
fn one_of_each() -> Vec<RunEvent> {
    use RunEvent::*;
    let n = |s: &str| s.to_owned();
    vec![
        RunStarted {
            run_id: n("r1"),
            playbook: n("upgrade"),
            nodes: 2,
            dry_run: false,
            by: Some(n("ops@bastion")),
        },
        RunStarted {
            run_id: n("r1"),
            playbook: n("upgrade"),
            nodes: 2,
            dry_run: true,
            by: None,
        },
        WaveStarted {
            phase: n("workers"),
            wave: Some(n("1")),
            nodes: vec![n("w-1"), n("w-2")],
        },
        WaveStarted {
            phase: n("cp"),
            wave: None,
            nodes: vec![],
        },
        NodeStarted {
            node: n("w-1"),
            phase: n("workers"),
        },
        StepStarted {
            node: n("w-1"),
            step: Step::WaitReady,
        },
        StepFinished {
            node: n("w-1"),
            step: Step::Drain,
            elapsed_ms: 3400,
            detail: Some(n("3 evicted, 1 skipped")),
        },
        StepFinished {
            node: n("w-1"),
            step: Step::Cordon,
            elapsed_ms: 1,
            detail: None,
        },
        PodEvicted {
            node: n("w-1"),
            pod: n("default/web-1"),
        },
        PodSkipped {
            node: n("w-1"),
            pod: n("kube-system/ds-1"),
            reason: n("DaemonSet"),
        },
        EvictionBlocked {
            node: n("w-1"),
            pod: n("default/web-2"),
            pdb: n("default/web"),
            message: n("Cannot evict pod"),
        },
        EvictionRetried {
            node: n("w-1"),
            pod: n("default/web-2"),
            cause: RetryCause::BudgetConflict,
            pdb: Some(n("default/web")),
            message: n("409"),
        },
        EvictionRetried {
            node: n("w-1"),
            pod: n("default/web-3"),
            cause: RetryCause::Throttled,
            pdb: None,
            message: n("429"),
        },
        PodDeleted {
            node: n("w-1"),
            pod: n("default/web-1"),
        },
        CommandOutput {
            node: n("w-1"),
            stream: Stream::Stderr,
            line: n("upgrading…"),
        },
        DryRunAction {
            node: n("w-1"),
            action: n("cordon"),
        },
        ReportWritten {
            paths: vec!["/var/lib/rollgate/runs/r/report.html".into()],
        },
        Warning {
            node: Some(n("w-1")),
            message: n("slow"),
        },
        Warning {
            node: None,
            message: n("no metrics"),
        },
        NodeDone {
            node: n("w-1"),
            elapsed_ms: 61_000,
        },
        NodeFailed {
            node: n("w-2"),
            step: Step::Command,
            reason: n("exit 3"),
        },
        NodeSkipped {
            node: n("w-4"),
            reason: n("drain timed out after 3s: PodDisruptionBudget shop/db allowed no eviction"),
            pdbs: vec![n("shop/db"), n("shop/web")],
            pods: vec![n("shop/db-0")],
        },
        NodeAbandoned {
            node: n("w-2"),
            step: Some(Step::Settle),
        },
        NodeAbandoned {
            node: n("w-3"),
            step: None,
        },
        Stopping {
            reason: StopReason::JournalUnwritable,
        },
        Baseline {
            problems: vec![n("pod x crash-looping")],
        },
        ProbeResult {
            probe: n("http"),
            when: n("after-drain"),
            node: Some(n("w-1")),
            outcome: ProbeOutcome::Fail(n("503")),
            elapsed_ms: 20,
        },
        ProbeResult {
            probe: n("prom"),
            when: n("periodic"),
            node: None,
            outcome: ProbeOutcome::Pass,
            elapsed_ms: 5,
        },
        GateDecision {
            decision: decision(),
        },
        Paused {
            decision: decision(),
            resume_hint: n("rollgate resume r1"),
        },
        Resumed {
            by: Some("ops@bastion".into()),
        },
        WindowClosed {
            window: n("mon-fri 01:00-05:00 UTC"),
            reopens_at: Some(n("2026-11-26T01:00:00Z")),
        },
        WindowClosed {
            window: n("never"),
            reopens_at: None,
        },
        WindowOpened,
        FinishByEnd(crate::vocab::FinishByEnd {
            node: n("w-2"),
            needs_secs: 720,
            from_runs: 3,
            closes_at: n("2026-11-26T05:00:00Z"),
            closes_in_secs: 480,
        }),
        DeadlineSet {
            deadline: n("2026-11-26T06:00:00Z"),
        },
        Problem {
            problem: crate::vocab::Problem {
                object: n("default/web-1"),
                node: Some(n("w-1")),
                kind: ProblemKind::CrashLoop,
                detail: n("restarts 5"),
            },
        },
        Preflight {
            summary: crate::vocab::PreflightSummary {
                checks: vec![
                    crate::vocab::CheckVerdict {
                        check: n("drain-blockers"),
                        verdict: crate::vocab::Verdict::Blocked,
                        note: None,
                    },
                    crate::vocab::CheckVerdict {
                        check: n("ssh"),
                        verdict: crate::vocab::Verdict::Skipped,
                        note: Some(n("--no-ssh-check")),
                    },
                ],
                findings: vec![crate::vocab::PreflightFinding {
                    check: n("drain-blockers"),
                    blocker: true,
                    node: Some(n("w-1")),
                    object: Some(n("PodDisruptionBudget default/web")),
                    message: n("maxUnavailable is 0: no eviction is ever allowed"),
                    fix: n("raise maxUnavailable"),
                }],
            },
        },
        RunRefused {
            reason: n("refusing to start: gate pods failed before the run"),
        },
        ControlRefused {
            action: crate::vocab::ControlAction::Abort,
            by: n("mallory (Slack U0MALLORY)"),
            reason: n("not among [slack] operators"),
        },
        WatchLost {
            watch: n("pods"),
            error: n("connection refused"),
        },
        WatchRestored {
            watch: n("pods"),
            lost_ms: 1500,
        },
        RunFinished {
            outcome: Outcome::Stopped(StopReason::GateAbort),
            done: 1,
            failed: 1,
            skipped: 0,
            not_started: 0,
            elapsed_ms: 70_000,
        },
        RunFinished {
            outcome: Outcome::SucceededWithFailures,
            done: 2,
            failed: 1,
            skipped: 1,
            not_started: 0,
            elapsed_ms: 80_000,
        },
    ]
}

/// The events stamped one millisecond apart (the journal keeps milliseconds).
fn stamped(events: Vec<RunEvent>) -> Vec<Stamped> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Stamped {
            at: UNIX_EPOCH + Duration::from_millis(1_795_568_400_123 + i as u64),
            event,
        })
        .collect()
}

fn header() -> Header {
    Header {
        journal: 1,
        run_id: "r1".into(),
        playbook: "upgrade".into(),
        nodes: vec![("w-1".into(), "workers".into())],
        ..Default::default()
    }
}

#[test]
fn the_examples_hold_every_event_kind() {
    let kinds: std::collections::BTreeSet<usize> = one_of_each().iter().map(kind).collect();
    assert_eq!(
        kinds,
        (0..KINDS).collect(),
        "add an example of each new kind"
    );
}

#[test]
fn every_event_written_through_the_journal_reads_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path(), &header()).unwrap();
    let all = stamped(one_of_each());
    for e in &all {
        j.record(e).unwrap();
    }
    let read = Records::read(j.path()).unwrap();
    assert_eq!(read.header, Some(header()));
    assert!(
        read.skipped.is_empty() && read.unknown.is_empty(),
        "{read:?}"
    );
    let journaled: Vec<Stamped> = all
        .iter()
        .filter(|e| writer::journaled(&e.event))
        .cloned()
        .collect();
    assert_eq!(read.records, journaled);
    // Decisions and transitions are in it; output lines and what the monitor sees are not.
    let kinds: std::collections::BTreeSet<usize> =
        read.records.iter().map(|e| kind(&e.event)).collect();
    assert_eq!(
        kinds,
        [
            0, 1, 2, 3, 4, 13, 14, 15, 16, 19, 20, 21, 22, 23, 24, 26, 29, 31, 32, 33, 34
        ]
        .into()
    );
}

#[test]
fn the_reader_reads_a_line_of_every_event_kind_and_it_writes_back_the_same() {
    let all = stamped(one_of_each());
    let lines: Vec<String> = all
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let text = format!(
        "{}\n{}\n",
        serde_json::to_string(&header()).unwrap(),
        lines.join("\n")
    );
    let read = Records::parse(&text);
    assert!(
        read.skipped.is_empty() && read.unknown.is_empty(),
        "{read:?}"
    );
    assert_eq!(read.records, all);
    for (record, line) in read.records.iter().zip(&lines) {
        assert_eq!(&serde_json::to_string(record).unwrap(), line);
    }
    // The fold takes any of them, in any order.
    let history = RunHistory::fold(read);
    assert_eq!(history.starts.len(), 2);
    assert_eq!(history.waits.len(), 3);
}

/// Written by rollgate before the typed reader (the journal of 2 December 2026), kept as is.
const JOURNAL_BEFORE_THE_TYPED_READER: &str = r#"{"journal":1,"run_id":"20261125-010000-ab12","playbook":"upgrade","playbook_file":"/etc/rollgate/upgrade.toml","dry_run":false,"deadline":"2026-11-25T05:00:00Z","started_by":"ops@bastion","lock_name":"rollgate","lock_duration_secs":30,"nodes":[["cp-1","control-plane"],["w-1","workers"]]}
{"at":"2026-11-25T01:00:00.123Z","event":"run-started","run_id":"20261125-010000-ab12","playbook":"upgrade","nodes":2,"dry_run":false,"by":"ops@bastion"}
{"at":"2026-11-25T01:00:00.123Z","event":"wave-started","phase":"workers","wave":"1","nodes":["w-1"]}
{"at":"2026-11-25T01:00:00.123Z","event":"node-started","node":"w-1","phase":"workers"}
{"at":"2026-11-25T01:00:00.123Z","event":"step-started","node":"w-1","step":"cordon"}
{"at":"2026-11-25T01:00:00.123Z","event":"step-finished","node":"w-1","step":"cordon","elapsed_ms":12,"detail":null}
{"at":"2026-11-25T01:00:00.123Z","event":"step-started","node":"w-1","step":"drain"}
{"at":"2026-11-25T01:00:00.123Z","event":"gate-decision","decision":{"decision":"pause","signal":"pods","evidence":"pod web-1 crash-looping","in_flight":[["w-1","drain"]]}}
{"at":"2026-11-25T01:00:00.123Z","event":"paused","decision":{"decision":"pause","signal":"pods","evidence":"pod web-1 crash-looping","in_flight":[["w-1","drain"]]},"resume_hint":"rollgate resume"}
{"at":"2026-11-25T01:00:00.123Z","event":"resumed"}
{"at":"2026-11-25T01:00:00.123Z","event":"step-finished","node":"w-1","step":"drain","elapsed_ms":3400,"detail":"3 evicted, 1 skipped"}
{"at":"2026-11-25T01:00:00.123Z","event":"step-started","node":"w-1","step":"command"}
{"at":"2026-11-25T01:00:00.123Z","event":"node-failed","node":"w-1","step":"command","reason":"exit 3"}
{"at":"2026-11-25T01:00:00.123Z","event":"node-abandoned","node":"cp-1","step":"settle"}
{"at":"2026-11-25T01:00:00.123Z","event":"window-closed","window":"mon-fri 01:00-05:00 UTC","reopens_at":"2026-11-26T01:00:00Z"}
{"at":"2026-11-25T01:00:00.123Z","event":"window-opened"}
{"at":"2026-11-25T01:00:00.123Z","event":"deadline-set","deadline":"2026-11-26T06:00:00Z"}
{"at":"2026-11-25T01:00:00.123Z","event":"stopping","reason":"gate-abort"}
{"at":"2026-11-25T01:00:00.123Z","event":"node-done","node":"cp-1","elapsed_ms":61000}
{"at":"2026-11-25T01:00:00.123Z","event":"run-refused","reason":"refusing to start"}
{"at":"2026-11-25T01:00:00.123Z","event":"run-finished","outcome":{"stopped":"gate-abort"},"done":1,"failed":1,"not_started":0,"elapsed_ms":70000}
{"at":"2026-11-25T01:00:00.123Z","event":"run-finished","outcome":"succeeded-with-failures","done":1,"failed":1,"not_started":0,"elapsed_ms":70000}
"#;

#[test]
fn a_journal_written_before_the_typed_reader_reads_and_writes_back_byte_for_byte() {
    let read = Records::parse(JOURNAL_BEFORE_THE_TYPED_READER);
    assert!(
        read.skipped.is_empty() && read.unknown.is_empty(),
        "{read:?}"
    );
    let header = read.header.clone().unwrap();
    assert_eq!(
        (
            header.run_id.as_str(),
            header.lock_duration_secs,
            header.nodes.len()
        ),
        ("20261125-010000-ab12", Some(30), 2)
    );
    let lines: Vec<&str> = JOURNAL_BEFORE_THE_TYPED_READER.lines().collect();
    assert_eq!(lines[0], serde_json::to_string(&header).unwrap());
    assert_eq!(read.records.len(), lines.len() - 1);
    for (record, line) in read.records.iter().zip(&lines[1..]) {
        assert_eq!(&serde_json::to_string(record).unwrap(), line);
    }
    assert_eq!(
        read.records[11].event,
        RunEvent::NodeFailed {
            node: "w-1".into(),
            step: Step::Command,
            reason: "exit 3".into()
        }
    );
    assert_eq!(
        read.records[0].at,
        UNIX_EPOCH + Duration::from_millis(1_795_568_400_123)
    );
    let status = RunStatus::from_records(read.clone());
    assert_eq!(status.state, "succeeded-with-failures");
    assert_eq!(status.nodes["w-1"].state, NodeState::Failed);
    assert_eq!(status.nodes["w-1"].last_error.as_deref(), Some("exit 3"));
    assert_eq!(status.nodes["cp-1"].state, NodeState::Done);
    assert_eq!(status.decisions, ["pause by pods: pod web-1 crash-looping"]);
    let history = RunHistory::fold(read);
    assert_eq!(history.deadline.as_deref(), Some("2026-11-26T06:00:00Z"));
    // Its refusal comes after the run started: a refused resume, which leaves it resumable.
    assert_eq!(history.refused, None);
    assert_eq!(history.waits.len(), 2);
    assert!(history.waits.iter().all(|w| w.to_ms.is_some()));
}

#[test]
fn a_record_this_version_does_not_know_is_passed_over_not_counted_as_torn() {
    let line = |event| {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_568_400_123);
        serde_json::to_string(&Stamped { at, event }).unwrap()
    };
    let text = [
        serde_json::to_string(&header()).unwrap(),
        line(RunEvent::NodeStarted {
            node: "w-1".into(),
            phase: "workers".into(),
        }),
        // A kind of record a newer rollgate might write.
        r#"{"at":"2026-11-25T01:00:01.000Z","event":"node-rebooted","node":"w-1"}"#.into(),
        line(RunEvent::NodeDone {
            node: "w-1".into(),
            elapsed_ms: 2000,
        }),
        r#"{"at":"2026-11-25T01:00:03"#.into(),
    ]
    .join("\n");
    let read = Records::parse(&text);
    assert_eq!(
        (read.unknown.clone(), read.skipped.clone()),
        (vec![3], vec![5])
    );
    assert_eq!(read.records.len(), 2);
    let status = RunStatus::from_records(read);
    assert_eq!(status.nodes["w-1"].state, NodeState::Done);
    assert_eq!(status.skipped_lines, vec![5]);
}
