//! One pod's drain: post its eviction until it is accepted, the pod is gone, or retrying cannot
//! help (each retry cause reported once), then wait for the pod to be gone.

use super::budget_watch::{BudgetWatches, Woken};
use super::eviction::{self, Answer};
use super::pods::{jittered, uid_of, wait_deleted};
use super::progress::{Progress, ProgressMap};
use super::{DrainError, pod_key};
use crate::playbook::DrainOptions;
use crate::vocab::{EventSink, RetryCause, RunEvent};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Api, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// One node's drain: what every pod task shares.
pub(super) struct Drainer<'a> {
    pub(super) client: &'a kube::Client,
    pub(super) node: &'a str,
    pub(super) opts: &'a DrainOptions,
    pub(super) sink: &'a EventSink,
    pub(super) progress: ProgressMap,
    /// The watches of the budgets that refused evictions: a refused eviction is retried as
    /// soon as its budget allows one again.
    pub(super) budgets: BudgetWatches,
    /// Retries a budget's status woke before the fixed retry interval passed.
    pub(super) woken_by_budget: AtomicU32,
}

/// How a pod's eviction ended.
enum Evicted {
    /// Accepted: the pod is terminating.
    Accepted,
    /// This pod (this UID) was already gone.
    AlreadyGone,
}

impl Drainer<'_> {
    fn set(&self, pod: &Pod, progress: Progress) {
        self.progress
            .lock()
            .expect("lock")
            .insert(uid_of(pod), progress);
    }

    pub(super) async fn drain_one(&self, pod: Pod, evict: bool) -> Result<(), DrainError> {
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
            // Set when a named budget refused: the retry waits for it (bounded by `delay`).
            let mut refused_by = None;
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
                    if let Some(name) = pdb {
                        refused_by = Some((name.clone(), self.budgets.seen(&ns, name)));
                    }
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
            match refused_by {
                Some((name, seen)) => {
                    if self.budgets.wait(&ns, &name, &seen, delay).await == Woken::ByBudget {
                        self.woken_by_budget.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
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
