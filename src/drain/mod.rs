//! Draining a node with kubectl-drain semantics through the policy/v1 Eviction API.
//!
//! - Pods are chosen by [`filter::classify_pods`]; any refused pod fails the drain before anything
//!   is evicted (as kubectl does).
//! - Evictions run concurrently, at most `eviction-concurrency` at once. The client used here
//!   has kube's built-in retry off ([`crate::cluster::Clients::drain`]): this loop owns retries.
//!   What each answer means is [`eviction::classify`]: a PodDisruptionBudget block is retried
//!   as soon as the budget's status allows a disruption again ([`budget_watch`]), at the
//!   latest after 5 s; a budget conflict (409, concurrent drains under one budget), a pod conflict,
//!   API throttling (429 without a budget cause) and server errors are retried too. Each cause
//!   is reported once per pod ([`RunEvent::EvictionBlocked`], [`RunEvent::EvictionRetried`]).
//! - Deletion is awaited by watch, UID-aware (a replacement with the same name does not count),
//!   and only for pods an eviction was accepted for or that were already terminating.
//! - One timeout bounds the whole drain. Its error names every pod still on the node and why
//!   (the budget blocking it, the last retry cause, the finalizer holding it...); with
//!   `on-pdb-timeout = "disable-eviction"` the pods a budget blocks are deleted instead (bounded
//!   by their grace period); with `on-pdb-timeout = "skip"` a timeout that budgets alone explain
//!   is [`DrainError::HeldByBudget`] (the node is then skipped, see `engine::node`).

//!
//! Inside: [`filter`] (which pods, pure), [`budget`] (which PDBs block now, pure), [`eviction`]
//! (what an eviction answer means, pure), `pod_task` (one pod's eviction and wait), `progress`
//! (why a pod is still there), `pods` (listing, deleting and watching pods).

pub mod budget;
pub mod budget_watch;
pub mod eviction;
pub mod filter;
mod pod_task;
mod pods;
mod progress;

pub use budget::label_selector_matches;
pub use filter::{controller_of, pod_key};
pub use pods::pods_on_node;

use crate::playbook::{DrainOptions, PdbTimeoutPolicy};
use crate::vocab::{EventSink, RunEvent};
use filter::PodAction;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use pod_task::Drainer;
use pods::{delete_pod, uid_of, wait_deleted};
use progress::{Progress, ProgressMap, budgets_holding, still_there};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pod rollgate evicted, with the controller that will replace it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvictedPod {
    pub namespace: String,
    pub name: String,
    pub owner: Option<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub evicted: Vec<EvictedPod>,
    /// (namespace/name, reason)
    pub skipped: Vec<(String, String)>,
    /// Pods deleted because a PDB blocked their eviction past the timeout (`disable-eviction`).
    pub deleted: Vec<String>,
    /// Refused evictions retried as soon as their budget allowed one again, before the fixed
    /// retry interval ([`budget_watch`]).
    pub woken_by_budget: u32,
}

/// A drain timeout that PodDisruptionBudgets alone explain (`on-pdb-timeout = "skip"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldByBudget {
    pub timeout: Duration,
    /// The budgets blocking (`namespace/name`), sorted.
    pub pdbs: Vec<String>,
    /// The pods they block (`namespace/name`).
    pub held: Vec<String>,
    /// Every pod still on the node, and why (blocked, or queued behind the blocked ones).
    pub pods: Vec<(String, String)>,
}

impl std::fmt::Display for HeldByBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "drain timed out after {:?}: PodDisruptionBudget {} allowed no eviction; still on the node: {}",
            self.timeout,
            self.pdbs.join(", "),
            self.pods
                .iter()
                .map(|(p, why)| format!("{p} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("drain refused, nothing was evicted: {}", .0.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; "))]
    Refused(Vec<(String, String)>),
    /// `pods`: (namespace/name, why it is still there).
    #[error("drain timed out after {timeout:?} with {} pod(s) still on the node: {}{}", pods.len(), pods.iter().map(|(p, why)| format!("{p} ({why})")).collect::<Vec<_>>().join("; "), timeout_hint(pods))]
    Timeout {
        timeout: Duration,
        pods: Vec<(String, String)>,
    },
    /// Only with `on-pdb-timeout = "skip"`: the node is to be given back without its command.
    #[error("{0}")]
    HeldByBudget(HeldByBudget),
    #[error("the API server refused the eviction of {pod}: {source}")]
    Eviction {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API error while draining: {0}")]
    Api(#[from] kube::Error),
}

fn timeout_hint(pods: &[(String, String)]) -> &'static str {
    if pods
        .iter()
        .any(|(_, why)| why.contains("blocked by PodDisruptionBudget"))
    {
        ". A budget allows no disruption until its pods are Ready elsewhere; raise [drain] timeout, or set on-pdb-timeout = \"disable-eviction\" to delete the blocked pods (or \"skip\" to leave the node for a later run)"
    } else {
        ""
    }
}

/// Drains `node`. `client` must have kube's default retry off.
pub async fn drain(
    client: &kube::Client,
    node: &str,
    opts: &DrainOptions,
    sink: &EventSink,
) -> Result<DrainReport, DrainError> {
    let pods = pods_on_node(client, node, opts).await?;
    let mut report = DrainReport::default();
    let mut refused = Vec::new();
    let mut to_evict = Vec::new();
    let mut to_wait = Vec::new();
    for c in filter::classify_pods(&pods, opts) {
        let pod = c.pod;
        match c.action {
            PodAction::Evict => to_evict.push(pod.clone()),
            PodAction::EvictUnmanaged => {
                sink.emit(RunEvent::Warning {
                    node: Some(node.into()),
                    message: format!(
                        "evicting unmanaged pod {} (force): it will not come back",
                        pod_key(pod)
                    ),
                });
                to_evict.push(pod.clone());
            }
            PodAction::WaitOnly => to_wait.push(pod.clone()),
            PodAction::Skip(reason) => {
                sink.emit(RunEvent::PodSkipped {
                    node: node.into(),
                    pod: pod_key(pod),
                    reason: reason.clone(),
                });
                report.skipped.push((pod_key(pod), reason));
            }
            PodAction::Refuse(reason) => refused.push((pod_key(pod), reason)),
        }
    }
    if !refused.is_empty() {
        return Err(DrainError::Refused(refused));
    }
    report.evicted = to_evict
        .iter()
        .map(|p| EvictedPod {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            owner: controller_of(p),
        })
        .collect();

    let progress: ProgressMap = Default::default();
    {
        let mut map = progress.lock().expect("lock");
        for p in &to_evict {
            map.insert(uid_of(p), Progress::Queued);
        }
        for p in &to_wait {
            map.insert(uid_of(p), Progress::Terminating);
        }
    }
    let drainer = Drainer {
        client,
        node,
        opts,
        sink,
        progress: Arc::clone(&progress),
        budgets: budget_watch::BudgetWatches::new(client.clone()),
        woken_by_budget: Default::default(),
    };
    // Owned pods: futures over borrowed stream items trip the compiler's Send inference.
    let mut all: Vec<(Pod, bool)> = Vec::with_capacity(to_evict.len() + to_wait.len());
    all.extend(to_evict.iter().cloned().map(|p| (p, true)));
    all.extend(to_wait.iter().cloned().map(|p| (p, false)));
    let work = futures::stream::iter(all)
        .map(|(pod, evict)| drainer.drain_one(pod, evict))
        .buffer_unordered(opts.eviction_concurrency)
        .collect::<Vec<_>>();
    let finished = tokio::time::timeout(opts.timeout, work).await;
    report.woken_by_budget = drainer
        .woken_by_budget
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(drainer); // its budget watches end here
    if let Ok(results) = finished {
        for r in results {
            r?;
        }
        return Ok(report);
    }

    // Timed out: say what is still on the node, and why.
    let considered: BTreeSet<String> = to_evict.iter().chain(&to_wait).map(uid_of).collect();
    let still_on_node = |pods: Vec<Pod>| -> Vec<Pod> {
        pods.into_iter()
            .filter(|p| considered.contains(&uid_of(p)))
            .collect()
    };
    let mut remaining = still_on_node(pods_on_node(client, node, opts).await?);
    let mut timeout = opts.timeout;
    if opts.on_pdb_timeout == PdbTimeoutPolicy::DisableEviction {
        let blocked: Vec<(Pod, String)> = {
            let map = progress.lock().expect("lock");
            remaining
                .iter()
                .filter_map(|p| match map.get(&uid_of(p)) {
                    Some(Progress::Blocked { pdb, .. }) => Some((p.clone(), pdb.clone())),
                    _ => None,
                })
                .collect()
        };
        if !blocked.is_empty() {
            for (pod, pdb) in &blocked {
                sink.emit(RunEvent::Warning {
                    node: Some(node.into()),
                    message: format!("deleting {} despite PodDisruptionBudget {pdb} (on-pdb-timeout = \"disable-eviction\")", pod_key(pod)),
                });
                delete_pod(client, pod, opts).await?;
                progress
                    .lock()
                    .expect("lock")
                    .insert(uid_of(pod), Progress::Deleted);
                report.deleted.push(pod_key(pod));
            }
            let grace =
                opts.grace_period.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(30);
            let waits =
                futures::future::join_all(blocked.iter().map(|(p, _)| wait_deleted(client, p)));
            timeout += grace;
            if let Ok(results) = tokio::time::timeout(grace, waits).await {
                for r in results {
                    r?;
                }
            }
            remaining = still_on_node(pods_on_node(client, node, opts).await?);
        }
    }
    if remaining.is_empty() {
        return Ok(report);
    }
    let map = progress.lock().expect("lock");
    let now = Instant::now();
    let pods = remaining
        .iter()
        .map(|p| {
            (
                pod_key(p),
                still_there(map.get(&uid_of(p)), p, now, opts.eviction_concurrency),
            )
        })
        .collect();
    if opts.on_pdb_timeout == PdbTimeoutPolicy::Skip
        && let Some(pdbs) = budgets_holding(remaining.iter().map(|p| map.get(&uid_of(p))))
    {
        let held = remaining
            .iter()
            .filter(|p| matches!(map.get(&uid_of(p)), Some(Progress::Blocked { .. })))
            .map(pod_key)
            .collect();
        return Err(DrainError::HeldByBudget(HeldByBudget {
            timeout,
            pdbs: pdbs.into_iter().collect(),
            held,
            pods,
        }));
    }
    Err(DrainError::Timeout { timeout, pods })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_error_lists_the_pods_and_hints_at_a_blocking_budget() {
        let e = DrainError::Timeout {
            timeout: Duration::from_secs(300),
            pods: vec![
                (
                    "shop/web-1".into(),
                    "eviction blocked by PodDisruptionBudget shop/web: no".into(),
                ),
                (
                    "shop/web-2".into(),
                    "evicted 3s ago, not deleted yet".into(),
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "drain timed out after 300s with 2 pod(s) still on the node: shop/web-1 (eviction blocked by PodDisruptionBudget shop/web: no); shop/web-2 (evicted 3s ago, not deleted yet). A budget allows no disruption until its pods are Ready elsewhere; raise [drain] timeout, or set on-pdb-timeout = \"disable-eviction\" to delete the blocked pods (or \"skip\" to leave the node for a later run)"
        );
    }
}
