//! Readiness around reboots: wait for a node to be up (Ready, the target kubelet, a new boot
//! ID when `[ready] reboot = true`) and to stay so for `[ready] stable-for`; notice a node
//! going down again.

use super::KubeSteps;
use crate::cluster::node::{boot_id, is_ready, kubelet_version};
use crate::engine::{NodeJob, StepError};
use crate::vocab::{RunEvent, Step};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::wait::await_condition;
use std::time::Duration;

impl KubeSteps {
    /// Whether the node is up: Ready, reporting the target kubelet version, and (when
    /// `rebooted_from` is given) with a boot ID other than that one.
    fn is_up(&self, node: &Node, rebooted_from: Option<&str>) -> bool {
        is_ready(node)
            && self
                .playbook
                .target_kubelet_version
                .as_ref()
                .is_none_or(|v| kubelet_version(node) == *v)
            && rebooted_from.is_none_or(|b| boot_id(node) != b)
    }

    /// Waits (by watch) until the node is up ([`Self::is_up`]) and stays up, on the same boot,
    /// for `[ready] stable-for`: a node that turns NotReady or reboots within it (a command
    /// that scheduled a reboot and returned) is waited for again, and the operator is told.
    /// Fails at `deadline` naming what is missing.
    pub(super) async fn wait_up(
        &self,
        job: &NodeJob,
        rebooted_from: Option<&str>,
        deadline: tokio::time::Instant,
        when: &str,
    ) -> Result<Node, StepError> {
        let timeout = self.playbook.ready.timeout;
        let stable = self.playbook.ready.stable_for;
        loop {
            let up = |n: Option<&Node>| n.is_some_and(|n| self.is_up(n, rebooted_from));
            let node = match tokio::time::timeout_at(
                deadline,
                await_condition(self.nodes(), &job.node, up),
            )
            .await
            {
                Ok(Ok(Some(node))) => node,
                Ok(Ok(None)) => {
                    return Err(StepError::new(format!(
                        "node {} was deleted while waiting for it to be Ready",
                        job.node
                    )));
                }
                // A watch error (an API blip): watch again, within the same deadline.
                Ok(Err(_)) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => {
                    let node = self.get(&job.node).await?;
                    return Err(StepError::new(self.not_up_reason(
                        &node,
                        rebooted_from,
                        timeout,
                    )));
                }
            };
            let boot = boot_id(&node);
            let went_down = |n: Option<&Node>| {
                n.is_none_or(|n| !self.is_up(n, rebooted_from) || boot_id(n) != boot)
            };
            match tokio::time::timeout(
                stable,
                await_condition(self.nodes(), &job.node, went_down),
            )
            .await
            {
                Err(_) => return Ok(node),
                // A watch error: check again from the top (is it still up?).
                Ok(Err(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(Ok(_)) => self.sink.emit(RunEvent::Warning {
                    node: Some(job.node.clone()),
                    message: format!(
                        "node turned NotReady or rebooted within {stable:?} of being Ready {when}: \
                         not done; waiting for it to be Ready again (up to the ready timeout, {timeout:?})"
                    ),
                }),
            }
        }
    }

    /// Why a node is not up, for the timeout message.
    fn not_up_reason(&self, node: &Node, rebooted_from: Option<&str>, timeout: Duration) -> String {
        let version = kubelet_version(node);
        if let Some(before) = rebooted_from
            && boot_id(node) == before
        {
            return format!(
                "node did not reboot within {timeout:?} (boot ID still {before:?}; `[ready] reboot = true` expects the command to reboot it)"
            );
        }
        match (&self.playbook.target_kubelet_version, is_ready(node)) {
            (Some(v), true) => format!(
                "node is Ready but reports kubelet {version}, expected {v} (after {timeout:?})"
            ),
            _ => {
                let cond = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| {
                        format!(
                            "{} {}: {}",
                            c.status,
                            c.reason.as_deref().unwrap_or(""),
                            c.message.as_deref().unwrap_or("")
                        )
                    });
                format!(
                    "node not Ready after {timeout:?} (Ready condition: {})",
                    cond.unwrap_or_else(|| "missing".into())
                )
            }
        }
    }

    /// Resolves when the node turns NotReady or reboots (its boot ID changes from `boot`).
    /// A watch error (an API blip) is retried: settle goes on meanwhile, bounded by its own
    /// timeout.
    pub(super) async fn went_down(&self, node: &str, boot: &str) {
        loop {
            let down = await_condition(self.nodes(), node, |n: Option<&Node>| {
                n.is_none_or(|n| !is_ready(n) || boot_id(n) != boot)
            })
            .await;
            if down.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// While a node in flight is down again after its wait-ready, the health monitor treats it
    /// as down for its upgrade (exempt, its pods' restarts absorbed), as during wait-ready.
    pub(super) fn held_down(&self, node: &str, down: bool, _step: Step) {
        if let Some(g) = &self.guard {
            g.held_down(node, down);
        }
    }

    /// The node, once it is Ready: a node found NotReady is waited for (and the operator told).
    pub(super) async fn ensure_up(
        &self,
        job: &NodeJob,
        step: Step,
        when: &str,
    ) -> Result<Node, StepError> {
        let node = self.get(&job.node).await?;
        if is_ready(&node) {
            self.held_down(&job.node, false, step);
            return Ok(node);
        }
        self.held_down(&job.node, true, step);
        self.sink.emit(RunEvent::Warning {
            node: Some(job.node.clone()),
            message: format!(
                "node is NotReady {when}: not done; waiting for it to be Ready again (up to the ready timeout, {:?})",
                self.playbook.ready.timeout
            ),
        });
        let deadline = tokio::time::Instant::now() + self.playbook.ready.timeout;
        let node = self.wait_up(job, None, deadline, when).await?;
        self.held_down(&job.node, false, step);
        Ok(node)
    }
}
