//! The pods of a drain on the API: listing a node's pods, deleting one, waiting (by watch) for
//! one to be gone.

use super::filter;
use super::pod_key;
use crate::playbook::DrainOptions;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::wait::{self, await_condition, conditions};
use std::time::Duration;

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

pub(super) fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_else(|| pod_key(p))
}

/// `d` spread over [d/2, d], so retries of many pods do not hit the apiserver together.
pub(super) fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d / 2 + d.mul_f64((random % 1000) as f64 / 2000.0)
}

pub(super) async fn delete_pod(
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
pub(super) async fn wait_deleted(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
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
