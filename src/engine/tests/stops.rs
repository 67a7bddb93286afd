//! Stop requests, maintenance windows and the deadline.

use super::*;

#[tokio::test(start_paused = true)]
async fn graceful_stop_finishes_in_flight_nodes_and_immediate_stop_abandons_them() {
    for (request, want_outcome) in [
        (StopRequest::Graceful, StopReason::OperatorGraceful),
        (StopRequest::Immediate, StopReason::OperatorImmediate),
    ] {
        let p = plan(&[("w", 2, 0, &[&["w-1", "w-2", "w-3"]])]);
        let (sink, _rx) = EventSink::channel();
        let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
        let mut engine = Engine::new(Fake::failing(vec![]), sink, stop_rx);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await; // w-1, w-2 are draining
            stop_tx.send(request).unwrap();
            stop_tx
        });
        let summary = engine.run("r", "t", &p, None, false).await;
        drop(stopper.await);
        assert_eq!(summary.outcome, Outcome::Stopped(want_outcome));
        assert_eq!(summary.not_started, vec!["w-3".to_string()]);
        match request {
            StopRequest::Graceful => assert_eq!(summary.done.len(), 2),
            _ => {
                assert!(summary.done.is_empty());
                assert_eq!(
                    summary.abandoned,
                    vec![
                        ("w-1".into(), Some(Step::Command)),
                        ("w-2".into(), Some(Step::Command))
                    ]
                );
            }
        }
    }
}

/// Runs with a schedule the test drives: (summary, fake, events).
async fn run_scheduled(
    plan: &Plan,
    outside: OutsideWindow,
    drive: impl FnOnce(watch::Sender<Schedule>, Arc<Fake>) -> tokio::task::JoinHandle<()>,
) -> (RunSummary, Arc<Fake>, Vec<RunEvent>) {
    let (sink, mut rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let (schedule_tx, schedule_rx) = watch::channel(Schedule::Open);
    let mut engine = Engine::new(Fake::failing(vec![]), sink, stop_rx).with_schedule(
        schedule_rx,
        outside,
        "mon-fri 01:00-05:00 UTC",
    );
    let driver = drive(schedule_tx, Arc::clone(&engine.steps));
    let summary = engine.run("r1", "test", plan, None, false).await;
    driver.abort();
    let steps = Arc::clone(&engine.steps);
    drop(engine);
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    (summary, steps, events)
}

/// Closes the window once node `a` has started, reopens it 10 minutes (paused time) later.
fn close_after_first_node(
    reopen: bool,
) -> impl FnOnce(watch::Sender<Schedule>, Arc<Fake>) -> tokio::task::JoinHandle<()> {
    move |tx, fake| {
        tokio::spawn(async move {
            while !fake.log.lock().unwrap().iter().any(|l| l == "a:cordon") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tx.send(Schedule::Closed { reopens_at: None });
            if reopen {
                tokio::time::sleep(Duration::from_secs(600)).await;
                let _ = tx.send(Schedule::Open);
            }
            tx.closed().await;
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_window_holds_new_nodes_and_the_node_in_flight_finishes() {
    let p = plan(&[("w", 1, 0, &[&["a", "b", "c"]])]);
    let started = tokio::time::Instant::now();
    let (summary, fake, events) =
        run_scheduled(&p, OutsideWindow::Wait, close_after_first_node(true)).await;
    assert_eq!(summary.outcome, Outcome::Succeeded);
    assert_eq!(summary.done, ["a", "b", "c"]);
    assert!(started.elapsed() >= Duration::from_secs(600), "it waited");
    let log = fake.log.lock().unwrap().clone();
    let a_done = log.iter().position(|l| l == "a:settle").unwrap();
    let b_start = log.iter().position(|l| l == "b:cordon").unwrap();
    assert!(a_done < b_start, "{log:?}");
    let closed = events
        .iter()
        .position(|e| matches!(e, RunEvent::WindowClosed { .. }))
        .expect("window-closed");
    let opened = events
        .iter()
        .position(|e| matches!(e, RunEvent::WindowOpened))
        .expect("window-opened");
    assert!(closed < opened);
}

#[tokio::test(start_paused = true)]
async fn outside_exit_stops_resumable_after_the_node_in_flight() {
    let p = plan(&[("w", 1, 0, &[&["a", "b", "c"]])]);
    let (summary, _, _) =
        run_scheduled(&p, OutsideWindow::Exit, close_after_first_node(false)).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::OutsideWindow));
    assert_eq!(summary.done, ["a"]);
    assert_eq!(summary.not_started, ["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_stops_the_run_even_while_waiting_for_the_window() {
    let p = plan(&[("w", 1, 0, &[&["a", "b"]])]);
    let (summary, _, _) = run_scheduled(&p, OutsideWindow::Wait, |tx, fake| {
        tokio::spawn(async move {
            while !fake.log.lock().unwrap().iter().any(|l| l == "a:cordon") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tx.send(Schedule::Closed { reopens_at: None });
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = tx.send(Schedule::DeadlinePassed {
                deadline: jiff::Timestamp::UNIX_EPOCH,
            });
            tx.closed().await;
        })
    })
    .await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::Deadline));
    assert_eq!(summary.not_started, ["b"]);
}

#[tokio::test(start_paused = true)]
async fn the_run_goes_on_when_nobody_can_ask_it_to_stop_any_more() {
    let p = plan(&[("w", 1, 0, &[&["a", "b"]])]);
    let (sink, _rx) = EventSink::channel();
    let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
    drop(stop_tx); // e.g. the signal handler could not be installed
    let mut engine = Engine::new(Fake::failing(vec![]), sink, stop_rx);
    let summary = tokio::time::timeout(
        Duration::from_secs(3600),
        engine.run("r1", "test", &p, None, false),
    )
    .await
    .expect("the run finishes");
    assert_eq!(summary.done, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_asked_for_while_the_step_prompt_waits_is_obeyed_before_the_node_starts() {
    let p = plan(&[("w", 1, 0, &[&["a", "b", "c"]])]);
    let (sink, _rx) = EventSink::channel();
    let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let stop_tx = Arc::new(stop_tx);
    let asked = Arc::clone(&stop_tx);
    // The operator presses Ctrl-C while asked about b, then answers yes.
    let confirm: Confirm = Arc::new(move |node: &str| {
        if node == "b" {
            let _ = asked.send(StopRequest::Graceful);
        }
        true
    });
    let mut engine = Engine::new(Fake::failing(vec![]), sink, stop_rx).with_confirm(confirm);
    let summary = engine.run("r1", "test", &p, None, false).await;
    assert_eq!(summary.done, ["a"]);
    assert_eq!(summary.not_started, ["b", "c"]);
    assert_eq!(
        summary.outcome,
        Outcome::Stopped(StopReason::OperatorGraceful)
    );
    drop(stop_tx);
}

/// What the scheduler says with `finish-by-end` when a node's p95 (12m) passes the close (8m).
fn too_late() -> Schedule {
    let ts = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    Schedule::TooLate(crate::window::TooLate {
        needs: crate::window::NodeEstimate {
            p95: Duration::from_secs(720),
            from_runs: 2,
        },
        closes_at: ts("2026-11-25T05:00:00Z"),
        closes_in: Duration::from_secs(480),
        reopens_at: Some(ts("2026-11-26T01:00:00Z")),
    })
}

/// Sends "too late" once node `a` has started; with `reopen`, opens again 10 minutes later.
fn too_late_after_first_node(
    reopen: bool,
) -> impl FnOnce(watch::Sender<Schedule>, Arc<Fake>) -> tokio::task::JoinHandle<()> {
    move |tx, fake| {
        tokio::spawn(async move {
            while !fake.log.lock().unwrap().iter().any(|l| l == "a:cordon") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tx.send(too_late());
            if reopen {
                tokio::time::sleep(Duration::from_secs(600)).await;
                let _ = tx.send(Schedule::Open);
            }
            tx.closed().await;
        })
    }
}

fn held_node(events: &[RunEvent]) -> Option<(usize, crate::vocab::FinishByEnd)> {
    events.iter().enumerate().find_map(|(i, e)| match e {
        RunEvent::FinishByEnd(h) => Some((i, h.clone())),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn finish_by_end_holds_the_next_node_says_why_and_waits_for_the_next_window() {
    let p = plan(&[("w", 1, 0, &[&["a", "b"]])]);
    let (summary, fake, events) =
        run_scheduled(&p, OutsideWindow::Wait, too_late_after_first_node(true)).await;
    assert_eq!(summary.outcome, Outcome::Succeeded);
    let log = fake.log.lock().unwrap().clone();
    let a_done = log.iter().position(|l| l == "a:settle").unwrap();
    let b_start = log.iter().position(|l| l == "b:cordon").unwrap();
    assert!(a_done < b_start, "{log:?}");
    let (at, held) = held_node(&events).expect("finish-by-end event");
    assert_eq!(
        (held.node.as_str(), held.needs_secs, held.closes_in_secs),
        ("b", 720, 480)
    );
    assert!(
        matches!(&events[at + 1], RunEvent::WindowClosed { reopens_at: Some(t), .. } if t == "2026-11-26T01:00:00Z"),
        "{events:?}"
    );
    let b_started = events
        .iter()
        .position(|e| matches!(e, RunEvent::NodeStarted { node, .. } if node == "b"))
        .unwrap();
    let opened = events
        .iter()
        .position(|e| matches!(e, RunEvent::WindowOpened))
        .unwrap();
    assert!(at < opened && opened < b_started, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn finish_by_end_with_outside_exit_stops_before_the_next_node_and_says_why() {
    let p = plan(&[("w", 1, 0, &[&["a", "b", "c"]])]);
    let (summary, _, events) =
        run_scheduled(&p, OutsideWindow::Exit, too_late_after_first_node(false)).await;
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::OutsideWindow));
    assert_eq!(summary.done, ["a"]);
    assert_eq!(summary.not_started, ["b", "c"]);
    let (at, held) = held_node(&events).expect("finish-by-end event");
    assert_eq!(held.node, "b");
    assert!(
        matches!(
            events[at + 1],
            RunEvent::Stopping {
                reason: StopReason::OutsideWindow
            }
        ),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn finish_by_end_does_not_stop_a_run_with_no_node_left_to_start() {
    // The last node is in flight when it becomes too late: nothing is held, the run succeeds.
    let p = plan(&[("w", 1, 0, &[&["a"]])]);
    let (summary, _, events) =
        run_scheduled(&p, OutsideWindow::Exit, too_late_after_first_node(false)).await;
    assert_eq!(summary.outcome, Outcome::Succeeded);
    assert!(held_node(&events).is_none(), "{events:?}");
}
