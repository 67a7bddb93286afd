//! SSH reachability: every node of the plan is reached with the run's own settings
//! (ssh_config, ProxyJump, strict host keys) and runs a trivial command (`sudo -n true` when
//! the playbook runs its command with sudo), in parallel and bounded.

use super::{Check, Finding, Severity};
use crate::config::Config;
use crate::plan::Plan;
use crate::playbook::Playbook;
use k8s_openapi::api::core::v1::Node;
use std::sync::Arc;
use std::time::Duration;

/// Nodes reached at once: 8 per core of this machine, at least 16 and at most 64. Each reach
/// costs the local ssh client a key exchange (~70 ms of CPU, measured with OpenSSH 9.2), so on
/// a small machine more at once only queues for the CPU; on a larger one a fleet far away (the
/// reach waits on round trips) goes faster. Measured on 2 cores against one local sshd: 200
/// reaches took 37.1 s 16 at a time and 37.4 s 64 at a time (the sshd and the remote shell
/// ran on the same 2 cores: CPU-bound).
fn parallel() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores * 8).clamp(16, 64)
}

/// The findings: a blocker per node that cannot be reached, names why (no address, host key,
/// connection, sudo).
pub async fn check(
    config: &Config,
    playbook: &Playbook,
    plan: &Plan,
    nodes: &[Node],
) -> Vec<Finding> {
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel()));
    let bound = config.ssh.connect_timeout + Duration::from_secs(20);
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    for name in plan.nodes() {
        let address = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| format!("node {name} is not in the cluster"))
            .and_then(|n| crate::cluster::ssh_address(n, &config.ssh.address));
        let address = match address {
            Ok(a) => a,
            Err(why) => {
                out.push(
                    Finding::new(Check::Ssh, Severity::Blocker, why)
                        .node(name)
                        .fix("check `ssh.address` in the config (InternalIP, Hostname or a template) against the Node's status.addresses: a destination must be an IP address or a DNS name"),
                );
                continue;
            }
        };
        let (ssh, user, sudo) = (
            config.ssh.clone(),
            playbook.command.user.clone(),
            playbook.command.sudo,
        );
        let (limit, name) = (Arc::clone(&limit), name.to_owned());
        tasks.spawn(async move {
            let _slot = limit.acquire_owned().await;
            let result = tokio::time::timeout(
                bound,
                crate::remote::reach(&ssh, &address, user.as_deref(), sudo),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {bound:?}")));
            (name, address, sudo, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (node, address, sudo, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                out.push(Finding::new(
                    Check::Ssh,
                    Severity::Blocker,
                    format!("a reachability check did not finish: {e}"),
                ));
                continue;
            }
        };
        let Err(why) = result else { continue };
        let fix = if why.contains("Host key verification failed")
            || why.contains("HOST IDENTIFICATION HAS CHANGED")
            || why.contains("host key")
        {
            "the node's host key is not the one known: check it (ssh-keyscan) and update known_hosts; never turn strict checking off"
        } else if sudo && why.contains("sudo") {
            "the command runs with sudo = true: give its user passwordless sudo (sudo -n true must succeed)"
        } else {
            "check that sshd runs on the node and the address, user, key and ProxyJump in the config (ssh -F CONFIG ADDRESS true)"
        };
        out.push(
            Finding::new(
                Check::Ssh,
                Severity::Blocker,
                format!("cannot reach {address} over SSH: {why}"),
            )
            .node(&node)
            .fix(fix),
        );
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reaches_at_once_are_bounded() {
        assert!((16..=64).contains(&super::parallel()));
    }
}
