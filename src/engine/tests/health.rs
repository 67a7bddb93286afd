//! The health guard: exempt nodes, gate aborts and pauses as the engine obeys them.

use super::*;
use crate::playbook::Signal;
use crate::vocab::ProbeOutcome;

/// A guard with the default gates for pods and nodes, no probes.
fn guard(sink: &EventSink) -> Arc<Guard> {
    Guard::new(
        &[],
        &[],
        None,
        &[Signal::Pods, Signal::Nodes],
        sink.clone(),
        "r1",
    )
}

fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::vocab::Stamped>) -> Vec<RunEvent> {
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    events
}

#[tokio::test(start_paused = true)]
async fn a_gate_abort_stops_a_drain_at_once_and_no_other_node_starts() {
    let p = plan(&[("w", 1, 5, &[&["w-1", "w-2"]])]);
    let (sink, mut rx) = EventSink::channel();
    let guard = guard(&sink);
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut fake = Fake::failing(vec![]);
    fake.step_time = Duration::from_secs(10);
    let mut engine = Engine::new(fake, sink, stop_rx).with_guard(Arc::clone(&guard), "");
    let monitor = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(12)).await; // w-1 drains from 10 s to 20 s
            guard.report(
                &Signal::Pods,
                ProbeOutcome::Fail("ns/web crash-looping".into()),
            )
        })
    };
    let started = tokio::time::Instant::now();
    let summary = engine.run("r1", "t", &p, None, false).await;
    assert_eq!(monitor.await.unwrap(), Some(crate::vocab::Decision::Abort));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(12),
        "the drain was interrupted"
    );
    assert_eq!(summary.outcome, Outcome::Stopped(StopReason::GateAbort));
    assert_eq!(
        summary.failed,
        [(
            "w-1".to_owned(),
            Step::Drain,
            "stopped during drain: gate pods aborted the run: ns/web crash-looping".to_owned()
        )]
    );
    assert_eq!(summary.not_started, ["w-2"]);
    let events = events(&mut rx);
    let decided = events
        .iter()
        .position(|e| matches!(e, RunEvent::GateDecision { decision } if decision.in_flight == [("w-1".to_owned(), Step::Drain)]))
        .expect("the decision names w-1 draining");
    let stopping = events
        .iter()
        .position(|e| {
            matches!(
                e,
                RunEvent::Stopping {
                    reason: StopReason::GateAbort
                }
            )
        })
        .expect("stopping");
    assert!(decided < stopping);
    assert!(guard.tracked().is_empty(), "every node task was collected");
}

#[tokio::test(start_paused = true)]
async fn a_pause_lets_the_node_in_flight_finish_and_holds_the_next_until_resumed() {
    let p = plan(&[("w", 1, 0, &[&["a", "b"]])]);
    let (sink, mut rx) = EventSink::channel();
    let guard = guard(&sink);
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut engine = Engine::new(Fake::failing(vec![]), sink, stop_rx)
        .with_guard(Arc::clone(&guard), "run `rollgate resume`");
    let operator = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await; // a drains
            assert!(guard.pause_by_operator("look at the db"));
            tokio::time::sleep(Duration::from_secs(100)).await;
            assert!(guard.resume());
        })
    };
    let started = tokio::time::Instant::now();
    let summary = engine.run("r1", "t", &p, None, false).await;
    operator.await.unwrap();
    assert_eq!(summary.outcome, Outcome::Succeeded);
    assert_eq!(summary.done, ["a", "b"]);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(101_500) + Duration::from_secs(6),
        "b started when the run was resumed"
    );
    let log = engine.steps.log.lock().unwrap().clone();
    assert!(log.iter().position(|l| l == "a:settle") < log.iter().position(|l| l == "b:cordon"));
    let events = events(&mut rx);
    let paused = events.iter().position(|e| matches!(e, RunEvent::Paused { resume_hint, decision } if resume_hint == "run `rollgate resume`" && decision.signal == "operator"));
    let resumed = events
        .iter()
        .position(|e| matches!(e, RunEvent::Resumed { .. }));
    assert!(paused.is_some() && paused < resumed, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_stays_exempt_from_the_gates_for_the_rest_of_the_run() {
    let (sink, _rx) = EventSink::channel();
    let guard = guard(&sink);
    let p = plan(&[("w", 2, 1, &[&["w-1", "w-2", "w-3"]])]);
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut engine = Engine::new(Fake::failing(vec![("w-1", Step::Command)]), sink, stop_rx)
        .with_guard(Arc::clone(&guard), "");
    // What the monitor would see while the run goes on: which nodes are exempt.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = {
        let (guard, seen) = (Arc::clone(&guard), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                seen.lock().unwrap().push(guard.exempt_nodes());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let summary = engine.run("r1", "t", &p, None, false).await;
    watcher.abort();
    assert_eq!(summary.outcome, Outcome::SucceededWithFailures);
    let seen = seen.lock().unwrap().clone();
    let first = seen.iter().position(|e| e.contains("w-1")).unwrap();
    assert!(
        seen[first..].iter().all(|e| e.contains("w-1")),
        "w-1 is exempt from its start to the end of the run: {seen:?}"
    );
    assert_eq!(
        guard.exempt_nodes(),
        ["w-1".to_string()].into(),
        "done nodes are not exempt any more; the failed one is"
    );
}
