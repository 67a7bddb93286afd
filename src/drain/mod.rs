//! Draining a node with kubectl-drain semantics through the policy/v1 Eviction API.
//!
//! - Pods are chosen by [`filter::classify_pods`]; any refused pod fails the drain before anything
//!   is evicted (as kubectl does).
//! - Evictions run concurrently, at most `eviction-concurrency` at once. The client used here
//!   has kube's built-in retry off ([`crate::cluster::Clients::drain`]): this loop owns retries.
//!   What each answer means is [`eviction::classify`]: a PodDisruptionBudget block is retried
//!   every 5 s; a budget conflict (409, concurrent drains under one budget), a pod conflict,
//!   API throttling (429 without a budget cause) and server errors are retried too. Each cause
//!   is reported once per pod ([`RunEvent::EvictionBlocked`], [`RunEvent::EvictionRetried`]).
//! - Deletion is awaited by watch, UID-aware (a replacement with the same name does not count),
//!   and only for pods an eviction was accepted for or that were already terminating.
//! - One timeout bounds the whole drain. Its error names every pod still on the node and why
//!   (the budget blocking it, the last retry cause, the finalizer holding it...); with
//!   `on-pdb-timeout = "disable-eviction"` the pods a budget blocks are deleted instead (bounded
//!   by their grace period).

pub mod budget;
pub mod eviction;
pub mod filter;

pub use budget::label_selector_matches;
pub use filter::{controller_of, pod_key};

use crate::playbook::{DrainOptions, PdbTimeoutPolicy};
use crate::vocab::RetryCause;
use crate::vocab::{EventSink, RunEvent};
use eviction::Answer;
use filter::PodAction;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{self, await_condition, conditions};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
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
        ". A budget allows no disruption until its pods are Ready elsewhere; raise [drain] timeout, or set on-pdb-timeout = \"disable-eviction\" to delete the blocked pods"
    } else {
        ""
    }
}

/// Where a pod's drain stands, kept so a timeout can say why the pod is still there.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    /// Waiting for one of the node's `eviction-concurrency` slots.
    Queued,
    /// Its first eviction request is in flight.
    Evicting,
    /// A PodDisruptionBudget (`namespace/name`) allows no disruption now.
    Blocked { pdb: String, message: String },
    /// Retried; `attempts` requests answered so far, the last with this cause.
    Retrying {
        cause: RetryCause,
        message: String,
        attempts: u32,
    },
    /// The eviction was accepted at `at`; waiting for the pod to terminate.
    Evicted { at: Instant },
    /// Already terminating when the drain started.
    Terminating,
    /// Deleted after a budget blocked it past the timeout (`disable-eviction`).
    Deleted,
}

/// Progress per pod UID.
type ProgressMap = Arc<Mutex<BTreeMap<String, Progress>>>;

/// Why `pod` (as listed now) is still on the node, given its drain's last `progress`.
fn still_there(
    progress: Option<&Progress>,
    pod: &Pod,
    now: Instant,
    eviction_concurrency: usize,
) -> String {
    let terminating = || {
        let finalizers = pod.metadata.finalizers.clone().unwrap_or_default();
        if !finalizers.is_empty() {
            format!(
                "still terminating, held by finalizer(s) {}",
                finalizers.join(", ")
            )
        } else if let Some(g) = pod.metadata.deletion_grace_period_seconds {
            format!("still terminating (grace period {g}s)")
        } else {
            "not deleted yet".to_owned()
        }
    };
    match progress {
        None | Some(Progress::Queued) => format!(
            "not evicted yet: all {eviction_concurrency} eviction slots of the node were busy (eviction-concurrency)"
        ),
        Some(Progress::Evicting) => "its eviction request was not answered".to_owned(),
        Some(Progress::Blocked { pdb, message }) => {
            format!("eviction blocked by PodDisruptionBudget {pdb}: {message}")
        }
        Some(Progress::Retrying {
            cause,
            message,
            attempts,
        }) => format!(
            "eviction {}, {attempts} attempt(s); last answer: {message}",
            cause.describe()
        ),
        Some(Progress::Evicted { at }) => format!(
            "evicted {}s ago, {}",
            now.saturating_duration_since(*at).as_secs(),
            terminating()
        ),
        Some(Progress::Terminating) => format!("was already terminating, {}", terminating()),
        Some(Progress::Deleted) => format!(
            "deleted despite its PodDisruptionBudget (on-pdb-timeout = \"disable-eviction\"), {}",
            terminating()
        ),
    }
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
        .filter(|p| filter::selected(p, opts))
        .collect())
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_else(|| pod_key(p))
}

/// One node's drain: what every pod task shares.
struct Drainer<'a> {
    client: &'a kube::Client,
    node: &'a str,
    opts: &'a DrainOptions,
    sink: &'a EventSink,
    progress: ProgressMap,
}

/// How a pod's eviction ended.
enum Evicted {
    /// Accepted: the pod is terminating.
    Accepted,
    /// This pod (this UID) was already gone.
    AlreadyGone,
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
    };
    // Owned pods: futures over borrowed stream items trip the compiler's Send inference.
    let mut all: Vec<(Pod, bool)> = Vec::with_capacity(to_evict.len() + to_wait.len());
    all.extend(to_evict.iter().cloned().map(|p| (p, true)));
    all.extend(to_wait.iter().cloned().map(|p| (p, false)));
    let work = futures::stream::iter(all)
        .map(|(pod, evict)| drainer.drain_one(pod, evict))
        .buffer_unordered(opts.eviction_concurrency)
        .collect::<Vec<_>>();
    if let Ok(results) = tokio::time::timeout(opts.timeout, work).await {
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
    Err(DrainError::Timeout {
        timeout,
        pods: remaining
            .iter()
            .map(|p| {
                (
                    pod_key(p),
                    still_there(map.get(&uid_of(p)), p, now, opts.eviction_concurrency),
                )
            })
            .collect(),
    })
}

impl Drainer<'_> {
    fn set(&self, pod: &Pod, progress: Progress) {
        self.progress
            .lock()
            .expect("lock")
            .insert(uid_of(pod), progress);
    }

    async fn drain_one(&self, pod: Pod, evict: bool) -> Result<(), DrainError> {
        if evict {
            match self.evict(&pod).await? {
                Evicted::Accepted => {}
                // Never wait for a deletion that no eviction caused.
                Evicted::AlreadyGone => {
                    self.progress.lock().expect("lock").remove(&uid_of(&pod));
                    return Ok(());
                }
            }
        }
        wait_deleted(self.client, &pod).await?;
        self.progress.lock().expect("lock").remove(&uid_of(&pod));
        self.sink.emit(RunEvent::PodDeleted {
            node: self.node.into(),
            pod: pod_key(&pod),
        });
        Ok(())
    }

    /// Posts the eviction until it is accepted, the pod is gone, or an answer says retrying
    /// cannot help. Each retry cause is reported once.
    async fn evict(&self, pod: &Pod) -> Result<Evicted, DrainError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone();
        let key = pod_key(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let eviction = Eviction {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            delete_options: Some(DeleteOptions {
                grace_period_seconds: self.opts.grace_period.map(|g| g.as_secs() as i64),
                preconditions: uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            }),
        };
        self.set(pod, Progress::Evicting);
        let mut attempts = 0u32;
        let mut per_cause: BTreeMap<RetryCause, u32> = BTreeMap::new();
        let mut reported: BTreeSet<RetryCause> = BTreeSet::new();
        let mut reported_block = false;
        loop {
            let result = api
                .create_subresource::<_, serde_json::Value>(
                    "eviction",
                    &name,
                    &PostParams::default(),
                    &eviction,
                )
                .await;
            attempts += 1;
            let status = match &result {
                Ok(_) => None,
                Err(kube::Error::Api(s)) => Some(s.as_ref()),
                Err(_) => {
                    return Err(DrainError::Eviction {
                        pod: key,
                        source: result.expect_err("an error"),
                    });
                }
            };
            let mut answer = eviction::classify(status);
            if answer == Answer::Gone
                && status.is_some_and(|s| s.code == 409)
                && this_pod_exists(&api, &name, uid.as_deref()).await?
            {
                // The UID precondition failed yet this very pod is still there: try again.
                answer = Answer::Retry {
                    cause: RetryCause::PodConflict,
                    pdb: None,
                    message: status.map(|s| s.message.clone()).unwrap_or_default(),
                    retry_after: None,
                };
            }
            let delay = match &answer {
                Answer::Evicted => {
                    self.set(pod, Progress::Evicted { at: Instant::now() });
                    self.sink.emit(RunEvent::PodEvicted {
                        node: self.node.into(),
                        pod: key,
                    });
                    return Ok(Evicted::Accepted);
                }
                Answer::Gone => {
                    self.sink.emit(RunEvent::PodDeleted {
                        node: self.node.into(),
                        pod: key,
                    });
                    return Ok(Evicted::AlreadyGone);
                }
                Answer::Fatal => {
                    return Err(DrainError::Eviction {
                        pod: key,
                        source: result.expect_err("a refusal"),
                    });
                }
                Answer::Blocked { pdb, message, .. } => {
                    let pdb = format!("{ns}/{}", pdb.as_deref().unwrap_or("(unnamed)"));
                    if !reported_block {
                        self.sink.emit(RunEvent::EvictionBlocked {
                            node: self.node.into(),
                            pod: key.clone(),
                            pdb: pdb.clone(),
                            message: message.clone(),
                        });
                        reported_block = true;
                    }
                    self.set(
                        pod,
                        Progress::Blocked {
                            pdb,
                            message: message.clone(),
                        },
                    );
                    eviction::retry_delay(&answer, attempts)
                }
                Answer::Retry {
                    cause,
                    pdb,
                    message,
                    ..
                } => {
                    let n = per_cause.entry(*cause).or_default();
                    *n += 1;
                    if reported.insert(*cause) {
                        self.sink.emit(RunEvent::EvictionRetried {
                            node: self.node.into(),
                            pod: key.clone(),
                            cause: *cause,
                            pdb: pdb.as_ref().map(|p| format!("{ns}/{p}")),
                            message: message.clone(),
                        });
                    }
                    self.set(
                        pod,
                        Progress::Retrying {
                            cause: *cause,
                            message: message.clone(),
                            attempts,
                        },
                    );
                    jittered(eviction::retry_delay(&answer, *n))
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether the pod `name` with this UID still exists.
async fn this_pod_exists(
    api: &Api<Pod>,
    name: &str,
    uid: Option<&str>,
) -> Result<bool, kube::Error> {
    Ok(api
        .get_opt(name)
        .await?
        .is_some_and(|p| p.metadata.uid.as_deref() == uid))
}

/// `d` spread over [d/2, d], so retries of many pods do not hit the apiserver together.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d / 2 + d.mul_f64((random % 1000) as f64 / 2000.0)
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

/// Waits, by watch, until this pod (this UID) is gone. A watch the apiserver throttles (429)
/// or cannot serve (5xx) is started again.
async fn wait_deleted(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or(""),
    );
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    loop {
        match await_condition(api.clone(), &name, conditions::is_deleted(&uid)).await {
            Ok(_) => return Ok(()),
            Err(e) if transient(&e) => tokio::time::sleep(jittered(Duration::from_secs(2))).await,
            Err(e) => return Err(kube::Error::Service(Box::new(e))),
        }
    }
}

fn transient(e: &wait::Error) -> bool {
    use kube::runtime::watcher::Error as W;
    let wait::Error::ProbeFailed(w) = e;
    let code = match w {
        W::InitialListFailed(kube::Error::Api(s))
        | W::WatchStartFailed(kube::Error::Api(s))
        | W::WatchFailed(kube::Error::Api(s)) => s.code,
        W::WatchError(s) => s.code,
        _ => return false,
    };
    code == 429 || code >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(finalizers: &[&str], grace: Option<i64>) -> Pod {
        let mut p = Pod::default();
        p.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        p.metadata.deletion_grace_period_seconds = grace;
        p
    }

    #[test]
    fn a_timeout_says_why_each_pod_is_still_there() {
        let now = Instant::now();
        let ago = now - Duration::from_secs(42);
        let cases: Vec<(Option<Progress>, Pod, &str)> = vec![
            (None, pod(&[], None), "not evicted yet: all 16 eviction slots of the node were busy (eviction-concurrency)"),
            (Some(Progress::Queued), pod(&[], None), "not evicted yet: all 16 eviction slots of the node were busy (eviction-concurrency)"),
            (Some(Progress::Evicting), pod(&[], None), "its eviction request was not answered"),
            (
                Some(Progress::Blocked { pdb: "shop/web".into(), message: "The disruption budget web needs 9 healthy pods and has 9 currently".into() }),
                pod(&[], None),
                "eviction blocked by PodDisruptionBudget shop/web: The disruption budget web needs 9 healthy pods and has 9 currently",
            ),
            (
                Some(Progress::Retrying { cause: RetryCause::Throttled, message: "Too many requests, please try again later.".into(), attempts: 12 }),
                pod(&[], None),
                "eviction was throttled by the API server (429), 12 attempt(s); last answer: Too many requests, please try again later.",
            ),
            (
                Some(Progress::Retrying { cause: RetryCause::BudgetConflict, message: "Operation cannot be fulfilled on poddisruptionbudgets.policy \"web\": the object has been modified".into(), attempts: 3 }),
                pod(&[], None),
                "eviction conflicted with another update of its PodDisruptionBudget (409), 3 attempt(s); last answer: Operation cannot be fulfilled on poddisruptionbudgets.policy \"web\": the object has been modified",
            ),
            (Some(Progress::Evicted { at: ago }), pod(&["example.com/hold"], Some(30)), "evicted 42s ago, still terminating, held by finalizer(s) example.com/hold"),
            (Some(Progress::Evicted { at: ago }), pod(&[], Some(30)), "evicted 42s ago, still terminating (grace period 30s)"),
            (Some(Progress::Terminating), pod(&[], Some(600)), "was already terminating, still terminating (grace period 600s)"),
            (Some(Progress::Deleted), pod(&[], None), "deleted despite its PodDisruptionBudget (on-pdb-timeout = \"disable-eviction\"), not deleted yet"),
        ];
        for (progress, p, expected) in cases {
            assert_eq!(
                still_there(progress.as_ref(), &p, now, 16),
                expected,
                "{progress:?}"
            );
        }
    }

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
            "drain timed out after 300s with 2 pod(s) still on the node: shop/web-1 (eviction blocked by PodDisruptionBudget shop/web: no); shop/web-2 (evicted 3s ago, not deleted yet). A budget allows no disruption until its pods are Ready elsewhere; raise [drain] timeout, or set on-pdb-timeout = \"disable-eviction\" to delete the blocked pods"
        );
    }
}
