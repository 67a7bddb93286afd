//! The namespace rollgate keeps its state in (`state.namespace`: the cluster lock's Lease and
//! the runs' ConfigMaps): made on a run's first write if it is missing and rollgate may create
//! namespaces; otherwise an error that names it and the fix.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};

/// Makes sure `namespace` exists before the run's first write into it. The shipped RBAC
/// neither reads nor creates namespaces (it creates this one itself): a refused read is taken
/// as "it exists" (a write into a missing one then fails naming it); a missing one is created
/// when allowed.
pub async fn ensure(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
        Err(e) => return Err(format!("cannot read the state namespace {namespace}: {e}")),
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "rollgate".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {
            tracing::info!(namespace, "created the state namespace");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(missing(namespace, &e.to_string())),
    }
}

/// The error for a state namespace that does not exist and could not be created.
pub fn missing(namespace: &str, why: &str) -> String {
    format!(
        "error: the state namespace {namespace} (the cluster lock and the runs' copies) does not exist and rollgate cannot create it: {why}\n  \
         hint: apply the shipped RBAC, which creates it: `rollgate rbac --namespace {namespace} | kubectl apply -f -`; \
         or set `state.namespace` in the config to an existing namespace rollgate's Role is bound in"
    )
}
