//! `--dry-run` steps: read the cluster, change nothing, report each write and command a real
//! run would make.

use super::StepContext;
use super::node::ssh_address;
use crate::drain::filter::{PodAction, classify_pods};
use crate::drain::{self, DrainReport};
use crate::engine::{DrainOutcome, NodeJob, NodeSteps, StepError};
use crate::remote;
use crate::vocab::node_marks::CORDONED_BY;
use crate::vocab::{RunEvent, Step};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use std::collections::BTreeMap;

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

    async fn drain(&self, job: &NodeJob) -> Result<DrainOutcome, StepError> {
        let pods = drain::pods_on_node(&self.clients.api, &job.node, &self.playbook.drain)
            .await
            .map_err(|e| StepError::new(e.to_string()))?;
        let mut report = DrainReport::default();
        for c in classify_pods(&pods, &self.playbook.drain) {
            let key = c.key();
            match c.action {
                PodAction::Evict | PodAction::EvictUnmanaged => {
                    self.say(job, format!("POST eviction (policy/v1) for pod {key}"));
                    report.evicted.push(drain::EvictedPod {
                        namespace: c.pod.metadata.namespace.clone().unwrap_or_default(),
                        name: c.pod.metadata.name.clone().unwrap_or_default(),
                        owner: None,
                    });
                }
                PodAction::WaitOnly => self.say(job, format!("wait for terminating pod {key}")),
                PodAction::Skip(r) => report.skipped.push((key, r)),
                PodAction::Refuse(r) => self.say(
                    job,
                    format!("REFUSE: pod {key} {r} (a real run fails this node here)"),
                ),
            }
        }
        Ok(DrainOutcome::Drained(report))
    }

    async fn run_command(&self, job: &NodeJob) -> Result<(), StepError> {
        let node = Api::<Node>::all(self.clients.api.clone())
            .get(&job.node)
            .await
            .map_err(|e| StepError::new(e.to_string()))?;
        let address = ssh_address(&node, &self.config.ssh.address).map_err(StepError::new)?;
        let cmd = &self.playbook.command;
        let env = BTreeMap::new();
        let record = remote::record_dir(&self.run_id, &job.node);
        let inv = remote::RemoteInvocation::for_command(cmd, &address, &env, &record);
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

    async fn hand_back(&self, job: &NodeJob) -> Result<(), StepError> {
        // A dry run's drain never times out: this is only said for completeness.
        self.say(
            job,
            format!(
                "PATCH node {}: spec.unschedulable=false, remove rollgate.dev annotations (skipped, not upgraded)",
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
