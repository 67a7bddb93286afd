//! One node's walk through [`Step::ALL`] (from where a resumed run picks it up): each step
//! announced in the journal before it runs, the steps the step table marks interruptible
//! stopped at once by a gate abort or a lost lock, the others run to their end first; the
//! probes due after each step; a failure recorded on the node, as an event and with the guard;
//! a drain that budgets held past its timeout (`on-pdb-timeout = "skip"`) gives the node back
//! and skips it.

use super::{DrainOutcome, NodeJob, NodeResult, NodeSteps, NodeStop, StepError};
use crate::drain::{DrainReport, HeldByBudget};
use crate::health::{Guard, HealthState};
use crate::vocab::{EventSink, RunEvent, Step};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Who aborted the run, and why, as a node's failure says it.
fn aborted_by(d: &crate::vocab::GateDecision) -> String {
    if d.signal == crate::health::OPERATOR {
        format!("an operator aborted the run: {}", d.evidence)
    } else {
        format!("gate {} aborted the run: {}", d.signal, d.evidence)
    }
}

fn aborted_error(guard: &Guard, step: Step) -> Option<StepError> {
    let d = guard.aborted()?;
    Some(StepError::new(format!(
        "stopped before {step}: {}",
        aborted_by(&d)
    )))
}

/// Resolves when the guard aborts the run (never if it cannot any more).
async fn abort_signal(guard: Arc<Guard>) -> StepError {
    let mut rx = guard.subscribe();
    loop {
        if let HealthState::Aborted(d) = &*rx.borrow_and_update() {
            return StepError::new(aborted_by(d));
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    std::future::pending().await
}

/// The reason a node must stop, once the run lost the cluster lock.
fn lock_lost_error(lock: &watch::Receiver<Option<String>>) -> Option<StepError> {
    lock.borrow()
        .as_ref()
        .map(|why| StepError::new(format!("lost the cluster lock: {why}")))
}

/// Resolves when the run loses the cluster lock (never if it cannot be lost).
async fn lock_lost_signal(mut lock: watch::Receiver<Option<String>>) -> StepError {
    if lock.wait_for(Option::is_some).await.is_ok()
        && let Some(e) = lock_lost_error(&lock)
    {
        return e;
    }
    std::future::pending().await
}

/// Runs a step that is safe to interrupt (drain, wait for Ready, settle) until the guard
/// aborts or the run loses the cluster lock.
async fn interruptible<T>(
    guard: &Arc<Guard>,
    lock: &watch::Receiver<Option<String>>,
    step: Step,
    fut: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    tokio::select! {
        r = fut => r,
        e = abort_signal(Arc::clone(guard)) => Err(StepError::new(format!("stopped during {step}: {}", e.0))),
        e = lock_lost_signal(lock.clone()) => Err(StepError::new(format!("stopped during {step}: {}", e.0))),
    }
}

/// What a step that went well gives back.
enum Done {
    Nothing,
    /// A detail for the `step-finished` event.
    Detail(String),
    /// What the drain did (settle waits for its pods' workloads).
    Drained(DrainReport),
    /// Budgets held pods past the drain timeout (`on-pdb-timeout = "skip"`).
    HeldByBudget(HeldByBudget),
}

/// Runs one step's side effect.
async fn run_step<S: NodeSteps>(
    steps: &S,
    job: &NodeJob,
    step: Step,
    drained: &DrainReport,
) -> Result<Done, StepError> {
    match step {
        Step::Cordon => steps.cordon(job).await.map(|_| Done::Nothing),
        Step::Drain => steps.drain(job).await.map(|d| match d {
            DrainOutcome::Drained(report) => Done::Drained(report),
            DrainOutcome::HeldByBudget(held) => Done::HeldByBudget(held),
        }),
        Step::Command => steps.run_command(job).await.map(|_| Done::Nothing),
        Step::WaitReady => steps.wait_ready(job).await.map(Done::Detail),
        Step::Uncordon => steps.uncordon(job).await.map(|_| Done::Nothing),
        Step::Settle => steps.settle(job, drained).await.map(|_| Done::Nothing),
    }
}

pub(super) async fn upgrade_node<S: NodeSteps>(
    steps: Arc<S>,
    job: NodeJob,
    sink: EventSink,
    guard: Arc<Guard>,
    lock: watch::Receiver<Option<String>>,
) -> NodeResult {
    let started = Instant::now();
    sink.emit(RunEvent::NodeStarted {
        node: job.node.clone(),
        phase: job.phase.clone(),
    });
    let mut drained = DrainReport::default();
    for step in Step::ALL.into_iter().skip_while(|s| *s != job.from) {
        guard.set_step(&job.node, Some(step));
        // The lock is lost or a gate aborted the run: stop here, before the next step, and
        // record why.
        let stop_here = lock_lost_error(&lock)
            .map(|e| StepError::new(format!("stopped before {step}: {}", e.0)))
            .or_else(|| aborted_error(&guard, step));
        let result = if let Some(err) = stop_here {
            Err(err)
        } else {
            // Nothing is done that the journal does not record first.
            let announced = sink.emit_durable(RunEvent::StepStarted {
                node: job.node.clone(),
                step,
            });
            if announced.is_err() {
                // Stopped where it is (possibly down, cordoned): like a failed node, it must not
                // trip the gates for what the stop left.
                guard.node_failed(&job.node);
                return (job.node, Err(NodeStop::Unrecorded(step)));
            }
            let step_started = Instant::now();
            let work = run_step(steps.as_ref(), &job, step, &drained);
            // Never interrupted otherwise: a half-run config-management command is worse than a
            // finished one.
            let done = if step.traits().interruptible {
                interruptible(&guard, &lock, step, work).await
            } else {
                work.await
            };
            let result = match done {
                Ok(Done::HeldByBudget(held)) => {
                    return skip_node(steps.as_ref(), job, held, &sink, &guard, &lock).await;
                }
                Ok(Done::Nothing) => Ok(None),
                Ok(Done::Detail(detail)) => Ok(Some(detail)),
                Ok(Done::Drained(report)) => {
                    let mut detail = format!(
                        "{} evicted, {} skipped",
                        report.evicted.len(),
                        report.skipped.len()
                    );
                    if report.woken_by_budget > 0 {
                        detail.push_str(&format!(
                            ", {} refused eviction(s) retried as soon as their budget allowed",
                            report.woken_by_budget
                        ));
                    }
                    drained = report;
                    Ok(Some(detail))
                }
                Err(e) => Err(e),
            };
            if let Ok(detail) = &result {
                sink.emit(RunEvent::StepFinished {
                    node: job.node.clone(),
                    step,
                    elapsed_ms: elapsed_ms(step_started),
                    detail: detail.clone(),
                });
                crate::failpoint::after_step(step).await;
                guard.after_step(step, &job.node, &job.phase).await;
            }
            result
        };
        if let Err(err) = result {
            let lost = lock.borrow().is_some();
            fail_node(steps.as_ref(), &job, step, &err, &sink, &guard, lost).await;
            return (job.node, Err(NodeStop::Failed(step, err)));
        }
    }
    guard.set_step(&job.node, None);
    sink.emit(RunEvent::NodeDone {
        node: job.node.clone(),
        elapsed_ms: elapsed_ms(started),
    });
    (job.node, Ok(()))
}

/// Skips a node whose drain budgets held past the timeout (`on-pdb-timeout = "skip"`): gives
/// it back (it was never taken down), then records the skip. The journal's drain span stays
/// open until then, so a crash in between makes a resume drain the node again (never run its
/// command). A node that cannot be given back, or a run that lost the lock (it writes nothing
/// more to the cluster), fails the node instead, as any drain failure does.
async fn skip_node<S: NodeSteps>(
    steps: &S,
    job: NodeJob,
    held: HeldByBudget,
    sink: &EventSink,
    guard: &Guard,
    lock: &watch::Receiver<Option<String>>,
) -> NodeResult {
    let reason = held.to_string();
    let handed_back = match lock_lost_error(lock) {
        Some(e) => Err(StepError::new(format!("{reason}; not given back: {}", e.0))),
        None => steps.hand_back(&job).await.map_err(|e| {
            StepError::new(format!(
                "{reason}; on-pdb-timeout = \"skip\" could not give the node back: {}",
                e.0
            ))
        }),
    };
    if let Err(err) = handed_back {
        let lost = lock.borrow().is_some();
        fail_node(steps, &job, Step::Drain, &err, sink, guard, lost).await;
        return (job.node, Err(NodeStop::Failed(Step::Drain, err)));
    }
    // Back in service: watched like any other node.
    guard.set_step(&job.node, None);
    sink.emit(RunEvent::NodeSkipped {
        node: job.node.clone(),
        reason: reason.clone(),
        pdbs: held.pdbs,
        pods: held.held,
    });
    (job.node, Err(NodeStop::Skipped(reason)))
}

/// Records a node's failure: on the node (unless this run lost the cluster lock: it then writes
/// nothing more to the cluster), as an event, and with the guard (which exempts the node from
/// the gates from now on: the failure budget counts it).
pub(super) async fn fail_node<S: NodeSteps>(
    steps: &S,
    job: &NodeJob,
    step: Step,
    err: &StepError,
    sink: &EventSink,
    guard: &Guard,
    lock_lost: bool,
) {
    if lock_lost {
        sink.emit(RunEvent::Warning {
            node: Some(job.node.clone()),
            message: "the failure is not recorded on the node: this run lost the cluster lock and writes nothing more to the cluster".into(),
        });
    } else {
        steps.mark_failed(job, step, &err.0).await;
    }
    sink.emit(RunEvent::NodeFailed {
        node: job.node.clone(),
        step,
        reason: err.0.clone(),
    });
    if step.traits().leaves_node_cordoned {
        guard.node_failed(&job.node);
    } else {
        // Failed before its cordon or after its uncordon: the node takes pods, so it and
        // its pods are watched like any other.
        guard.set_step(&job.node, None);
    }
}

pub(super) fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}
