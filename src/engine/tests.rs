//! Engine logic with fake steps and paused time: ordering, concurrency bounds, failure budgets,
//! stop requests, maintenance windows and the deadline. Behaviour against a real cluster is in tests/run_cluster.rs.

use super::*;
use crate::plan::{PhasePlan, Wave};
use std::sync::Mutex;
use std::time::Duration;

/// A hook called as each step runs (node, step).
type OnStep = Box<dyn Fn(&str, Step) + Send + Sync>;

#[derive(Default)]
struct Fake {
    log: Mutex<Vec<String>>,
    in_service_out: Mutex<(usize, usize)>, // (current, max) nodes between cordon and uncordon
    fail: Vec<(&'static str, Step)>,
    panic_at: Option<(&'static str, Step)>,
    step_time: Duration,
    /// Called as each step runs (node, step).
    on_step: Option<OnStep>,
}

impl Fake {
    fn failing(fail: Vec<(&'static str, Step)>) -> Self {
        Self {
            fail,
            step_time: Duration::from_secs(1),
            ..Default::default()
        }
    }
    async fn step(&self, job: &NodeJob, step: Step) -> Result<(), StepError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{}", job.node, step));
        if let Some(f) = &self.on_step {
            f(&job.node, step);
        }
        tokio::time::sleep(self.step_time).await;
        if self.panic_at == Some((job.node.as_str(), step)) {
            panic!("index out of bounds in {step}");
        }
        if self.fail.iter().any(|(n, s)| *n == job.node && *s == step) {
            return Err(StepError::new(format!("{step} failed on {}", job.node)));
        }
        Ok(())
    }
}

impl NodeSteps for Fake {
    async fn cordon(&self, job: &NodeJob) -> Result<(), StepError> {
        {
            let mut c = self.in_service_out.lock().unwrap();
            c.0 += 1;
            c.1 = c.1.max(c.0);
        }
        self.step(job, Step::Cordon).await
    }
    async fn drain(&self, job: &NodeJob) -> Result<DrainReport, StepError> {
        self.step(job, Step::Drain)
            .await
            .map(|_| DrainReport::default())
    }
    async fn run_command(&self, job: &NodeJob) -> Result<(), StepError> {
        self.step(job, Step::Command).await
    }
    async fn wait_ready(&self, job: &NodeJob) -> Result<String, StepError> {
        self.step(job, Step::WaitReady)
            .await
            .map(|_| "v1.36.3".into())
    }
    async fn uncordon(&self, job: &NodeJob) -> Result<(), StepError> {
        let r = self.step(job, Step::Uncordon).await;
        self.in_service_out.lock().unwrap().0 -= 1;
        r
    }
    async fn settle(&self, job: &NodeJob, _: &DrainReport) -> Result<(), StepError> {
        self.step(job, Step::Settle).await
    }
    async fn mark_failed(&self, job: &NodeJob, step: Step, _: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:mark-failed-at-{}", job.node, step));
    }
}

fn plan(phases: &[(&str, usize, u32, &[&[&str]])]) -> Plan {
    Plan {
        phases: phases
            .iter()
            .map(|(name, concurrency, budget, waves)| PhasePlan {
                name: name.to_string(),
                concurrency: *concurrency,
                failure_budget: *budget,
                waves: waves
                    .iter()
                    .map(|w| Wave {
                        label: None,
                        nodes: w.iter().map(|n| n.to_string()).collect(),
                    })
                    .collect(),
            })
            .collect(),
        unselected: vec![],
        warnings: vec![],
    }
}

async fn run(
    fake: Fake,
    plan: &Plan,
    max_failed: Option<u32>,
) -> (RunSummary, Arc<Fake>, Vec<RunEvent>) {
    let (sink, mut rx) = EventSink::channel();
    let (_stop_tx, stop_rx) = watch::channel(StopRequest::None);
    let mut engine = Engine::new(fake, sink, stop_rx);
    let summary = engine.run("r1", "test", plan, max_failed, false).await;
    let steps = Arc::clone(&engine.steps);
    drop(engine);
    let mut events = vec![];
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    (summary, steps, events)
}

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
        .expect("the window closes");
    let opened = events
        .iter()
        .position(|e| matches!(e, RunEvent::WindowOpened))
        .expect("the window reopens");
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
async fn a_failed_node_stays_exempt_from_the_gates_for_the_rest_of_the_run() {
    let playbook = crate::playbook::parse(
        std::path::Path::new("t.toml"),
        "name = \"t\"\n[[phase]]\nname = \"w\"\nnodes = [\"w-1\"]\n[command]\nrun = \"true\"\n",
    )
    .unwrap();
    let (sink, _rx) = EventSink::channel();
    let guard = Guard::new(
        Arc::new(playbook),
        None,
        &[crate::playbook::Signal::Nodes],
        sink.clone(),
        "r1",
    );
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
