//! Draining a node with kubectl-drain semantics through the policy/v1 Eviction API.
//!
//! - Pods are chosen by [`filter::classify`]; any refused pod fails the drain before anything
//!   is evicted (as kubectl does).
//! - Evictions run concurrently, at most `eviction-concurrency` at once. The client used here
//!   has kube's built-in retry off ([`crate::cluster::Clients::drain`]): this loop owns retries
//!   and tells a PodDisruptionBudget block (429 with cause `DisruptionBudget`, or 403 when a
//!   budget is already violated) from API throttling (any other 429, honouring Retry-After).
//! - Deletion is awaited by watch, UID-aware (a replacement with the same name does not count).
//! - One timeout bounds the whole drain. When a PDB still blocks at the timeout, the error names
//!   the budget, its namespace and the pods it protects; with `on-pdb-timeout =
//!   "disable-eviction"` the blocked pods are deleted instead (bounded by their grace period).

pub mod filter;

use crate::engine::{EventSink, RunEvent};
use crate::playbook::{DrainOptions, PdbTimeoutPolicy};
use filter::PodAction;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("drain refused, nothing was evicted: {}", .0.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; "))]
    Refused(Vec<(String, String)>),
    #[error("eviction blocked by PodDisruptionBudget {namespace}/{pdb} for the whole {timeout:?} drain timeout; it protects {}: {message}", pods.join(", "))]
    PdbBlocked {
        namespace: String,
        pdb: String,
        pods: Vec<String>,
        timeout: Duration,
        message: String,
    },
    #[error("drain timed out after {timeout:?}; pods still on the node: {}", pods.join(", "))]
    Timeout {
        timeout: Duration,
        pods: Vec<String>,
    },
    #[error("Kubernetes API error while draining: {0}")]
    Api(#[from] kube::Error),
}

/// What a pod's eviction is waiting for right now.
#[derive(Debug, Clone)]
struct Blocked {
    pdb: String,
    message: String,
}

/// Lists the pods on a node that a drain considers (after the pod selector).
pub async fn pods_on_node(
    client: &kube::Client,
    node: &str,
    opts: &DrainOptions,
) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            let labels: BTreeMap<String, String> = p.metadata.labels.clone().unwrap_or_default();
            opts.pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&labels))
        })
        .collect())
}

pub fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// The pod's controller: (kind, name).
pub fn controller_of(p: &Pod) -> Option<(String, String)> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
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
    for pod in pods {
        match filter::classify(&pod, opts) {
            PodAction::Evict => to_evict.push(pod),
            PodAction::EvictUnmanaged => {
                sink.emit(RunEvent::Warning {
                    node: Some(node.into()),
                    message: format!(
                        "evicting unmanaged pod {} (force): it will not come back",
                        pod_key(&pod)
                    ),
                });
                to_evict.push(pod);
            }
            PodAction::WaitOnly => to_wait.push(pod),
            PodAction::Skip(reason) => {
                sink.emit(RunEvent::PodSkipped {
                    node: node.into(),
                    pod: pod_key(&pod),
                    reason: reason.clone(),
                });
                report.skipped.push((pod_key(&pod), reason));
            }
            PodAction::Refuse(reason) => refused.push((pod_key(&pod), reason)),
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

    let blocked: Arc<Mutex<BTreeMap<String, Blocked>>> = Default::default();
    // Owned pods: futures over borrowed stream items trip the compiler's Send inference.
    let mut all: Vec<(Pod, bool)> = Vec::with_capacity(to_evict.len() + to_wait.len());
    all.extend(to_evict.iter().cloned().map(|p| (p, true)));
    all.extend(to_wait.iter().cloned().map(|p| (p, false)));
    let work = futures::stream::iter(all)
        .map(|(pod, evict)| drain_one(client, pod, evict, opts, node, sink, Arc::clone(&blocked)))
        .buffer_unordered(opts.eviction_concurrency)
        .collect::<Vec<_>>();
    match tokio::time::timeout(opts.timeout, work).await {
        Ok(results) => {
            for r in results {
                r?;
            }
            Ok(report)
        }
        Err(_) => {
            let blocked = blocked.lock().expect("lock").clone();
            let remaining: Vec<Pod> = {
                let still = pods_on_node(client, node, opts).await?;
                still
                    .into_iter()
                    .filter(|p| {
                        to_evict
                            .iter()
                            .chain(&to_wait)
                            .any(|q| q.metadata.uid == p.metadata.uid)
                    })
                    .collect()
            };
            let blocked_now: Vec<(&Pod, &Blocked)> = remaining
                .iter()
                .filter_map(|p| blocked.get(&pod_key(p)).map(|b| (p, b)))
                .collect();
            if blocked_now.is_empty() {
                return Err(DrainError::Timeout {
                    timeout: opts.timeout,
                    pods: remaining.iter().map(pod_key).collect(),
                });
            }
            if opts.on_pdb_timeout == PdbTimeoutPolicy::DisableEviction {
                for (pod, b) in &blocked_now {
                    sink.emit(RunEvent::Warning {
                        node: Some(node.into()),
                        message: format!("deleting {} despite PodDisruptionBudget {} (on-pdb-timeout = \"disable-eviction\")", pod_key(pod), b.pdb),
                    });
                    delete_pod(client, pod, opts).await?;
                    report.deleted.push(pod_key(pod));
                }
                let grace =
                    opts.grace_period.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(30);
                let waits = futures::future::join_all(
                    blocked_now.iter().map(|(p, _)| wait_deleted(client, p)),
                );
                match tokio::time::timeout(grace, waits).await {
                    Ok(results) => {
                        for r in results {
                            r?;
                        }
                        return Ok(report);
                    }
                    Err(_) => {
                        return Err(DrainError::Timeout {
                            timeout: opts.timeout + grace,
                            pods: blocked_now.iter().map(|(p, _)| pod_key(p)).collect(),
                        });
                    }
                }
            }
            let (pod, first) = blocked_now[0];
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let pods = blocked_now
                .iter()
                .filter(|(p, b)| {
                    b.pdb == first.pdb && p.metadata.namespace == pod.metadata.namespace
                })
                .map(|(p, _)| pod_key(p))
                .collect();
            Err(DrainError::PdbBlocked {
                namespace,
                pdb: first.pdb.clone(),
                pods,
                timeout: opts.timeout,
                message: first.message.clone(),
            })
        }
    }
}

async fn drain_one(
    client: &kube::Client,
    pod: Pod,
    evict: bool,
    opts: &DrainOptions,
    node: &str,
    sink: &EventSink,
    blocked: Arc<Mutex<BTreeMap<String, Blocked>>>,
) -> Result<(), kube::Error> {
    if evict {
        evict_pod(client, &pod, opts, node, sink, &blocked).await?;
    }
    wait_deleted(client, &pod).await?;
    sink.emit(RunEvent::PodDeleted {
        node: node.into(),
        pod: pod_key(&pod),
    });
    Ok(())
}

/// The name in "The disruption budget NAME needs N healthy pods ...".
fn pdb_name_from(message: &str) -> Option<String> {
    let rest = message.split("disruption budget ").nth(1)?;
    let name = rest.split_whitespace().next()?;
    (!name.is_empty() && name != "is").then(|| name.trim_end_matches(['.', ',']).to_owned())
}

fn is_pdb_block(status: &kube::core::Status) -> Option<String> {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    if let Some(cause) = causes.iter().find(|c| c.reason == "DisruptionBudget") {
        return Some(cause.message.clone());
    }
    // 403: the budget is already violated (more pods unavailable than allowed).
    if status.code == 403 && status.message.contains("disruption budget") {
        return Some(status.message.clone());
    }
    None
}

async fn evict_pod(
    client: &kube::Client,
    pod: &Pod,
    opts: &DrainOptions,
    node: &str,
    sink: &EventSink,
    blocked: &Mutex<BTreeMap<String, Blocked>>,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        delete_options: Some(DeleteOptions {
            grace_period_seconds: opts.grace_period.map(|g| g.as_secs() as i64),
            preconditions: pod.metadata.uid.clone().map(|uid| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }
            }),
            ..Default::default()
        }),
    };
    let key = pod_key(pod);
    let mut reported_block = false;
    loop {
        match api
            .create_subresource::<_, serde_json::Value>(
                "eviction",
                &name,
                &PostParams::default(),
                &eviction,
            )
            .await
        {
            Ok(_) => {
                blocked.lock().expect("lock").remove(&key);
                sink.emit(RunEvent::PodEvicted {
                    node: node.into(),
                    pod: key,
                });
                return Ok(());
            }
            // Gone already, or replaced by another pod of the same name (UID precondition).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(()),
            Err(kube::Error::Api(s)) if is_pdb_block(&s).is_some() => {
                let message = is_pdb_block(&s).unwrap_or_default();
                let pdb = pdb_name_from(&message).unwrap_or_else(|| "(unnamed)".into());
                if !reported_block {
                    sink.emit(RunEvent::EvictionBlocked {
                        node: node.into(),
                        pod: key.clone(),
                        pdb: format!("{ns}/{pdb}"),
                        message: message.clone(),
                    });
                    reported_block = true;
                }
                blocked
                    .lock()
                    .expect("lock")
                    .insert(key.clone(), Blocked { pdb, message });
                tokio::time::sleep(Duration::from_secs(5)).await; // kubectl's retry interval
            }
            Err(kube::Error::Api(s)) if s.code == 429 => {
                // Throttling (API priority and fairness) or a PDB not yet observed: back off as told.
                let retry = s
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|r| *r > 0)
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(u64::from(retry.min(30)))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn delete_pod(
    client: &kube::Client,
    pod: &Pod,
    opts: &DrainOptions,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or(""),
    );
    let mut dp = DeleteParams::default();
    if let Some(g) = opts.grace_period {
        dp = dp.grace_period(g.as_secs() as u32);
    }
    match api
        .delete(pod.metadata.name.as_deref().unwrap_or(""), &dp)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits, by watch, until this pod (this UID) is gone.
async fn wait_deleted(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or(""),
    );
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    match await_condition(api, &name, conditions::is_deleted(&uid)).await {
        Ok(_) => Ok(()),
        Err(e) => Err(kube::Error::Service(Box::new(e))),
    }
}

/// Whether a Kubernetes LabelSelector (matchLabels + matchExpressions) matches these labels.
pub fn label_selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = sel
        .match_labels
        .as_ref()
        .is_none_or(|ml| ml.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = sel.match_expressions.as_ref().is_none_or(|es| {
        es.iter().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdb_name_is_read_from_the_eviction_message() {
        assert_eq!(
            pdb_name_from("The disruption budget web needs 3 healthy pods and has 3 currently")
                .as_deref(),
            Some("web")
        );
        assert_eq!(
            pdb_name_from("Cannot evict pod as it would violate the pod's disruption budget."),
            None
        );
    }
}
