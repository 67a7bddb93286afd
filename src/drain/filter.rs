//! Which pods a drain evicts, skips or refuses to touch: kubectl drain's filters, in its order
//! (k8s.io/kubectl/pkg/drain/filters.go), as one pure function.
//!
//! 1. already terminating: wait for it, do not evict again;
//! 2. DaemonSet-managed: skipped with `ignore-daemonsets`, else refused;
//! 3. mirror (static) pods: skipped;
//! 4. emptyDir data: refused unless `delete-emptydir-data` (finished pods are fine);
//! 5. no controller: refused unless `force` (finished pods are fine).
//!
//! Pods not matching the drain's `pod-selector` are not considered at all.

use crate::playbook::DrainOptions;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "reason", rename_all = "kebab-case")]
pub enum PodAction {
    Evict,
    /// Evicted although it will not come back (no controller, `force`): warn.
    EvictUnmanaged,
    /// Already being deleted: only wait for it.
    WaitOnly,
    Skip(String),
    Refuse(String),
}

pub fn classify(pod: &Pod, opts: &DrainOptions) -> PodAction {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return PodAction::WaitOnly;
    }
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let controller = meta
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)));
    if let Some(c) = controller
        && c.kind == "DaemonSet"
    {
        return if opts.ignore_daemonsets {
            PodAction::Skip(format!("DaemonSet-managed ({})", c.name))
        } else {
            PodAction::Refuse(format!(
                "managed by DaemonSet {} (set ignore-daemonsets = true)",
                c.name
            ))
        };
    }
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
    {
        return PodAction::Skip("mirror pod (static pod managed by the kubelet)".into());
    }
    let has_emptydir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| vs.iter().any(|v| v.empty_dir.is_some()));
    if has_emptydir && !finished && !opts.delete_emptydir_data {
        return PodAction::Refuse("uses emptyDir local storage (set delete-emptydir-data = true to evict it, losing that data)".into());
    }
    if controller.is_none() && !finished {
        return if opts.force {
            PodAction::EvictUnmanaged
        } else {
            PodAction::Refuse("not managed by a controller: it would not come back (set force = true to evict it anyway)".into())
        };
    }
    PodAction::Evict
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn opts() -> DrainOptions {
        DrainOptions {
            timeout: std::time::Duration::from_secs(60),
            grace_period: None,
            delete_emptydir_data: false,
            ignore_daemonsets: true,
            force: false,
            pod_selector: None,
            on_pdb_timeout: crate::playbook::PdbTimeoutPolicy::Fail,
            eviction_concurrency: 4,
        }
    }

    fn pod(owner: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.owner_references = owner.map(|kind| {
            vec![OwnerReference {
                kind: kind.into(),
                name: "owner".into(),
                controller: Some(true),
                ..Default::default()
            }]
        });
        p.spec = Some(PodSpec::default());
        p
    }

    #[test]
    fn follows_kubectl_drain_filters_in_order() {
        let mut terminating = pod(Some("ReplicaSet"));
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let mut mirror = pod(None);
        mirror.metadata.annotations =
            Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
        let mut emptydir = pod(Some("ReplicaSet"));
        emptydir.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "v".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        let mut finished_unmanaged = pod(None);
        finished_unmanaged.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });

        let no_ds = DrainOptions {
            ignore_daemonsets: false,
            ..opts()
        };
        let force = DrainOptions {
            force: true,
            ..opts()
        };
        let emptydir_ok = DrainOptions {
            delete_emptydir_data: true,
            ..opts()
        };
        type Case = (&'static str, Pod, DrainOptions, fn(&PodAction) -> bool);
        let cases: Vec<Case> = vec![
            ("replicaset pod", pod(Some("ReplicaSet")), opts(), |a| {
                *a == PodAction::Evict
            }),
            ("terminating", terminating.clone(), opts(), |a| {
                *a == PodAction::WaitOnly
            }),
            (
                "daemonset ignored",
                pod(Some("DaemonSet")),
                opts(),
                |a| matches!(a, PodAction::Skip(r) if r.contains("DaemonSet")),
            ),
            (
                "daemonset refused",
                pod(Some("DaemonSet")),
                no_ds.clone(),
                |a| matches!(a, PodAction::Refuse(r) if r.contains("ignore-daemonsets")),
            ),
            (
                "mirror",
                mirror.clone(),
                opts(),
                |a| matches!(a, PodAction::Skip(r) if r.contains("mirror")),
            ),
            (
                "emptydir refused",
                emptydir.clone(),
                opts(),
                |a| matches!(a, PodAction::Refuse(r) if r.contains("delete-emptydir-data")),
            ),
            (
                "emptydir allowed",
                emptydir.clone(),
                emptydir_ok.clone(),
                |a| *a == PodAction::Evict,
            ),
            (
                "unmanaged refused",
                pod(None),
                opts(),
                |a| matches!(a, PodAction::Refuse(r) if r.contains("force")),
            ),
            ("unmanaged forced", pod(None), force.clone(), |a| {
                *a == PodAction::EvictUnmanaged
            }),
            (
                "finished unmanaged",
                finished_unmanaged.clone(),
                opts(),
                |a| *a == PodAction::Evict,
            ),
        ];
        for (name, pod, opts, check) in cases {
            let action = classify(&pod, &opts);
            assert!(check(&action), "{name}: got {action:?}");
        }
    }
}
