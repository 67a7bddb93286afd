//! [`KubeSteps`], the real steps: cordon with a record of who cordoned, drain, remote command,
//! wait for Ready, uncordon, settle; and giving a skipped node back. Its readiness waits are in [`ready`], its settle in
//! [`settle`].

mod ready;
mod settle;

pub use settle::replicas_to_wait_for;

use super::marks::annotation;
use super::node::{boot_id, is_ready, kubelet_version, ssh_address};
use super::outage;
use super::{CordonOwner, StepContext, cordon_owner};
use crate::drain::{self, DrainError, DrainReport};
use crate::engine::{DrainOutcome, NodeJob, NodeSteps, StepError};
use crate::remote;
use crate::vocab::node_marks::*;
use crate::vocab::{RunEvent, Step};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A workload whose pods a drain evicts: (namespace, kind, name).
type Workload = (String, String, String);

/// The real steps.
pub struct KubeSteps {
    ctx: StepContext,
    /// Per node being drained: the Ready replicas its pods' workloads had just before the drain
    /// (settle waits for as many again, not for more than were there).
    ready_before: std::sync::Mutex<BTreeMap<String, BTreeMap<Workload, i32>>>,
    /// Nodes whose command failed in the run being resumed: a new attempt.
    retry: BTreeSet<String>,
    /// The run's health guard, told when a node in flight is down again after its wait-ready.
    guard: Option<Arc<crate::health::Guard>>,
    /// Per node: the Node as its wait-ready last saw it up. Its uncordon patches that very
    /// version (a resourceVersion precondition) instead of reading the node again; a node
    /// changed since is read again.
    seen_up: std::sync::Mutex<BTreeMap<String, Node>>,
}

impl std::ops::Deref for KubeSteps {
    type Target = StepContext;
    fn deref(&self) -> &StepContext {
        &self.ctx
    }
}

impl KubeSteps {
    pub fn new(ctx: StepContext) -> Self {
        Self {
            ctx,
            ready_before: Default::default(),
            retry: Default::default(),
            guard: None,
            seen_up: Default::default(),
        }
    }

    /// The health guard of the run, told when a node in flight is down again after its wait-ready.
    pub fn watched_by(mut self, guard: Arc<crate::health::Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Resuming a run: these nodes' commands failed before, so theirs is a new attempt (see
    /// [`remote::Mode::Restart`]) rather than an attach to the failed one.
    pub fn retrying(mut self, nodes: BTreeSet<String>) -> Self {
        self.retry = nodes;
        self
    }

    /// The Ready replicas of the ReplicaSets and StatefulSets with pods on `node`. Best effort:
    /// a workload that cannot be read is left out (settle then waits for its full spec).
    async fn ready_replicas_on(&self, node: &str) -> BTreeMap<Workload, i32> {
        let Ok(pods) = drain::pods_on_node(&self.clients.api, node, &self.playbook.drain).await
        else {
            return BTreeMap::new();
        };
        let workloads: BTreeSet<Workload> = pods
            .iter()
            .filter_map(|p| {
                let (kind, name) = drain::controller_of(p)?;
                Some((p.metadata.namespace.clone()?, kind, name))
            })
            .collect();
        let mut out = BTreeMap::new();
        for (ns, kind, name) in workloads {
            let client = self.clients.api.clone();
            let ready = match kind.as_str() {
                "ReplicaSet" => Api::<ReplicaSet>::namespaced(client, &ns)
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|rs| rs.status)
                    .map(|s| s.ready_replicas.unwrap_or(0)),
                "StatefulSet" => Api::<StatefulSet>::namespaced(client, &ns)
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|ss| ss.status)
                    .map(|s| s.ready_replicas.unwrap_or(0)),
                _ => None,
            };
            if let Some(ready) = ready {
                out.insert((ns, kind, name), ready);
            }
        }
        out
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.clients.api.clone())
    }

    /// Patches the node as [`FIELD_MANAGER`], riding out a short API outage ([`outage`]).
    async fn patch(&self, node: &str, patch: serde_json::Value) -> Result<Node, StepError> {
        self.try_patch(node, patch)
            .await
            .map_err(|e| StepError::new(format!("cannot update node {node}: {e}")))
    }

    /// [`Self::patch`], with the API's error as it came (a precondition's 409 included).
    async fn try_patch(&self, node: &str, patch: serde_json::Value) -> Result<Node, kube::Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let (nodes, patch) = (self.nodes(), Patch::Merge(&patch));
        outage::ride_out(
            outage::RIDE_OUT,
            |e| self.say_riding_out(node, "update", e),
            || nodes.patch(node, &params, &patch),
        )
        .await
    }

    async fn get(&self, node: &str) -> Result<Node, StepError> {
        let nodes = self.nodes();
        outage::ride_out(
            outage::RIDE_OUT,
            |e| self.say_riding_out(node, "read", e),
            || nodes.get(node),
        )
        .await
        .map_err(|e| StepError::new(format!("cannot read node {node}: {e}")))
    }

    /// Says once per request that the API did not answer and the step waits for it.
    fn say_riding_out(&self, node: &str, what: &str, error: &kube::Error) {
        self.sink.emit(RunEvent::Warning {
            node: Some(node.to_owned()),
            message: format!(
                "cannot {what} node {node} now ({error}); retrying for up to {}s before failing the node",
                outage::RIDE_OUT.as_secs()
            ),
        });
    }

    /// Records the step on the node; returns the node as updated.
    async fn mark_step(&self, node: &str, step: Step) -> Result<Node, StepError> {
        self.patch(
            node,
            json!({"metadata": {"annotations": {STEP: step.name()}}}),
        )
        .await
    }

    /// Node facts passed to the remote command as environment variables.
    fn command_env(&self, job: &NodeJob, address: &str) -> BTreeMap<String, String> {
        let mut env = self.playbook.command.env.clone();
        env.insert("ROLLGATE_NODE".into(), job.node.clone());
        env.insert("ROLLGATE_NODE_ADDRESS".into(), address.into());
        env.insert("ROLLGATE_PHASE".into(), job.phase.clone());
        env.insert("ROLLGATE_PLAYBOOK".into(), self.playbook.name.clone());
        env.insert("ROLLGATE_RUN_ID".into(), self.run_id.clone());
        if let Some(v) = &self.playbook.target_kubelet_version {
            env.insert("ROLLGATE_TARGET_KUBELET_VERSION".into(), v.clone());
        }
        env
    }
}

impl NodeSteps for KubeSteps {
    async fn cordon(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = self.get(&job.node).await?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(CORDONED_BY.into(), json!(self.run_id));
        annotations.insert(STEP.into(), json!(Step::Cordon.name()));
        annotations.insert(REASON.into(), serde_json::Value::Null);
        annotations.insert(FAILED_STEP.into(), serde_json::Value::Null);
        annotations.insert(BOOT_ID.into(), serde_json::Value::Null);
        let patch = match cordon_owner(&node) {
            // Cordoning makes the cordon ours (a `precordoned` left by an older run is stale).
            CordonOwner::Nobody => {
                annotations.insert(PRECORDONED.into(), serde_json::Value::Null);
                json!({"spec": {"unschedulable": true}, "metadata": {"annotations": annotations}})
            }
            // Another run stopped in the middle of its command (it crashed, or lost the lock
            // while the command ran): that command may still be running on the node. Never
            // start a second one beside it.
            CordonOwner::Rollgate(run)
                if run != self.run_id && annotation(&node, STEP) == Some(Step::Command.name()) =>
            {
                return Err(StepError::new(format!(
                    "node is in the middle of rollgate run {run}'s remote command (annotation {STEP}=command): \
                     that command may still be running on the node; finish that run with `rollgate resume {run}` \
                     (it attaches to the command), then start this one again"
                )));
            }
            CordonOwner::Rollgate(run) => {
                if run != self.run_id {
                    self.sink.emit(RunEvent::Warning {
                        node: Some(job.node.clone()),
                        message: format!(
                            "node was left cordoned by rollgate run {run}; taking it over"
                        ),
                    });
                }
                json!({"metadata": {"annotations": annotations}})
            }
            // Someone else's cordon: left as it is (not set again, so it stays theirs).
            CordonOwner::Other(who) => {
                if annotation(&node, PRECORDONED).is_none() {
                    self.sink.emit(RunEvent::Warning {
                        node: Some(job.node.clone()),
                        message: format!(
                            "node was cordoned before this run (by {who}): it stays cordoned after its upgrade"
                        ),
                    });
                }
                annotations.insert(PRECORDONED.into(), json!("true"));
                json!({"metadata": {"annotations": annotations}})
            }
        };
        self.patch(&job.node, patch).await?;
        Ok(())
    }

    async fn drain(&self, job: &NodeJob) -> Result<DrainOutcome, StepError> {
        // The step's mark and the read of its workloads' Ready replicas (reads only) at once.
        let (marked, before) = tokio::join!(
            self.mark_step(&job.node, Step::Drain),
            self.ready_replicas_on(&job.node)
        );
        marked?;
        self.ready_before
            .lock()
            .expect("lock")
            .insert(job.node.clone(), before);
        match drain::drain(
            &self.clients.drain,
            &job.node,
            &self.playbook.drain,
            &self.sink,
        )
        .await
        {
            Ok(report) => Ok(DrainOutcome::Drained(report)),
            Err(DrainError::HeldByBudget(held)) => Ok(DrainOutcome::HeldByBudget(held)),
            Err(e) => Err(StepError::new(e.to_string())),
        }
    }

    async fn run_command(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = self.mark_step(&job.node, Step::Command).await?;
        // The boot ID before the command (kept when a resumed run comes back to this step), so
        // wait-ready can tell a reboot.
        if annotation(&node, BOOT_ID).is_none() || self.retry.contains(&job.node) {
            self.patch(
                &job.node,
                json!({"metadata": {"annotations": {BOOT_ID: boot_id(&node)}}}),
            )
            .await?;
        }
        let address = ssh_address(&node, &self.config.ssh.address).map_err(StepError::new)?;
        let env = self.command_env(job, &address);
        let cmd = &self.playbook.command;
        let record = remote::record_dir(&self.run_id, &job.node);
        let inv = remote::RemoteInvocation::for_command(cmd, &address, &env, &record);
        let sink = self.sink.clone();
        let node_name = job.node.clone();
        // A node whose command failed before (in the run resumed): a new attempt.
        let mode = if self.retry.contains(&job.node) {
            remote::Mode::Restart
        } else {
            remote::Mode::Start
        };
        let ended = remote::run(&self.config.ssh, &inv, mode, move |event| match event {
            remote::RemoteEvent::Output(stream, line) => sink.emit(RunEvent::CommandOutput {
                node: node_name.clone(),
                stream,
                line,
            }),
            remote::RemoteEvent::Note(message) => sink.emit(RunEvent::Warning {
                node: Some(node_name.clone()),
                message,
            }),
        })
        .await
        .map_err(|e| StepError::new(e.to_string()))?;
        match ended {
            remote::Ended::Exited => Ok(()),
            remote::Ended::Rebooted if self.playbook.ready.reboot => Ok(()),
            remote::Ended::Rebooted => Err(StepError::new(format!(
                "node {} rebooted while its command ran, before the command recorded an exit status \
                 (output in {record}/output on the node); if the command reboots the node, set \
                 `reboot = true` under [ready] in the playbook and start a new run (resume keeps \
                 the playbook the run started with)",
                job.node
            ))),
        }
    }

    async fn wait_ready(&self, job: &NodeJob) -> Result<String, StepError> {
        let node = self.mark_step(&job.node, Step::WaitReady).await?;
        let before = self
            .playbook
            .ready
            .reboot
            .then(|| annotation(&node, BOOT_ID).unwrap_or_default().to_owned());
        let deadline = tokio::time::Instant::now() + self.playbook.ready.timeout;
        let node = self
            .wait_up(job, before.as_deref(), deadline, "after its command")
            .await?;
        self.seen_up
            .lock()
            .expect("lock")
            .insert(job.node.clone(), node.clone());
        Ok(format!(
            "Ready, kubelet {}{}",
            kubelet_version(&node),
            if before.is_some() { ", rebooted" } else { "" }
        ))
    }

    async fn uncordon(&self, job: &NodeJob) -> Result<(), StepError> {
        let last_run = Some(format!("{} {}", self.run_id, now()));
        // The node as its wait-ready saw it up, moments ago: given back on that very version,
        // which saves reading it again. Changed since (NotReady, cordoned by someone, a
        // heartbeat): the patch is refused and the node read again.
        let seen = self.seen_up.lock().expect("lock").remove(&job.node);
        if let Some(node) = seen.filter(is_ready) {
            self.held_down(&job.node, false, Step::Uncordon);
            if self.give_back(job, &node, last_run.clone(), true).await? {
                return Ok(());
            }
        }
        let node = self
            .ensure_up(job, Step::Uncordon, "before uncordoning it")
            .await?;
        self.give_back(job, &node, last_run, false).await?;
        Ok(())
    }

    async fn hand_back(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = self.get(&job.node).await?;
        self.give_back(job, &node, None, false).await?;
        Ok(())
    }

    async fn settle(&self, job: &NodeJob, drained: &DrainReport) -> Result<(), StepError> {
        // The node is not done while it is down: if it turns NotReady or reboots during the
        // settle or soak, wait for it (within the ready timeout) and settle again.
        for _ in 0..=MAX_SETTLE_RESTARTS {
            let node = self.ensure_up(job, Step::Settle, "before settling").await?;
            let boot = boot_id(&node);
            tokio::select! {
                settled = self.settle_workloads(job, drained) => return settled,
                () = self.went_down(&job.node, &boot) => {
                    self.held_down(&job.node, true, Step::Settle);
                    self.sink.emit(RunEvent::Warning {
                        node: Some(job.node.clone()),
                        message: "node turned NotReady or rebooted during settle: not done; waiting for it to be Ready again, then settling again".into(),
                    });
                }
            }
        }
        Err(StepError::new(format!(
            "node {} went down during settle {} times in a row; check it",
            job.node,
            MAX_SETTLE_RESTARTS + 1
        )))
    }

    async fn mark_failed(&self, job: &NodeJob, step: Step, reason: &str) {
        self.record_failure(job, step, reason).await
    }
}

/// How often a node that keeps going down during settle is waited for before it fails.
const MAX_SETTLE_RESTARTS: usize = 3;

impl KubeSteps {
    /// Uncordons the node (unless it was cordoned before this run) and clears rollgate's marks;
    /// `last_run` (`RUN_ID TIME`) records a node this run finished. With `if_unchanged`, only
    /// if the node is still at `node`'s resourceVersion: `Ok(false)` when it changed since.
    async fn give_back(
        &self,
        job: &NodeJob,
        node: &Node,
        last_run: Option<String>,
        if_unchanged: bool,
    ) -> Result<bool, StepError> {
        let precordoned = annotation(node, PRECORDONED).is_some();
        let mut clear = json!({CORDONED_BY: null, STEP: null, REASON: null, FAILED_STEP: null, PRECORDONED: null, BOOT_ID: null});
        if let Some(last_run) = last_run {
            clear[LAST_RUN] = json!(last_run);
        }
        let owner = cordon_owner(node);
        let left_cordoned = precordoned || matches!(owner, CordonOwner::Other(_));
        let mut patch = if left_cordoned {
            json!({"metadata": {"annotations": clear}})
        } else {
            json!({"spec": {"unschedulable": null}, "metadata": {"annotations": clear}})
        };
        if if_unchanged {
            patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
        }
        match self.try_patch(&job.node, patch).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if if_unchanged && s.code == 409 => return Ok(false),
            Err(e) => {
                return Err(StepError::new(format!(
                    "cannot update node {}: {e}",
                    job.node
                )));
            }
        }
        if left_cordoned {
            let who = match owner {
                CordonOwner::Other(who) => format!(" (by {who})"),
                _ => String::new(),
            };
            self.sink.emit(RunEvent::Warning {
                node: Some(job.node.clone()),
                message: format!("left cordoned: it was cordoned before this run{who}"),
            });
        }
        Ok(true)
    }

    async fn record_failure(&self, job: &NodeJob, step: Step, reason: &str) {
        // Annotation values are bounded; keep the message readable.
        let reason: String = reason.chars().take(1000).collect();
        let patch = json!({"metadata": {"annotations": {STEP: STEP_FAILED, FAILED_STEP: step.name(), REASON: reason}}});
        if let Err(e) = self.patch(&job.node, patch).await {
            self.sink.emit(RunEvent::Warning {
                node: Some(job.node.clone()),
                message: format!("could not record the failure on the node: {e}"),
            });
        }
    }
}
