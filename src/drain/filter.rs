//! Which pods a drain evicts, skips or refuses to touch: kubectl drain's filters, in its order
//! (k8s.io/kubectl/pkg/drain/filters.go), as pure functions. The one classification that the
//! drain ([`crate::drain::drain`]), the dry run and `rollgate plan` use.
//!
//! 1. already terminating: wait for it, do not evict again;
//! 2. DaemonSet-managed: skipped with `ignore-daemonsets`, else refused;
//! 3. mirror (static) pods: skipped;
//! 4. emptyDir data: refused unless `delete-emptydir-data` (finished pods are fine);
//! 5. no controller: refused unless `force` (finished pods are fine).
//!
//! Pods not matching the drain's `pod-selector` are not considered at all ([`selected`],
//! [`classify_pods`]).

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

impl PodAction {
    /// Whether a drain waits for this pod to leave the node (evicted, or already terminating).
    pub fn drains(&self) -> bool {
        matches!(self, Self::Evict | Self::EvictUnmanaged | Self::WaitOnly)
    }
}

/// One pod a drain considers, and what the drain does with it (with the reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Classified<'a> {
    pub pod: &'a Pod,
    pub action: PodAction,
}

impl Classified<'_> {
    /// `namespace/name`
    pub fn key(&self) -> String {
        pod_key(self.pod)
    }
}

/// What a drain does with each of these pods (a node's), in their order; pods the drain's
/// `pod-selector` does not select are left out.
pub fn classify_pods<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    opts: &DrainOptions,
) -> Vec<Classified<'a>> {
    pods.into_iter()
        .filter(|pod| selected(pod, opts))
        .map(|pod| Classified {
            pod,
            action: classify(pod, opts),
        })
        .collect()
}

/// Whether the drain's `pod-selector` selects this pod (every pod without one).
pub fn selected(pod: &Pod, opts: &DrainOptions) -> bool {
    opts.pod_selector.as_ref().is_none_or(|s| {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        s.matches(&labels)
    })
}

/// `namespace/name`
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

/// What a drain does with one pod (the pod selector aside: see [`classify_pods`]).
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

    #[test]
    fn a_node_is_classified_pod_by_pod_in_order_leaving_out_pods_the_selector_does_not_select() {
        let labelled = |name: &str, owner: Option<&str>, app: &str| {
            let mut p = pod(owner);
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some("shop".into());
            p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
            p
        };
        let pods = vec![
            labelled("web-1", Some("ReplicaSet"), "web"),
            labelled("agent-1", Some("DaemonSet"), "web"),
            labelled("db-1", Some("StatefulSet"), "db"),
            labelled("bare", None, "web"),
        ];
        let only_web = DrainOptions {
            pod_selector: Some(crate::selector::Selector::parse("app=web").unwrap()),
            ..opts()
        };
        let got: Vec<(String, PodAction)> = classify_pods(&pods, &only_web)
            .into_iter()
            .map(|c| (c.key(), c.action))
            .collect();
        assert_eq!(
            got,
            vec![
                ("shop/web-1".to_string(), PodAction::Evict),
                ("shop/agent-1".to_string(), PodAction::Skip("DaemonSet-managed (owner)".into())),
                ("shop/bare".to_string(), PodAction::Refuse("not managed by a controller: it would not come back (set force = true to evict it anyway)".into())),
            ]
        );
        assert_eq!(
            classify_pods(&pods, &opts()).len(),
            4,
            "no selector: every pod"
        );
        assert_eq!(
            controller_of(&pods[2]),
            Some(("StatefulSet".into(), "owner".into()))
        );
        assert_eq!(controller_of(&pods[3]), None);
    }

    #[test]
    fn a_drain_waits_for_evicted_and_terminating_pods_only() {
        let cases = [
            (PodAction::Evict, true),
            (PodAction::EvictUnmanaged, true),
            (PodAction::WaitOnly, true),
            (PodAction::Skip("x".into()), false),
            (PodAction::Refuse("x".into()), false),
        ];
        for (action, drains) in cases {
            assert_eq!(action.drains(), drains, "{action:?}");
        }
    }
}
