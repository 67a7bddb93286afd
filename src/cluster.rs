//! The Kubernetes side of a node's upgrade, and the real [`NodeSteps`] implementations:
//! [`KubeSteps`] (cordon with a record of who cordoned, drain, remote command, wait for Ready and
//! the target kubelet version, uncordon, settle) and [`DryRunSteps`] (reads only; reports each
//! write and command it would make).
//!
//! rollgate records its work on the Node as annotations under `rollgate.dev/`:
//! `cordoned-by` (run id), `precordoned` (the node was cordoned by someone else before: it
//! stays cordoned), `step` (current step), `reason` and `failed-step` (why a node failed: it
//! stays cordoned), `boot-id` (the boot ID when the command started), `last-run` (after
//! success). Its node patches carry the field manager [`FIELD_MANAGER`], so the node's
//! `managedFields` tell whose cordon `spec.unschedulable` is: rollgate uncordons a node only
//! when this run (or the run it resumes) set that cordon.
//!
//! Readiness around reboots: wait-ready wants the node Ready (and the target kubelet, and with
//! `[ready] reboot = true` a new boot ID) and staying so on one boot for `[ready] stable-for`;
//! uncordon never uncordons a NotReady node (it waits for it); a node that turns NotReady or
//! reboots during settle is waited for and settled again. Each wait is bounded by the ready
//! timeout and said on the node's events.

use crate::config::{AddressSource, Config};
use crate::drain::{self, DrainReport};
use crate::engine::{NodeJob, NodeSteps, StepError};
use crate::plan::NodeFacts;
use crate::playbook::Playbook;
use crate::remote;
use crate::vocab::{EventSink, RunEvent, Step};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

pub use crate::vocab::node_marks::*;

/// The field manager that last set the node's `spec.unschedulable` (None when nobody owns it).
pub fn unschedulable_set_by(node: &Node) -> Option<&str> {
    node.metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:unschedulable").is_some())
        })
        .and_then(|m| m.manager.as_deref())
}

/// Whose cordon a node carries, as [`KubeSteps::cordon`] and [`KubeSteps::uncordon`] decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonOwner {
    /// Not cordoned.
    Nobody,
    /// rollgate's cordon, still as the run named set it (this run, the run it resumes, or an
    /// earlier run that left the node cordoned): rollgate uncordons it when the node is done.
    Rollgate(String),
    /// Someone else's cordon (the field manager that set it, e.g. `kubectl-cordon`): the node
    /// stays cordoned after its upgrade.
    Other(String),
}

/// Decides whose cordon the node carries: rollgate's only when `cordoned-by` names a run *and*
/// rollgate's field manager set `spec.unschedulable`. A cordon set by hand after rollgate's was
/// removed keeps the stale annotation but not the field manager, so it is someone else's.
pub fn cordon_owner(node: &Node) -> CordonOwner {
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !unschedulable {
        return CordonOwner::Nobody;
    }
    match (annotation(node, CORDONED_BY), unschedulable_set_by(node)) {
        (Some(run), Some(FIELD_MANAGER)) => CordonOwner::Rollgate(run.to_owned()),
        (_, Some(manager)) => CordonOwner::Other(manager.to_owned()),
        (_, None) => CordonOwner::Other("an unknown field manager".into()),
    }
}

/// Two clients on one connection config: `api` with kube's default retries, `drain` without
/// them (the drain loop owns its 429 handling, see [`crate::drain`]).
#[derive(Clone)]
pub struct Clients {
    pub api: kube::Client,
    pub drain: kube::Client,
    /// Which context and server, for messages.
    pub describe: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use the kubeconfig{}: {source}", context.as_ref().map(|c| format!(" context {c:?}")).unwrap_or_default())]
    Config {
        context: Option<String>,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the cluster at {server} does not answer: {source}")]
    Unreachable { server: String, source: kube::Error },
}

/// Connects as kubectl would: the config's kubeconfig (flag > KUBECONFIG > file > ~/.kube/config)
/// and context (flag > file > current context). Checks the API answers.
pub async fn connect(config: &Config) -> Result<Clients, ConnectError> {
    let kubeconfig = match &config.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?,
        None => Kubeconfig::read().map_err(|source| ConnectError::Kubeconfig {
            path: "(KUBECONFIG or ~/.kube/config)".into(),
            source,
        })?,
    };
    let options = KubeConfigOptions {
        context: config.context.clone(),
        ..Default::default()
    };
    let mut kc = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| ConnectError::Config {
            context: config.context.clone(),
            source,
        })?;
    kc.read_timeout = Some(Duration::from_secs(300));
    let server = kc.cluster_url.to_string();
    let api = kube::Client::try_from(kc.clone()).map_err(ConnectError::Client)?;
    let mut no_retry = kc;
    no_retry.default_retry = false;
    let drain = kube::Client::try_from(no_retry).map_err(ConnectError::Client)?;
    api.apiserver_version()
        .await
        .map_err(|source| ConnectError::Unreachable {
            server: server.clone(),
            source,
        })?;
    Ok(Clients {
        api,
        drain,
        describe: format!(
            "{}{}",
            server,
            config
                .context
                .as_ref()
                .map(|c| format!(" (context {c})"))
                .unwrap_or_default()
        ),
    })
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `status.nodeInfo.bootID`: changes when the node reboots.
pub fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

pub fn kubelet_version(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone())
        .unwrap_or_default()
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

pub fn facts(node: &Node) -> NodeFacts {
    NodeFacts {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        ready: is_ready(node),
        unschedulable: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        kubelet_version: kubelet_version(node),
        cordoned_by_rollgate: annotation(node, CORDONED_BY).map(str::to_owned),
    }
}

pub async fn list_nodes(client: &kube::Client) -> Result<Vec<Node>, kube::Error> {
    Ok(Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

/// What a node's annotations record of rollgate's work (see [`crate::journal::reconcile_with_nodes`]).
pub fn node_record(node: &Node) -> crate::journal::NodeRecord {
    let get = |key: &str| annotation(node, key).map(str::to_owned);
    crate::journal::NodeRecord {
        node: node.metadata.name.clone().unwrap_or_default(),
        cordoned_by: get(CORDONED_BY),
        step: get(STEP),
        failed_step: get(FAILED_STEP),
        last_run: get(LAST_RUN),
    }
}

/// The address SSH connects to for this node.
pub fn ssh_address(node: &Node, source: &AddressSource) -> Option<String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let address_of = |kind: &str| {
        node.status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == kind)
            .map(|a| a.address.clone())
    };
    match source {
        AddressSource::InternalIp => address_of("InternalIP"),
        AddressSource::Hostname => address_of("Hostname").or(Some(name)),
        AddressSource::Template(t) => Some(t.replace("{name}", &name)),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What both kinds of steps work with.
pub struct StepContext {
    pub clients: Clients,
    pub playbook: Arc<Playbook>,
    pub config: Arc<Config>,
    pub run_id: String,
    pub sink: EventSink,
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
        }
    }

    /// The health guard of the run (see [`Self::held_down`]).
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

    async fn patch(&self, node: &str, patch: serde_json::Value) -> Result<Node, StepError> {
        self.nodes()
            .patch(
                node,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| StepError::new(format!("cannot update node {node}: {e}")))
    }

    async fn get(&self, node: &str) -> Result<Node, StepError> {
        self.nodes()
            .get(node)
            .await
            .map_err(|e| StepError::new(format!("cannot read node {node}: {e}")))
    }

    /// Records the step on the node; returns the node as updated.
    async fn mark_step(&self, node: &str, step: Step) -> Result<Node, StepError> {
        self.patch(
            node,
            json!({"metadata": {"annotations": {STEP: step.name()}}}),
        )
        .await
    }

    /// Whether the node is up: Ready, reporting the target kubelet version, and (when
    /// `rebooted_from` is given) with a boot ID other than that one.
    fn is_up(&self, node: &Node, rebooted_from: Option<&str>) -> bool {
        is_ready(node)
            && self
                .playbook
                .target_kubelet_version
                .as_ref()
                .is_none_or(|v| kubelet_version(node) == *v)
            && rebooted_from.is_none_or(|b| boot_id(node) != b)
    }

    /// Waits (by watch) until the node is up ([`Self::is_up`]) and stays up, on the same boot,
    /// for `[ready] stable-for`: a node that turns NotReady or reboots within it (a command
    /// that scheduled a reboot and returned) is waited for again, and the operator is told.
    /// Fails at `deadline` naming what is missing.
    async fn wait_up(
        &self,
        job: &NodeJob,
        rebooted_from: Option<&str>,
        deadline: tokio::time::Instant,
        when: &str,
    ) -> Result<Node, StepError> {
        let timeout = self.playbook.ready.timeout;
        let stable = self.playbook.ready.stable_for;
        loop {
            let up = |n: Option<&Node>| n.is_some_and(|n| self.is_up(n, rebooted_from));
            let node = match tokio::time::timeout_at(
                deadline,
                await_condition(self.nodes(), &job.node, up),
            )
            .await
            {
                Ok(Ok(Some(node))) => node,
                Ok(Ok(None)) => {
                    return Err(StepError::new(format!(
                        "node {} was deleted while waiting for it to be Ready",
                        job.node
                    )));
                }
                // A watch error (an API blip): watch again, within the same deadline.
                Ok(Err(_)) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => {
                    let node = self.get(&job.node).await?;
                    return Err(StepError::new(self.not_up_reason(
                        &node,
                        rebooted_from,
                        timeout,
                    )));
                }
            };
            let boot = boot_id(&node);
            let went_down = |n: Option<&Node>| {
                n.is_none_or(|n| !self.is_up(n, rebooted_from) || boot_id(n) != boot)
            };
            match tokio::time::timeout(
                stable,
                await_condition(self.nodes(), &job.node, went_down),
            )
            .await
            {
                Err(_) => return Ok(node),
                // A watch error: check again from the top (is it still up?).
                Ok(Err(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(Ok(_)) => self.sink.emit(RunEvent::Warning {
                    node: Some(job.node.clone()),
                    message: format!(
                        "node turned NotReady or rebooted within {stable:?} of being Ready {when}: \
                         not done; waiting for it to be Ready again (up to the ready timeout, {timeout:?})"
                    ),
                }),
            }
        }
    }

    /// Why a node is not up, for the timeout message.
    fn not_up_reason(&self, node: &Node, rebooted_from: Option<&str>, timeout: Duration) -> String {
        let version = kubelet_version(node);
        if let Some(before) = rebooted_from
            && boot_id(node) == before
        {
            return format!(
                "node did not reboot within {timeout:?} (boot ID still {before:?}; `[ready] reboot = true` expects the command to reboot it)"
            );
        }
        match (&self.playbook.target_kubelet_version, is_ready(node)) {
            (Some(v), true) => format!(
                "node is Ready but reports kubelet {version}, expected {v} (after {timeout:?})"
            ),
            _ => {
                let cond = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| {
                        format!(
                            "{} {}: {}",
                            c.status,
                            c.reason.as_deref().unwrap_or(""),
                            c.message.as_deref().unwrap_or("")
                        )
                    });
                format!(
                    "node not Ready after {timeout:?} (Ready condition: {})",
                    cond.unwrap_or_else(|| "missing".into())
                )
            }
        }
    }

    /// Resolves when the node turns NotReady or reboots (its boot ID changes from `boot`).
    /// A watch error (an API blip) is retried: settle goes on meanwhile, bounded by its own
    /// timeout.
    async fn went_down(&self, node: &str, boot: &str) {
        loop {
            let down = await_condition(self.nodes(), node, |n: Option<&Node>| {
                n.is_none_or(|n| !is_ready(n) || boot_id(n) != boot)
            })
            .await;
            if down.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// While a node in flight is down again after its wait-ready, the health monitor treats it
    /// as down for its upgrade (exempt, its pods' restarts absorbed), as during wait-ready.
    fn held_down(&self, node: &str, down: bool, _step: Step) {
        if let Some(g) = &self.guard {
            g.held_down(node, down);
        }
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

    async fn drain(&self, job: &NodeJob) -> Result<DrainReport, StepError> {
        self.mark_step(&job.node, Step::Drain).await?;
        let before = self.ready_replicas_on(&job.node).await;
        self.ready_before
            .lock()
            .expect("lock")
            .insert(job.node.clone(), before);
        drain::drain(
            &self.clients.drain,
            &job.node,
            &self.playbook.drain,
            &self.sink,
        )
        .await
        .map_err(|e| StepError::new(e.to_string()))
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
        let address = ssh_address(&node, &self.config.ssh.address).ok_or_else(|| {
            StepError::new(format!(
                "node {} has no {:?} address to SSH to (see `ssh.address` in the config)",
                job.node, self.config.ssh.address
            ))
        })?;
        let env = self.command_env(job, &address);
        let cmd = &self.playbook.command;
        let record = remote::record_dir(&self.run_id, &job.node);
        let inv = remote::RemoteInvocation {
            address: &address,
            user: cmd.user.as_deref(),
            run: &cmd.run,
            env: &env,
            timeout: cmd.timeout,
            record: &record,
            sudo: cmd.sudo,
        };
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
        Ok(format!(
            "Ready, kubelet {}{}",
            kubelet_version(&node),
            if before.is_some() { ", rebooted" } else { "" }
        ))
    }

    async fn uncordon(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = self
            .ensure_up(job, Step::Uncordon, "before uncordoning it")
            .await?;
        let precordoned = annotation(&node, PRECORDONED).is_some();
        let clear = json!({CORDONED_BY: null, STEP: null, REASON: null, FAILED_STEP: null, PRECORDONED: null, BOOT_ID: null, LAST_RUN: format!("{} {}", self.run_id, now())});
        let owner = cordon_owner(&node);
        if precordoned || matches!(owner, CordonOwner::Other(_)) {
            let who = match owner {
                CordonOwner::Other(who) => format!(" (by {who})"),
                _ => String::new(),
            };
            self.sink.emit(RunEvent::Warning {
                node: Some(job.node.clone()),
                message: format!("left cordoned: it was cordoned before this run{who}"),
            });
            self.patch(&job.node, json!({"metadata": {"annotations": clear}}))
                .await?;
        } else {
            self.patch(
                &job.node,
                json!({"spec": {"unschedulable": null}, "metadata": {"annotations": clear}}),
            )
            .await?;
        }
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
    /// The node, once it is Ready: a node found NotReady is waited for (and the operator told).
    async fn ensure_up(&self, job: &NodeJob, step: Step, when: &str) -> Result<Node, StepError> {
        let node = self.get(&job.node).await?;
        if is_ready(&node) {
            self.held_down(&job.node, false, step);
            return Ok(node);
        }
        self.held_down(&job.node, true, step);
        self.sink.emit(RunEvent::Warning {
            node: Some(job.node.clone()),
            message: format!(
                "node is NotReady {when}: not done; waiting for it to be Ready again (up to the ready timeout, {:?})",
                self.playbook.ready.timeout
            ),
        });
        let deadline = tokio::time::Instant::now() + self.playbook.ready.timeout;
        let node = self.wait_up(job, None, deadline, when).await?;
        self.held_down(&job.node, false, step);
        Ok(node)
    }

    async fn settle_workloads(
        &self,
        job: &NodeJob,
        drained: &DrainReport,
    ) -> Result<(), StepError> {
        // Controllers whose pods were evicted must have their replicas Ready again: as many as
        // the spec asks, or as were Ready before the drain when the workload was short already
        // (what was broken before the run is not held against the node, as in the monitor).
        let before = self
            .ready_before
            .lock()
            .expect("lock")
            .get(&job.node)
            .cloned()
            .unwrap_or_default();
        let owners: BTreeSet<(String, String, String)> = drained
            .evicted
            .iter()
            .filter_map(|p| {
                p.owner
                    .clone()
                    .map(|(kind, name)| (p.namespace.clone(), kind, name))
            })
            .collect();
        let client = self.clients.api.clone();
        let waits = owners.iter().map(|owner| {
            let client = client.clone();
            let (ns, kind, name) = owner;
            let floor = before.get(owner).copied();
            let want = move |spec: Option<i32>| replicas_to_wait_for(spec, floor);
            async move {
                match kind.as_str() {
                    "ReplicaSet" => {
                        all_ready(Api::<ReplicaSet>::namespaced(client, ns), name, |rs| {
                            let want = want(rs.spec.as_ref().and_then(|s| s.replicas));
                            rs.status
                                .as_ref()
                                .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= want)
                        })
                        .await
                    }
                    "StatefulSet" => {
                        all_ready(Api::<StatefulSet>::namespaced(client, ns), name, |ss| {
                            let want = want(ss.spec.as_ref().and_then(|s| s.replicas));
                            ss.status
                                .as_ref()
                                .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= want)
                        })
                        .await
                    }
                    // Other owners (Jobs, custom controllers): nothing generic to wait for.
                    _ => Ok(()),
                }
            }
        });
        let timeout = self.playbook.settle.timeout;
        match tokio::time::timeout(timeout, futures::future::join_all(waits)).await {
            Ok(results) => {
                if let Some(e) = results.into_iter().find_map(Result::err) {
                    return Err(StepError::new(format!("watching workloads: {e}")));
                }
            }
            Err(_) => {
                let names: Vec<String> = owners
                    .iter()
                    .map(|(ns, k, n)| format!("{k} {ns}/{n}"))
                    .collect();
                return Err(StepError::new(format!(
                    "evicted pods have no Ready replacements after {timeout:?}; waiting on: {}",
                    names.join(", ")
                )));
            }
        }
        tokio::time::sleep(self.playbook.settle.soak).await;
        Ok(())
    }

    async fn record_failure(&self, job: &NodeJob, step: Step, reason: &str) {
        // Annotation values are bounded; keep the message readable.
        let reason: String = reason.chars().take(1000).collect();
        let patch = json!({"metadata": {"annotations": {STEP: "failed", FAILED_STEP: step.name(), REASON: reason}}});
        if let Err(e) = self.patch(&job.node, patch).await {
            self.sink.emit(RunEvent::Warning {
                node: Some(job.node.clone()),
                message: format!("could not record the failure on the node: {e}"),
            });
        }
    }
}

/// The Ready replicas settle waits for: the spec's (default 1), but no more than were Ready
/// just before the drain (`ready_before`, when known).
pub fn replicas_to_wait_for(spec: Option<i32>, ready_before: Option<i32>) -> i32 {
    let spec = spec.unwrap_or(1);
    ready_before.map_or(spec, |before| before.min(spec))
}

/// Waits (by watch) until the workload is gone or `ready` holds for it.
async fn all_ready<K>(
    api: Api<K>,
    name: &str,
    ready: impl Fn(&K) -> bool,
) -> Result<(), kube::runtime::wait::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    await_condition(api, name, move |o: Option<&K>| o.is_none_or(&ready))
        .await
        .map(|_| ())
}

/// `--dry-run`: reads the cluster, changes nothing, reports what a real run would do.
pub struct DryRunSteps(pub StepContext);

impl std::ops::Deref for DryRunSteps {
    type Target = StepContext;
    fn deref(&self) -> &StepContext {
        &self.0
    }
}

impl DryRunSteps {
    fn say(&self, job: &NodeJob, action: String) {
        self.sink.emit(RunEvent::DryRunAction {
            node: job.node.clone(),
            action,
        });
    }
}

impl NodeSteps for DryRunSteps {
    async fn cordon(&self, job: &NodeJob) -> Result<(), StepError> {
        self.say(
            job,
            format!(
                "PATCH node {}: spec.unschedulable=true, annotation {CORDONED_BY}={}",
                job.node, self.run_id
            ),
        );
        Ok(())
    }

    async fn drain(&self, job: &NodeJob) -> Result<DrainReport, StepError> {
        let pods = drain::pods_on_node(&self.clients.api, &job.node, &self.playbook.drain)
            .await
            .map_err(|e| StepError::new(e.to_string()))?;
        let mut report = DrainReport::default();
        for pod in &pods {
            match drain::filter::classify(pod, &self.playbook.drain) {
                drain::filter::PodAction::Evict | drain::filter::PodAction::EvictUnmanaged => {
                    self.say(
                        job,
                        format!("POST eviction (policy/v1) for pod {}", drain::pod_key(pod)),
                    );
                    report.evicted.push(drain::EvictedPod {
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        name: pod.metadata.name.clone().unwrap_or_default(),
                        owner: None,
                    });
                }
                drain::filter::PodAction::WaitOnly => self.say(
                    job,
                    format!("wait for terminating pod {}", drain::pod_key(pod)),
                ),
                drain::filter::PodAction::Skip(r) => report.skipped.push((drain::pod_key(pod), r)),
                drain::filter::PodAction::Refuse(r) => self.say(
                    job,
                    format!(
                        "REFUSE: pod {} {r} (a real run fails this node here)",
                        drain::pod_key(pod)
                    ),
                ),
            }
        }
        Ok(report)
    }

    async fn run_command(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = Api::<Node>::all(self.clients.api.clone())
            .get(&job.node)
            .await
            .map_err(|e| StepError::new(e.to_string()))?;
        let address =
            ssh_address(&node, &self.config.ssh.address).unwrap_or_else(|| "(no address)".into());
        let cmd = &self.playbook.command;
        let env = BTreeMap::new();
        let record = remote::record_dir(&self.run_id, &job.node);
        let inv = remote::RemoteInvocation {
            address: &address,
            user: cmd.user.as_deref(),
            run: &cmd.run,
            env: &env,
            timeout: cmd.timeout,
            record: &record,
            sudo: cmd.sudo,
        };
        let words = remote::describe_words(&inv);
        let user = cmd
            .user
            .clone()
            .or_else(|| self.config.ssh.user.clone())
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        self.say(job, format!("SSH {user}{address}: {words} (with ROLLGATE_NODE={} and other node facts in the environment)", job.node));
        Ok(())
    }

    async fn wait_ready(&self, job: &NodeJob) -> Result<String, StepError> {
        let version = self
            .playbook
            .target_kubelet_version
            .as_deref()
            .map(|v| format!(" reporting kubelet {v}"))
            .unwrap_or_default();
        self.say(
            job,
            format!(
                "WAIT up to {:?} for node {} to be Ready{version}",
                self.playbook.ready.timeout, job.node
            ),
        );
        Ok("dry run".into())
    }

    async fn uncordon(&self, job: &NodeJob) -> Result<(), StepError> {
        self.say(
            job,
            format!(
                "PATCH node {}: spec.unschedulable=false, remove rollgate.dev annotations",
                job.node
            ),
        );
        Ok(())
    }

    async fn settle(&self, job: &NodeJob, drained: &DrainReport) -> Result<(), StepError> {
        self.say(
            job,
            format!(
                "WAIT up to {:?} for Ready replacements of {} evicted pod(s), then soak {:?}",
                self.playbook.settle.timeout,
                drained.evicted.len(),
                self.playbook.settle.soak
            ),
        );
        Ok(())
    }

    async fn mark_failed(&self, _: &NodeJob, _: Step, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn node(unschedulable: bool, cordoned_by: Option<&str>, managers: &[(&str, bool)]) -> Node {
        let mut n = Node {
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            ..Default::default()
        };
        n.metadata.annotations =
            cordoned_by.map(|r| [(CORDONED_BY.to_owned(), r.to_owned())].into());
        n.metadata.managed_fields = Some(
            managers
                .iter()
                .map(|(m, owns_unschedulable)| ManagedFieldsEntry {
                    manager: Some(m.to_string()),
                    operation: Some("Update".into()),
                    fields_v1: Some(FieldsV1(if *owns_unschedulable {
                        json!({"f:spec": {"f:unschedulable": {}}})
                    } else {
                        json!({"f:metadata": {"f:annotations": {}}})
                    })),
                    ..Default::default()
                })
                .collect(),
        );
        n
    }

    #[test]
    fn a_cordon_is_rollgates_only_while_its_field_manager_set_it() {
        let cases = [
            (
                node(false, Some("r1"), &[("rollgate", false)]),
                CordonOwner::Nobody,
            ),
            (
                node(true, Some("r1"), &[("kubectl", false), ("rollgate", true)]),
                CordonOwner::Rollgate("r1".into()),
            ),
            // Uncordoned by hand after a failed run (the annotation stays), cordoned again later.
            (
                node(
                    true,
                    Some("r1"),
                    &[("rollgate", false), ("kubectl-cordon", true)],
                ),
                CordonOwner::Other("kubectl-cordon".into()),
            ),
            (
                node(true, None, &[("kubectl-cordon", true)]),
                CordonOwner::Other("kubectl-cordon".into()),
            ),
            (
                node(true, Some("r1"), &[]),
                CordonOwner::Other("an unknown field manager".into()),
            ),
        ];
        for (n, want) in cases {
            assert_eq!(cordon_owner(&n), want, "{:?}", n.metadata);
        }
    }

    #[test]
    fn settle_waits_for_the_replicas_ready_before_the_drain_at_most() {
        let cases = [
            ((Some(3), None), 3),
            ((None, None), 1),
            ((Some(3), Some(3)), 3),
            ((Some(3), Some(1)), 1), // short before the run: not held against the node
            ((Some(2), Some(0)), 0),
            ((Some(2), Some(4)), 2), // scaled down since: the spec
        ];
        for ((spec, before), want) in cases {
            assert_eq!(
                replicas_to_wait_for(spec, before),
                want,
                "{spec:?} {before:?}"
            );
        }
    }

    #[test]
    fn the_hand_back_command_clears_every_annotation_a_failure_leaves() {
        let cmd = hand_back_command("n1");
        assert!(cmd.starts_with("kubectl uncordon n1 && kubectl annotate node n1 "));
        for key in [CORDONED_BY, PRECORDONED, STEP, REASON, FAILED_STEP] {
            assert!(cmd.contains(&format!(" {key}-")), "{cmd}");
        }
    }
}
