//! A journal that cannot record, and a lost cluster lock.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_step_whose_start_cannot_be_journaled_is_not_run_and_the_run_stops() {
    use crate::journal::{Header, Journal, Records};
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::create(dir.path(), &Header::default()).unwrap());
    let disk = Arc::clone(&journal);
    // The disk fills up while node a's command runs: its end cannot be recorded, so neither
    // can the start of wait-ready.
    let fake = Fake {
        step_time: Duration::from_secs(1),
        on_step: Some(Box::new(move |node, step| {
            if node == "a" && step == Step::Command {
                let full = std::fs::OpenOptions::new().append(true).open("/dev/full");
                disk.write_to(full.unwrap());
            }
        })),
        ..Default::default()
    };
    let (sink, mut rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut engine = Engine::new(fake, sink.with_journal(Arc::clone(&journal)), stop_rx);
    let p = plan(&[("w", 2, 5, &[&["a"], &["b", "c"]])]);
    let summary = engine.run("r1", "test", &p, None, false).await;
    assert_eq!(
        *engine.steps.log.lock().unwrap(),
        ["a:cordon", "a:drain", "a:command"],
        "nothing after the command, no mark-failed, no other node"
    );
    assert_eq!(
        summary.outcome,
        Outcome::Stopped(StopReason::JournalUnwritable)
    );
    assert_eq!(summary.unrecorded, [("a".to_owned(), Step::WaitReady)]);
    assert!(summary.failed.is_empty() && summary.done.is_empty());
    assert_eq!(summary.not_started, ["b", "c"]);
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    assert!(
        !events.iter().any(|e| matches!(
            e,
            RunEvent::StepStarted {
                step: Step::WaitReady,
                ..
            }
        )),
        "the refused step is not reported as started: {events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::Stopping {
            reason: StopReason::JournalUnwritable
        }
    )));
    let records = Records::read(journal.path()).unwrap();
    let last = records.records.last().unwrap();
    assert!(
        matches!(
            &last.event,
            RunEvent::StepStarted {
                step: Step::Command,
                ..
            }
        ),
        "{last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_first_record_cannot_be_journaled_starts_no_node() {
    use crate::journal::{Header, Journal};
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::create(dir.path(), &Header::default()).unwrap());
    journal.write_to(
        std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap(),
    );
    let (sink, _rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut engine = Engine::new(Fake::default(), sink.with_journal(journal), stop_rx);
    let summary = engine
        .run(
            "r1",
            "test",
            &plan(&[("w", 2, 0, &[&["a", "b"]])]),
            None,
            false,
        )
        .await;
    assert!(engine.steps.log.lock().unwrap().is_empty());
    assert_eq!(
        summary.outcome,
        Outcome::Stopped(StopReason::JournalUnwritable)
    );
    assert_eq!(summary.not_started, ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_stops_new_nodes_and_in_flight_ones_at_their_next_safe_point() {
    // w-1 and w-2 are in their command (never interrupted: 2 s..3 s) when the lock is lost at
    // 2.5 s; w-3 never starts. Nothing more is written to the nodes.
    let p = plan(&[("w", 2, 5, &[&["w-1", "w-2", "w-3"]])]);
    let mut fake = Fake::failing(vec![]);
    fake.step_time = Duration::from_secs(1);
    let (sink, mut rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let (lost_tx, lost_rx) = watch::channel(None);
    let mut engine = Engine::new(fake, sink, stop_rx).with_lock(lost_rx);
    let loser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        lost_tx
            .send(Some("not renewed within its renew deadline of 20s".into()))
            .unwrap();
        lost_tx
    });
    let started = tokio::time::Instant::now();
    let summary = engine.run("r", "t", &p, None, false).await;
    drop(loser.await);
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::LockLost));
    assert_eq!(summary.not_started, vec!["w-3".to_string()]);
    // The commands in flight finished (at 3 s), then both nodes stopped before wait-ready.
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(summary.failed.len(), 2);
    for (node, step, reason) in &summary.failed {
        assert_eq!(*step, Step::WaitReady, "{node}");
        assert!(
            reason.starts_with("stopped before wait-ready: lost the cluster lock: not renewed"),
            "{reason}"
        );
    }
    let log = engine.steps.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .all(|l| !l.contains("mark-failed") && !l.starts_with("w-3")),
        "{log:?}"
    );
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::Stopping {
            reason: StopReason::LockLost
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_interrupts_a_drain_and_outranks_a_gate_abort_but_not_an_immediate_stop() {
    let p = plan(&[("w", 1, 5, &[&["w-1", "w-2"]])]);
    let (sink, _rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let (lost_tx, lost_rx) = watch::channel(None);
    let mut fake = Fake::failing(vec![]);
    fake.step_time = Duration::from_secs(10);
    let mut engine = Engine::new(fake, sink, stop_rx).with_lock(lost_rx);
    let loser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(12)).await; // w-1 drains from 10 s to 20 s
        lost_tx
            .send(Some("taken by another run: x".into()))
            .unwrap();
        lost_tx
    });
    let started = tokio::time::Instant::now();
    let summary = engine.run("r", "t", &p, None, false).await;
    drop(loser.await);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(12),
        "the drain was interrupted"
    );
    assert_eq!(
        summary.failed,
        vec![(
            "w-1".to_string(),
            Step::Drain,
            "stopped during drain: lost the cluster lock: taken by another run: x".to_string()
        )]
    );
    assert!(StopReason::LockLost > StopReason::GateAbort);
    assert!(StopReason::LockLost < StopReason::OperatorImmediate);
}
