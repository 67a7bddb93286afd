//! Phases, waves and steps in order; concurrency bounds; failure budgets; a panicking node task.

use super::*;

#[tokio::test(start_paused = true)]
async fn phases_run_in_order_and_steps_in_sequence() {
    let p = plan(&[
        ("cp", 1, 0, &[&["cp-1", "cp-2"]]),
        ("workers", 2, 0, &[&["w-1", "w-2", "w-3"]]),
    ]);
    let (summary, fake, _) = run(Fake::failing(vec![]), &p, None).await;
    assert_eq!(summary.outcome, Outcome::Succeeded);
    assert_eq!(summary.done.len(), 5);
    let log = fake.log.lock().unwrap().clone();
    let cp1: Vec<&String> = log.iter().filter(|l| l.starts_with("cp-1:")).collect();
    assert_eq!(
        cp1,
        [
            "cp-1:cordon",
            "cp-1:drain",
            "cp-1:command",
            "cp-1:wait-ready",
            "cp-1:uncordon",
            "cp-1:settle"
        ]
    );
    let last_cp = log.iter().rposition(|l| l.starts_with("cp-")).unwrap();
    let first_w = log.iter().position(|l| l.starts_with("w-")).unwrap();
    assert!(
        last_cp < first_w,
        "workers started before the control plane finished: {log:?}"
    );
    assert_eq!(
        fake.in_service_out.lock().unwrap().1,
        2,
        "at most `concurrency` nodes out of service at once"
    );
}

#[tokio::test(start_paused = true)]
async fn waves_are_barriers() {
    let p = plan(&[("w", 3, 0, &[&["a-1"], &["b-1", "b-2"]])]);
    let (_, fake, _) = run(Fake::failing(vec![]), &p, None).await;
    let log = fake.log.lock().unwrap().clone();
    let a_done = log.iter().position(|l| l == "a-1:settle").unwrap();
    let b_start = log.iter().position(|l| l.starts_with("b-")).unwrap();
    assert!(a_done < b_start, "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failure_over_budget_stops_new_nodes_and_finishes_in_flight_ones() {
    let p = plan(&[("w", 2, 0, &[&["w-1", "w-2", "w-3", "w-4"]])]);
    let (summary, fake, events) = run(Fake::failing(vec![("w-1", Step::Command)]), &p, None).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::NodeFailures));
    assert_eq!(
        summary.failed,
        vec![("w-1".into(), Step::Command, "command failed on w-1".into())]
    );
    assert_eq!(
        summary.done,
        vec!["w-2".to_string()],
        "the node in flight finishes"
    );
    assert_eq!(
        summary.not_started,
        vec!["w-3".to_string(), "w-4".to_string()]
    );
    let log = fake.log.lock().unwrap().clone();
    assert!(log.contains(&"w-1:mark-failed-at-command".to_string()));
    assert!(
        !log.iter().any(|l| l == "w-1:uncordon"),
        "a failed node stays cordoned"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::Stopping {
            reason: StopReason::NodeFailures
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn failures_within_budget_let_the_run_finish() {
    // Concurrency 2: the failed node stays cordoned and keeps one slot.
    let p = plan(&[("w", 2, 1, &[&["w-1", "w-2", "w-3"]])]);
    let (summary, _, _) = run(Fake::failing(vec![("w-2", Step::Drain)]), &p, None).await;
    assert_eq!(summary.outcome, Outcome::SucceededWithFailures);
    assert_eq!(summary.done, vec!["w-1".to_string(), "w-3".to_string()]);
    // The run-wide budget applies on top of the phase's.
    let (summary, _, _) = run(Fake::failing(vec![("w-2", Step::Drain)]), &p, Some(0)).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::NodeFailures));
}

#[tokio::test(start_paused = true)]
async fn failed_nodes_left_cordoned_count_against_concurrency() {
    let p = plan(&[("w", 2, 1, &[&["w-1", "w-2", "w-3", "w-4"]])]);
    let (summary, fake, _) = run(Fake::failing(vec![("w-1", Step::Command)]), &p, None).await;
    assert_eq!(summary.outcome, Outcome::SucceededWithFailures);
    assert_eq!(summary.done, vec!["w-2", "w-3", "w-4"]);
    let (_, most_out) = *fake.in_service_out.lock().unwrap();
    assert_eq!(
        most_out, 2,
        "w-1 stays cordoned: never more than 2 nodes out of service"
    );
    // A failure at settle comes after the uncordon: that node takes no slot.
    let (summary, fake, _) = run(Fake::failing(vec![("w-1", Step::Settle)]), &p, None).await;
    assert_eq!(summary.done, vec!["w-2", "w-3", "w-4"]);
    let log = fake.log.lock().unwrap().clone();
    let at = |entry: &str| log.iter().position(|l| l == entry).unwrap();
    assert!(
        at("w-4:cordon") < at("w-3:settle"),
        "w-3 and w-4 run side by side: {log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn when_failed_nodes_fill_every_slot_the_run_stops_instead_of_waiting_forever() {
    let p = plan(&[("w", 1, 2, &[&["w-1", "w-2", "w-3"]])]);
    let (summary, _, events) = run(Fake::failing(vec![("w-1", Step::WaitReady)]), &p, None).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::NodeFailures));
    assert_eq!(summary.not_started, vec!["w-2", "w-3"]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RunEvent::Warning { message, .. }
            if message.contains("fill its concurrency of 1"))),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_node_task_fails_that_node_at_its_step() {
    let p = plan(&[("w", 1, 0, &[&["w-1", "w-2"]])]);
    let fake = Fake {
        panic_at: Some(("w-1", Step::Drain)),
        step_time: Duration::from_secs(1),
        ..Default::default()
    };
    let (summary, fake, events) = run(fake, &p, None).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::NodeFailures));
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    let (node, step, reason) = &summary.failed[0];
    assert_eq!((node.as_str(), *step), ("w-1", Step::Drain));
    assert!(
        reason.contains("internal error") && reason.contains("index out of bounds in drain"),
        "{reason}"
    );
    assert_eq!(summary.not_started, vec!["w-2"]);
    let log = fake.log.lock().unwrap().clone();
    assert!(
        log.contains(&"w-1:mark-failed-at-drain".to_string()),
        "{log:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, RunEvent::NodeFailed { node, step: Step::Drain, .. } if node == "w-1")
    ));
}

#[tokio::test(start_paused = true)]
async fn a_node_held_by_a_budget_is_given_back_skipped_and_not_counted_as_a_failure() {
    // Failure budget 0, concurrency 1: a failure would stop the run, a node left cordoned
    // would fill the only slot.
    let p = plan(&[("w", 1, 0, &[&["w-1", "w-2", "w-3"]])]);
    let fake = Fake {
        held: vec!["w-1", "w-2"],
        step_time: Duration::from_secs(1),
        ..Default::default()
    };
    let (summary, fake, events) = run(fake, &p, Some(0)).await;
    assert_eq!(summary.outcome, Outcome::Succeeded);
    assert_eq!(summary.done, vec!["w-3"]);
    assert!(summary.failed.is_empty(), "{summary:?}");
    let skipped: Vec<&str> = summary.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["w-1", "w-2"]);
    assert!(summary.skipped[0].1.contains("PodDisruptionBudget shop/db"));
    let log = fake.log.lock().unwrap().clone();
    let w1: Vec<&String> = log.iter().filter(|l| l.starts_with("w-1:")).collect();
    assert_eq!(
        w1,
        ["w-1:cordon", "w-1:drain", "w-1:hand-back"],
        "given back, its command never run"
    );
    assert_eq!(fake.in_service_out.lock().unwrap().0, 0, "every node back");
    assert!(events.iter().any(|e| matches!(e,
        RunEvent::NodeSkipped { node, pdbs, pods, .. }
            if node == "w-1" && pdbs == &["shop/db"] && pods == &["shop/db-0"])));
    assert!(
        !events.iter().any(
            |e| matches!(e, RunEvent::StepFinished { node, step: Step::Drain, .. } if node == "w-1")
        ),
        "the drain did not finish"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::RunFinished {
            done: 1,
            failed: 0,
            skipped: 2,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_held_node_that_cannot_be_given_back_fails_at_its_drain() {
    let p = plan(&[("w", 1, 0, &[&["w-1", "w-2"]])]);
    let fake = Fake {
        held: vec!["w-1"],
        hand_back_fails: vec!["w-1"],
        step_time: Duration::from_secs(1),
        ..Default::default()
    };
    let (summary, fake, _) = run(fake, &p, None).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::NodeFailures));
    assert!(summary.skipped.is_empty());
    let (node, step, reason) = &summary.failed[0];
    assert_eq!((node.as_str(), *step), ("w-1", Step::Drain));
    assert!(
        reason.contains("PodDisruptionBudget shop/db")
            && reason.contains("could not give the node back: the API server said no"),
        "{reason}"
    );
    let log = fake.log.lock().unwrap().clone();
    assert!(log.contains(&"w-1:mark-failed-at-drain".to_string()));
}
