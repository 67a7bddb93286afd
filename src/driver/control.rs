//! Pause, resume and abort a live run from any machine with cluster access.
//!
//! A request is written on the run's object in the cluster, its ConfigMap
//! (`rollgate-run-RUN_ID`, see [`crate::journal::configmap_name`]), as the annotation
//! [`REQUEST`]: what (pause, resume, abort), a request id, who (`user@host`), when and why. The
//! live run watches that object (one watch, by name), obeys within a second and answers in
//! [`ANSWER`] with the same id, so the requester can say it worked or time out clearly. What
//! the run does is recorded like any operator decision: a pause or abort is a gate decision by
//! `operator` whose evidence names who and why; a resume is a `resumed` event naming who.
//!
//! Whether a run is alive is told by its cluster lock (the Lease names the run as holder and
//! was renewed within its duration), not by a process on this machine. Both sides write the
//! annotations as field manager [`FIELD_MANAGER`]; the run's cluster copy (server-side apply
//! as `rollgate`) leaves them alone.

use super::operator::ask;
use super::state_dir::RunDir;
use crate::health::{Guard, HealthState};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The annotation a requester writes.
pub const REQUEST: &str = "rollgate.dev/control-request";
/// The annotation the live run answers in.
pub const ANSWER: &str = "rollgate.dev/control-answer";
/// Whose writes the control annotations are.
pub const FIELD_MANAGER: &str = "rollgate-control";
/// How long `rollgate pause`, `resume` and `abort` wait for the live run's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

pub use crate::vocab::ControlAction as Action;

/// What someone asks of a live run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per request: the answer names it.
    pub id: String,
    pub action: Action,
    /// `user@host`, or a Slack user.
    pub by: String,
    /// RFC 3339, the requester's clock.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Request {
    pub fn new(action: Action, by: String, reason: Option<String>) -> Self {
        let now = jiff::Timestamp::now();
        Self {
            id: format!(
                "{}-{}-{}",
                now.as_nanosecond(),
                std::process::id(),
                by.len()
            ),
            action,
            by,
            at: now.to_string(),
            reason,
        }
    }

    /// What the journal, the report and Slack say of it: `why (paused by ops@bastion)`.
    pub fn evidence(&self) -> String {
        match &self.reason {
            Some(reason) => format!("{reason} ({} by {})", self.action.past(), self.by),
            None => format!("{} by {}", self.action.past(), self.by),
        }
    }
}

/// The live run's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The request's id.
    pub id: String,
    /// Whether the run did what was asked (false: it was so already, or cannot).
    pub done: bool,
    /// In words: `paused`, `already paused`, `not paused`, `aborting`, ...
    pub said: String,
}

/// What the run must do for `request` in `state`, and what it answers. Pure.
pub fn decide(request: &Request, state: &HealthState) -> (Option<Action>, Answer) {
    let answer = |done: bool, said: &str| Answer {
        id: request.id.clone(),
        done,
        said: said.into(),
    };
    match (request.action, state) {
        (_, HealthState::Aborted(_)) => (None, answer(false, "the run is already aborting")),
        (Action::Pause, HealthState::Paused(_)) => (None, answer(false, "already paused")),
        (Action::Pause, HealthState::Running) => (
            Some(Action::Pause),
            answer(true, "paused: no new node starts, nodes in flight finish"),
        ),
        (Action::Resume, HealthState::Running) => (None, answer(false, "not paused")),
        (Action::Resume, HealthState::Paused(_)) => (Some(Action::Resume), answer(true, "resumed")),
        (Action::Abort, _) => (
            Some(Action::Abort),
            answer(
                true,
                "aborting: no new node starts, nodes in flight stop at their next safe point and stay cordoned",
            ),
        ),
    }
}

/// Where the run's object is: `namespace` is the config's `state.namespace`.
fn configmaps(client: &kube::Client, namespace: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), namespace)
}

fn annotation<T: for<'de> Deserialize<'de>>(cm: &ConfigMap, key: &str) -> Option<T> {
    let text = cm.metadata.annotations.as_ref()?.get(key)?;
    serde_json::from_str(text).ok()
}

async fn write_annotation(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
    key: &str,
    value: &impl Serialize,
) -> Result<(), kube::Error> {
    let text = serde_json::to_string(value).unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": {key: text}}});
    configmaps(client, namespace)
        .patch(
            &crate::journal::configmap_name(run_id),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

/// Watches the run's object for requests until aborted, and (at a terminal) offers to resume
/// at a prompt while paused. The returned task must be aborted when the run ends (it keeps the
/// guard, and so the event sink, alive).
pub fn watch_requests(
    guard: Arc<Guard>,
    client: kube::Client,
    namespace: String,
    run_id: String,
    run_dir: RunDir,
    interactive: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(mark_paused(Arc::downgrade(&guard), run_dir, interactive));
    tokio::spawn(async move {
        use kube::runtime::{WatchStreamExt, watcher};
        let name = crate::journal::configmap_name(&run_id);
        let objects = watcher(
            configmaps(&client, &namespace),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .applied_objects();
        futures::pin_mut!(objects);
        // A request already there when the run (or its resume) starts was meant for the
        // process before it: it is answered as such, not obeyed.
        let mut first = true;
        let mut handled: Option<String> = None;
        while let Some(next) = objects.next().await {
            let Ok(cm) = next else { continue };
            let Some(request) = annotation::<Request>(&cm, REQUEST) else {
                first = false;
                continue;
            };
            let answered = annotation::<Answer>(&cm, ANSWER).is_some_and(|a| a.id == request.id);
            if answered || handled.as_deref() == Some(request.id.as_str()) {
                first = false;
                continue;
            }
            handled = Some(request.id.clone());
            let answer = if std::mem::take(&mut first) {
                Answer {
                    id: request.id.clone(),
                    done: false,
                    said: "made before this run process started; ask again".into(),
                }
            } else {
                let (act, answer) = decide(&request, &guard.state());
                match act {
                    Some(Action::Pause) => {
                        guard.pause_by_operator(&request.evidence());
                    }
                    Some(Action::Resume) => {
                        guard.resume_by(Some(request.by.clone()));
                    }
                    Some(Action::Abort) => {
                        guard.abort_by_operator(&request.evidence());
                    }
                    None => {}
                }
                answer
            };
            // Best effort: a requester that sees no answer says so; the run goes on.
            let _ = write_annotation(&client, &namespace, &run_id, ANSWER, &answer).await;
        }
    })
}

/// Keeps the run directory's `paused` marker while the run is paused and, at a terminal,
/// asks whether to resume it. Ends with the guard.
async fn mark_paused(guard: std::sync::Weak<Guard>, run_dir: RunDir, interactive: bool) {
    let Some(mut rx) = guard.upgrade().map(|g| g.subscribe()) else {
        return;
    };
    loop {
        if matches!(&*rx.borrow_and_update(), HealthState::Paused(_)) {
            run_dir.set_paused(true);
            if interactive {
                // Weak: a prompt still waiting when the run ends must not keep the run alive.
                let g = guard.clone();
                tokio::task::spawn_blocking(move || {
                    if ask("run paused; resume now?")
                        && let Some(g) = g.upgrade()
                    {
                        g.resume();
                    }
                });
            }
            while matches!(&*rx.borrow(), HealthState::Paused(_)) {
                if rx.changed().await.is_err() {
                    run_dir.set_paused(false);
                    return;
                }
            }
            run_dir.set_paused(false);
        } else if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Why a request could not be made or was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("run {0} has no object in the cluster (ConfigMap {2}/{1})")]
    NoSuchRun(String, String, String),
    #[error("run {0} is not running (no live holder of its cluster lock {1})")]
    NotLive(String, String),
    #[error("cannot reach the cluster: {0}")]
    Api(#[from] kube::Error),
    #[error("run {0} did not answer within {1} s (is it finishing, or cut off from the API?)")]
    NoAnswer(String, u64),
}

/// Whether run `run_id` is alive somewhere: its object exists and it holds its cluster lock.
pub async fn is_live(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
) -> Result<bool, ControlError> {
    let name = crate::journal::configmap_name(run_id);
    let Some(cm) = configmaps(client, namespace).get_opt(&name).await? else {
        return Err(ControlError::NoSuchRun(
            run_id.into(),
            name,
            namespace.into(),
        ));
    };
    let lock = lock_of(&cm);
    Ok(crate::lock::held_by_run(client, namespace, &lock, run_id).await?)
}

fn lock_of(cm: &ConfigMap) -> String {
    cm.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::journal::LOCK_LABEL).cloned())
        .unwrap_or_else(|| "default".into())
}

/// Asks live run `run_id` for `request` and waits (at most [`ANSWER_WITHIN`]) for its answer.
pub async fn send(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
    request: &Request,
) -> Result<Answer, ControlError> {
    if !is_live(client, namespace, run_id).await? {
        let name = crate::journal::configmap_name(run_id);
        let cm = configmaps(client, namespace).get(&name).await?;
        return Err(ControlError::NotLive(run_id.into(), lock_of(&cm)));
    }
    request_and_await(client, namespace, run_id, request).await
}

/// Writes `request` on run `run_id`'s object and awaits its answer (the run is known to be live).
async fn request_and_await(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
    request: &Request,
) -> Result<Answer, ControlError> {
    write_annotation(client, namespace, run_id, REQUEST, request).await?;
    // The answer, by watch on the run's object (not by polling it).
    let answer_to = |cm: Option<&ConfigMap>| {
        cm.and_then(|cm| annotation::<Answer>(cm, ANSWER))
            .filter(|a| a.id == request.id)
    };
    let name = crate::journal::configmap_name(run_id);
    let answered = kube::runtime::wait::await_condition(
        configmaps(client, namespace),
        &name,
        |cm: Option<&ConfigMap>| answer_to(cm).is_some(),
    );
    match tokio::time::timeout(ANSWER_WITHIN, answered).await {
        Ok(Ok(cm)) => {
            if let Some(answer) = answer_to(cm.as_ref()) {
                return Ok(answer);
            }
        }
        // The watch itself was refused or broke: say so, not "no answer".
        Ok(Err(e)) => return Err(ControlError::Api(kube::Error::Service(Box::new(e)))),
        Err(_) => {}
    }
    Err(ControlError::NoAnswer(
        run_id.into(),
        ANSWER_WITHIN.as_secs(),
    ))
}

/// The Slack buttons' way to the run: a click is the same request `rollgate pause` makes,
/// written on the run's object and answered by [`watch_requests`], so it is obeyed, recorded
/// and acknowledged on one path. Refusals and trouble go to the run's events.
pub struct ClusterController {
    pub client: kube::Client,
    pub namespace: String,
    pub run_id: String,
    pub sink: crate::vocab::EventSink,
}

impl crate::notify::slack_control::Controller for ClusterController {
    fn request(
        &self,
        action: Action,
        by: String,
    ) -> futures::future::BoxFuture<'static, Result<(bool, String), String>> {
        let (client, namespace, run_id) = (
            self.client.clone(),
            self.namespace.clone(),
            self.run_id.clone(),
        );
        Box::pin(async move {
            // The run asking itself: it is live (no lock and object reads first).
            let request = Request::new(action, by, None);
            request_and_await(&client, &namespace, &run_id, &request)
                .await
                .map(|a| (a.done, a.said))
                .map_err(|e| e.to_string())
        })
    }

    fn refused(&self, action: Action, by: String, reason: String) {
        self.sink
            .emit(crate::vocab::RunEvent::ControlRefused { action, by, reason });
    }

    fn warn(&self, message: String) {
        self.sink.emit(crate::vocab::RunEvent::Warning {
            node: None,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Decision, GateDecision};

    fn paused() -> HealthState {
        HealthState::Paused(GateDecision {
            decision: Decision::Pause,
            signal: "pods".into(),
            evidence: String::new(),
            in_flight: vec![],
        })
    }

    fn aborted() -> HealthState {
        HealthState::Aborted(GateDecision {
            decision: Decision::Abort,
            signal: "pods".into(),
            evidence: String::new(),
            in_flight: vec![],
        })
    }

    #[test]
    fn each_request_in_each_state() {
        use Action::*;
        let cases = [
            (Pause, HealthState::Running, Some(Pause), true),
            (Pause, paused(), None, false),
            (Pause, aborted(), None, false),
            (Resume, HealthState::Running, None, false),
            (Resume, paused(), Some(Resume), true),
            (Resume, aborted(), None, false),
            (Abort, HealthState::Running, Some(Abort), true),
            (Abort, paused(), Some(Abort), true),
            (Abort, aborted(), None, false),
        ];
        for (action, state, act, done) in cases {
            let request = Request::new(action, "ops@bastion".into(), None);
            let (got, answer) = decide(&request, &state);
            assert_eq!(got, act, "{action:?} in {state:?}");
            assert_eq!(answer.done, done, "{action:?} in {state:?}");
            assert_eq!(answer.id, request.id);
        }
    }

    #[test]
    fn the_evidence_names_who_and_why() {
        let r = Request::new(
            Action::Pause,
            "ops@bastion".into(),
            Some("queue check".into()),
        );
        assert_eq!(r.evidence(), "queue check (paused by ops@bastion)");
        let r = Request::new(Action::Abort, "U123 (Slack)".into(), None);
        assert_eq!(r.evidence(), "aborted by U123 (Slack)");
    }

    #[test]
    fn requests_and_answers_read_back_from_their_annotation_text() {
        let r = Request::new(Action::Resume, "a@b".into(), None);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"action\":\"resume\""), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let other = Request::new(Action::Resume, "a@b".into(), None);
        assert_ne!(other.id, r.id, "ids differ between requests");
    }
}
