use super::*;
use crate::vocab::{Step, Stream};

fn narrator(report: Option<&str>) -> Narrator {
    Narrator::new("r1", "p", Some("<!here>".into()), report.map(str::to_owned))
}

fn started(n: &mut Narrator, nodes: usize) -> Vec<Message> {
    n.messages(&RunEvent::RunStarted {
        run_id: "r1".into(),
        playbook: "p".into(),
        nodes,
        dry_run: false,
        by: None,
    })
}

fn replies(messages: &[Message]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m.place == Place::Reply)
        .map(|m| m.text.as_str())
        .collect()
}

fn field<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.fields
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

fn decided(decision: Decision) -> GateDecision {
    GateDecision {
        decision,
        signal: "pods".into(),
        evidence: "web crash-looping".into(),
        in_flight: vec![("n2".into(), Step::Drain)],
    }
}

fn gate(decision: Decision) -> RunEvent {
    RunEvent::GateDecision {
        decision: decided(decision),
    }
}

#[test]
fn the_final_message_sums_up_the_run_names_the_slowest_node_and_links_the_report() {
    let mut t = narrator(Some("https://reports.example/r1/report.html"));
    started(&mut t, 3);
    for (node, ms) in [("a", 5_000), ("b", 65_000), ("c", 7_000)] {
        t.messages(&RunEvent::NodeDone {
            node: node.into(),
            elapsed_ms: ms,
        });
    }
    let last = t.messages(&RunEvent::RunFinished {
        outcome: Outcome::Succeeded,
        done: 3,
        failed: 0,
        skipped: 0,
        not_started: 0,
        elapsed_ms: 80_000,
    });
    assert_eq!(last[0].place, Place::UpdateRoot);
    assert_eq!(
        last[0].text,
        "rollgate run `r1`: *p* (finished) — 3/3 nodes done, 0 failed"
    );
    assert_eq!(last[1].place, Place::Reply);
    assert_eq!(
        last[1].text,
        "run finished after 1m 20s: 3 done, 0 failed, 0 not started; slowest node `b` (1m 5s)\nReport: https://reports.example/r1/report.html"
    );
    assert_eq!(last[1].event, "run-finished");
    assert_eq!(
        last[1].fields,
        vec![
            ("outcome", "succeeded".to_owned()),
            ("done", "3".into()),
            ("failed", "0".into()),
            ("skipped", "0".into()),
            ("not_started", "0".into()),
            ("elapsed_ms", "80000".into()),
            ("slowest_node", "b".into()),
            ("slowest_ms", "65000".into()),
            ("report", "https://reports.example/r1/report.html".into()),
        ]
    );
}

#[test]
fn failure_and_abort_advice_points_to_resume_or_the_full_hand_back_command() {
    let mut t = narrator(None);
    started(&mut t, 2);
    let failed = t.messages(&RunEvent::NodeFailed {
        node: "n1".into(),
        step: Step::Command,
        reason: "exit 3".into(),
    });
    let abort = t.messages(&gate(Decision::Abort));
    let texts: Vec<&str> = replies(&failed)
        .into_iter()
        .chain(replies(&abort))
        .collect();
    assert_eq!(texts.len(), 2);
    for (text, node) in texts.iter().zip(["n1", "NODE"]) {
        assert!(text.contains("`rollgate resume r1`"), "{text}");
        assert!(
            text.contains(&format!(
                "kubectl uncordon {node} && kubectl annotate node {node} rollgate.dev/cordoned-by-"
            )),
            "{text}"
        );
        assert!(!text.contains("rerun"), "{text}");
    }
    assert_eq!(field(&failed[0], "step"), Some("command"));
    assert_eq!(field(&failed[0], "reason"), Some("exit 3"));
    assert_eq!(
        failed[1].text,
        "rollgate run `r1`: *p* (running) — 0/2 nodes done, 1 failed"
    );
    assert_eq!(field(&abort[0], "decision"), Some("abort"));
    assert_eq!(field(&abort[0], "in_flight"), Some("n2 (at drain)"));
}

#[test]
fn the_run_message_opens_the_thread_and_each_node_updates_it_after_its_reply() {
    let mut t = narrator(None);
    let first = started(&mut t, 2);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].place, Place::Root);
    assert_eq!(first[0].event, "run-started");
    assert_eq!(
        first[0].text,
        "rollgate run `r1`: *p* (running) — 0/2 nodes done, 0 failed"
    );
    let done = t.messages(&RunEvent::NodeDone {
        node: "n1".into(),
        elapsed_ms: 1_500,
    });
    let places: Vec<Place> = done.iter().map(|m| m.place).collect();
    assert_eq!(places, [Place::Reply, Place::UpdateRoot]);
    assert_eq!(done[0].text, "node `n1` upgraded in 1.5s");
    assert_eq!(done[0].event, "node-done");
    assert_eq!(field(&done[0], "node"), Some("n1"));
    assert_eq!(field(&done[1], "done"), Some("1"));
    assert_eq!(field(&done[1], "total"), Some("2"));
    assert_eq!(field(&done[1], "state"), Some("running"));
}

#[test]
fn only_an_abort_or_a_pause_calls_the_mention() {
    let mut t = narrator(None);
    for (decision, called) in [
        (Decision::Abort, true),
        (Decision::Pause, true),
        (Decision::Warn, false),
    ] {
        let m = t.messages(&gate(decision));
        assert_eq!(m[0].text.starts_with("<!here> "), called, "{}", m[0].text);
    }
    let by_operator = t.messages(&RunEvent::GateDecision {
        decision: GateDecision {
            decision: Decision::Pause,
            signal: crate::health::OPERATOR.into(),
            evidence: "paused for lunch".into(),
            in_flight: vec![],
        },
    });
    assert!(
        by_operator[0]
            .text
            .contains("*PAUSED* by the operator: paused for lunch\nno node was in flight"),
        "{}",
        by_operator[0].text
    );
}

#[test]
fn pause_resume_and_the_window_update_the_run_message_state() {
    let mut t = narrator(None);
    started(&mut t, 1);
    let paused = t.messages(&RunEvent::Paused {
        decision: decided(Decision::Pause),
        resume_hint: "rollgate resume r1".into(),
    });
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].place, Place::UpdateRoot);
    assert_eq!(field(&paused[0], "state"), Some("paused by pods"));
    let resumed = t.messages(&RunEvent::Resumed { by: None });
    assert_eq!(replies(&resumed), ["resumed by the operator"]);
    assert_eq!(field(&resumed[1], "state"), Some("running"));
    let closed = t.messages(&RunEvent::WindowClosed {
        window: "01:00-05:00 UTC".into(),
        reopens_at: None,
    });
    assert_eq!(
        replies(&closed),
        [
            "outside the maintenance window (01:00-05:00 UTC): waiting, no new node starts until it reopens (not within a year!)"
        ]
    );
    assert_eq!(field(&closed[1], "state"), Some("waiting for the window"));
    let opened = t.messages(&RunEvent::WindowOpened);
    assert_eq!(
        replies(&opened),
        ["the maintenance window is open: continuing"]
    );
}

#[test]
fn every_way_a_run_ends_has_its_own_words() {
    let reasons = [
        StopReason::GateAbort,
        StopReason::NodeFailures,
        StopReason::OutsideWindow,
        StopReason::Deadline,
        StopReason::JournalUnwritable,
        StopReason::LockLost,
        StopReason::OperatorGraceful,
    ];
    let mut outcomes = vec![Outcome::Succeeded, Outcome::SucceededWithFailures];
    outcomes.extend(reasons.map(Outcome::Stopped));
    let mut seen = std::collections::HashSet::new();
    for outcome in outcomes {
        let mut t = narrator(None);
        let m = t.messages(&RunEvent::RunFinished {
            outcome,
            done: 0,
            failed: 0,
            skipped: 0,
            not_started: 1,
            elapsed_ms: 500,
        });
        let state = field(&m[0], "state").unwrap().to_owned();
        assert!(
            m[1].text.starts_with(&format!("run {state} after 500ms: ")),
            "{}",
            m[1].text
        );
        assert!(seen.insert(state), "{outcome:?} shares its words");
    }
    assert_eq!(
        finished_state(Outcome::Stopped(StopReason::OperatorImmediate)),
        "stopped by the operator"
    );
}

#[test]
fn events_without_news_for_people_say_nothing() {
    let mut t = narrator(None);
    for event in [
        RunEvent::StepStarted {
            node: "n1".into(),
            step: Step::Drain,
        },
        RunEvent::CommandOutput {
            node: "n1".into(),
            stream: Stream::Stdout,
            line: "upgrading".into(),
        },
        RunEvent::NodeStarted {
            node: "n1".into(),
            phase: "all".into(),
        },
    ] {
        assert!(t.messages(&event).is_empty(), "{event:?}");
    }
}

fn preflight(blocked: bool) -> RunEvent {
    use crate::vocab::{CheckVerdict, PreflightFinding, PreflightSummary, Verdict};
    RunEvent::Preflight {
        summary: PreflightSummary {
            checks: vec![
                CheckVerdict {
                    check: "drain-blockers".into(),
                    verdict: if blocked {
                        Verdict::Blocked
                    } else {
                        Verdict::Ignored
                    },
                    note: None,
                },
                CheckVerdict {
                    check: "ssh".into(),
                    verdict: Verdict::Skipped,
                    note: Some("--no-ssh-check".into()),
                },
                CheckVerdict {
                    check: "eta".into(),
                    verdict: Verdict::Warning,
                    note: None,
                },
            ],
            findings: vec![
                PreflightFinding {
                    check: "drain-blockers".into(),
                    blocker: true,
                    node: Some("n1".into()),
                    object: Some("PodDisruptionBudget ns/db".into()),
                    message: "maxUnavailable is 0".into(),
                    fix: "raise it".into(),
                },
                PreflightFinding {
                    check: "eta".into(),
                    blocker: false,
                    node: None,
                    object: None,
                    message: "slow".into(),
                    fix: String::new(),
                },
            ],
        },
    }
}

#[test]
fn the_preflight_summary_goes_with_the_runs_own_message_and_stays_in_its_updates() {
    let mut t = narrator(None);
    assert_eq!(
        t.messages(&preflight(false)),
        vec![],
        "said with the run's message"
    );
    let first = started(&mut t, 2);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].place, Place::Root);
    let text = &first[0].text;
    assert!(
        text.starts_with("rollgate run `r1`: *p* (running)"),
        "{text}"
    );
    assert!(
        text.contains(
            "pre-flight: drain-blockers *blocked (ignored)* · ssh *skipped* · eta *warning*"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "• BLOCKER [drain-blockers] n1 PodDisruptionBudget ns/db: maxUnavailable is 0"
        ),
        "{text}"
    );
    assert!(text.contains("• warning [eta] slow"), "{text}");
    assert_eq!(
        field(&first[0], "preflight"),
        Some("drain-blockers blocked (ignored), ssh skipped, eta warning")
    );
    let update = t.messages(&RunEvent::NodeDone {
        node: "a".into(),
        elapsed_ms: 1000,
    });
    assert!(update[1].place == Place::UpdateRoot && update[1].text.contains("pre-flight: "));
    // Without a pre-flight event (an old journal, a test), the message is as before.
    let mut plain = narrator(None);
    assert!(!started(&mut plain, 1)[0].text.contains("pre-flight"));
}

#[test]
fn a_run_refused_by_preflight_is_one_message_naming_the_blockers() {
    let mut t = narrator(None);
    let said = t.messages(&preflight(true));
    assert_eq!(said.len(), 1);
    let m = &said[0];
    assert_eq!((m.place, m.event.as_str()), (Place::Root, "preflight"));
    assert!(
        m.text.starts_with(
            "<!here> rollgate run `r1`: *p* REFUSED by pre-flight — nothing was changed"
        ),
        "{}",
        m.text
    );
    assert!(
        m.text.contains("`--ignore-preflight drain-blockers`"),
        "{}",
        m.text
    );
    assert_eq!(field(m, "state"), Some("refused by pre-flight"));
    assert_eq!(field(m, "blocked"), Some("drain-blockers"));
    assert_eq!(
        field(m, "blockers"),
        Some("[drain-blockers] n1 PodDisruptionBudget ns/db: maxUnavailable is 0")
    );
}

#[test]
fn a_skipped_node_is_told_with_its_budgets_and_pods_and_counted_apart_from_failures() {
    let mut t = narrator(None);
    started(&mut t, 2);
    let skipped = t.messages(&RunEvent::NodeSkipped {
        node: "n1".into(),
        reason: "drain timed out after 3s: ...".into(),
        pdbs: vec!["shop/db".into()],
        pods: vec!["shop/db-0".into()],
    });
    let text = replies(&skipped)[0];
    assert!(
        text.starts_with(
            "node `n1` SKIPPED: PodDisruptionBudget shop/db held shop/db-0 past the drain timeout."
        ) && text.contains("without its command")
            && text.contains("NOT upgraded"),
        "{text}"
    );
    assert_eq!(skipped[0].event, "node-skipped");
    assert_eq!(field(&skipped[0], "pdbs"), Some("shop/db"));
    assert_eq!(field(&skipped[0], "pods"), Some("shop/db-0"));
    assert_eq!(
        skipped[1].text,
        "rollgate run `r1`: *p* (running) — 0/2 nodes done, 0 failed, 1 skipped"
    );
    t.messages(&RunEvent::NodeDone {
        node: "n2".into(),
        elapsed_ms: 1000,
    });
    let last = t.messages(&RunEvent::RunFinished {
        outcome: Outcome::Succeeded,
        done: 1,
        failed: 0,
        skipped: 1,
        not_started: 0,
        elapsed_ms: 5000,
    });
    assert!(
        last[1]
            .text
            .starts_with("run finished after 5.0s: 1 done, 0 failed, 1 skipped, 0 not started"),
        "{}",
        last[1].text
    );
    assert_eq!(field(&last[1], "skipped"), Some("1"));
    assert_eq!(field(&last[1], "failed"), Some("0"));
}

#[test]
fn a_finish_by_end_hold_is_said_in_the_thread_with_its_figures() {
    let mut t = narrator(None);
    started(&mut t, 2);
    let held = t.messages(&RunEvent::FinishByEnd(crate::vocab::FinishByEnd {
        node: "w-2".into(),
        needs_secs: 720,
        from_runs: 3,
        closes_at: "2026-11-25T05:00:00Z".into(),
        closes_in_secs: 480,
    }));
    assert_eq!(
        replies(&held),
        [
            "not started (finish-by-end): node w-2 would need 12m (p95 from 3 earlier run(s)), the window closes in 8m (at 2026-11-25T05:00:00Z); no node may be in flight when it closes"
        ]
    );
    assert_eq!(field(&held[0], "p95_secs"), Some("720"));
}

#[test]
fn the_runs_message_offers_the_buttons_its_state_fits_and_says_why_it_is_paused() {
    use ControlAction::*;
    let mut t = narrator(None).with_buttons();
    let root = |m: &[Message]| m.iter().find(|m| m.place != Place::Reply).cloned().unwrap();
    assert_eq!(root(&started(&mut t, 3)).buttons, [Pause, Abort]);
    let paused = t.messages(&RunEvent::Paused {
        decision: decided(Decision::Pause),
        resume_hint: String::new(),
    });
    assert_eq!(paused[0].buttons, [Resume, Abort]);
    assert!(
        paused[0]
            .text
            .contains("Paused (gate `pods`): web crash-looping. No new node starts; next: Resume (the button, or `rollgate resume r1`)"),
        "{}",
        paused[0].text
    );
    // A node in flight finishing during the pause does not make the message say "running".
    let done = t.messages(&RunEvent::NodeDone {
        node: "n2".into(),
        elapsed_ms: 1000,
    });
    assert_eq!(field(&root(&done), "state"), Some("paused by pods"));
    assert_eq!(root(&done).buttons, [Resume, Abort]);
    let resumed = t.messages(&RunEvent::Resumed {
        by: Some("alice (Slack U0ALICE)".into()),
    });
    assert_eq!(replies(&resumed), ["resumed by alice (Slack U0ALICE)"]);
    assert_eq!(root(&resumed).buttons, [Pause, Abort]);
    let aborted = t.messages(&gate(Decision::Abort));
    assert_eq!(field(&root(&aborted), "state"), Some("aborting"));
    assert!(root(&aborted).buttons.is_empty());
    assert!(
        root(&aborted)
            .text
            .contains("Aborting (gate `pods`): web crash-looping")
    );
    let finished = t.messages(&RunEvent::RunFinished {
        outcome: Outcome::Stopped(StopReason::GateAbort),
        not_started: 1,
        elapsed_ms: 5000,
        done: 1,
        failed: 0,
        skipped: 0,
    });
    assert!(root(&finished).buttons.is_empty());
    assert!(
        root(&finished).text.contains("Aborting (gate `pods`)"),
        "an aborted run's message keeps saying why: {}",
        root(&finished).text
    );
    // Without Socket Mode, no message offers a button.
    let mut plain = narrator(None);
    assert!(started(&mut plain, 1).iter().all(|m| m.buttons.is_empty()));
    let refused = t.messages(&RunEvent::ControlRefused {
        action: Pause,
        by: "mallory (Slack U0MALLORY)".into(),
        reason: "not among [slack] operators".into(),
    });
    assert_eq!(
        replies(&refused),
        ["refused a request to pause by mallory (Slack U0MALLORY): not among [slack] operators"]
    );
}
