//! Settle: wait for Ready replacements of the pods a drain evicted, then soak.

use super::KubeSteps;
use crate::drain::DrainReport;
use crate::engine::{NodeJob, StepError};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use kube::api::Api;
use kube::runtime::wait::await_condition;
use std::collections::BTreeSet;

impl KubeSteps {
    pub(super) async fn settle_workloads(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
