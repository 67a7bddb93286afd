//! Engine logic with fake steps and paused time, by theme: [`flow`] (ordering, concurrency
//! bounds, failure budgets), [`stops`] (stop requests, maintenance windows, the deadline),
//! [`journal_and_lock`] (an unwritable journal, a lost lock), [`health`] (the guard). Behaviour
//! against a real cluster is in tests/run_cluster.rs.

mod flow;
mod health;
mod journal_and_lock;
mod stops;

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
    /// Nodes whose drain budgets hold past the timeout (`on-pdb-timeout = "skip"`).
    held: Vec<&'static str>,
    /// Nodes that cannot be given back.
    hand_back_fails: Vec<&'static str>,
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
    async fn drain(&self, job: &NodeJob) -> Result<DrainOutcome, StepError> {
        self.step(job, Step::Drain).await?;
        if self.held.contains(&job.node.as_str()) {
            return Ok(DrainOutcome::HeldByBudget(crate::drain::HeldByBudget {
                timeout: Duration::from_secs(3),
                pdbs: vec!["shop/db".into()],
                held: vec!["shop/db-0".into()],
                pods: vec![("shop/db-0".into(), "blocked".into())],
            }));
        }
        Ok(DrainOutcome::Drained(DrainReport::default()))
    }
    async fn hand_back(&self, job: &NodeJob) -> Result<(), StepError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:hand-back", job.node));
        self.in_service_out.lock().unwrap().0 -= 1;
        if self.hand_back_fails.contains(&job.node.as_str()) {
            return Err(StepError::new("the API server said no"));
        }
        Ok(())
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
        skipped: vec![],
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
