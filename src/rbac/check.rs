//! What a command needs of the apiserver, asked before it changes anything: one
//! SelfSubjectAccessReview per permission (exact, where a SelfSubjectRulesReview may be
//! incomplete under other authorizers), all at once. A missing one stops the command with
//! [`exit::PERMISSION`], naming the verb, the resource, the namespace and the shipped role.

use super::{
    DEFAULT_NAME, DISABLE_EVICTION, JOB_PROBES, Options, READER, RUNNER, RoleDef, STATE,
    STATE_READER,
};
use crate::config::Config;
use crate::exit::{self, Failure};
use crate::playbook::{PdbTimeoutPolicy, Playbook, ProbeKind};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// One permission: a verb on a resource (`pods/eviction`), in a namespace or in all of them
/// (cluster-scoped resources and cluster-wide roles), and the shipped role granting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: Option<String>,
    pub role: &'static str,
    pub role_kind: &'static str,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = match self.group {
            "" => String::new(),
            g => format!(".{g}"),
        };
        let (resource, sub) = self
            .resource
            .split_once('/')
            .map_or((self.resource, String::new()), |(r, s)| {
                (r, format!("/{s}"))
            });
        let scope = match &self.namespace {
            Some(ns) => format!("in namespace {ns}"),
            None if matches!(self.resource, "nodes" | "namespaces") => "cluster-scoped".into(),
            None => "in all namespaces".into(),
        };
        write!(
            f,
            "{} {resource}{group}{sub} ({scope}): granted by {} {DEFAULT_NAME}-{}",
            self.verb, self.role_kind, self.role
        )
    }
}

/// What a command does with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `run` and `resume` (not dry): the run's roles, and the optional ones its playbook asks for.
    Run,
    /// `run --dry-run`, `plan`, `preflight`: read nodes, pods, budgets.
    Read,
    /// `monitor`: read nodes, pods in its namespaces; its periodic job probes.
    Monitor,
}

fn from_role(def: &'static RoleDef, namespace: Option<&str>, out: &mut Vec<Need>) {
    for rule in def.rules {
        for resource in rule.resources {
            for verb in rule.verbs {
                out.push(Need {
                    verb,
                    group: rule.group,
                    resource,
                    namespace: namespace.map(str::to_owned),
                    role: def.suffix,
                    role_kind: def.kind(),
                });
            }
        }
    }
}

/// The namespaces the playbook's job probes run in (those `monitor` runs: periodic ones only).
fn job_namespaces(playbook: &Playbook, periodic_only: bool) -> Vec<String> {
    let mut out: Vec<String> = playbook
        .probes
        .iter()
        .filter(|p| !periodic_only || p.interval.is_some())
        .filter_map(|p| match &p.kind {
            ProbeKind::Job { namespace, .. } => Some(namespace.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every permission `what` needs with this config and playbook.
pub fn needs(what: Use, config: &Config, playbook: Option<&Playbook>) -> Vec<Need> {
    let mut out = Vec::new();
    match what {
        Use::Run => {
            from_role(&RUNNER, None, &mut out);
            from_role(&STATE, Some(&config.state_namespace), &mut out);
            if playbook.is_some_and(|p| p.drain.on_pdb_timeout == PdbTimeoutPolicy::DisableEviction)
            {
                from_role(&DISABLE_EVICTION, None, &mut out);
            }
        }
        Use::Read => from_role(&READER, None, &mut out),
        Use::Monitor => {
            let namespaces = playbook
                .map(|p| p.monitor.namespaces.clone())
                .unwrap_or_default();
            for rule in READER.rules {
                for resource in rule.resources {
                    if *resource == "pods" && !namespaces.is_empty() {
                        for ns in &namespaces {
                            for verb in ["list", "watch"] {
                                out.push(need(verb, rule.group, resource, Some(ns), &READER));
                            }
                        }
                    } else if matches!(*resource, "nodes" | "pods") {
                        for verb in ["list", "watch"] {
                            out.push(need(verb, rule.group, resource, None, &READER));
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = playbook
        && what != Use::Read
    {
        for ns in job_namespaces(p, what == Use::Monitor) {
            from_role(&JOB_PROBES, Some(&ns), &mut out);
        }
    }
    out
}

fn need(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: Option<&str>,
    def: &'static RoleDef,
) -> Need {
    Need {
        verb,
        group,
        resource,
        namespace: namespace.map(str::to_owned),
        role: def.suffix,
        role_kind: def.kind(),
    }
}

/// Reviews in flight at once: each is a small POST; a few connections reused beat one TLS
/// handshake per review on a loaded machine.
const SSAR_CONCURRENCY: usize = 4;

/// The permissions in `needs` the apiserver does not grant the caller.
pub async fn missing(client: &kube::Client, needs: &[Need]) -> Result<Vec<Need>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let asks = needs.iter().map(|n| {
        let api = api.clone();
        let (resource, subresource) = n
            .resource
            .split_once('/')
            .map_or((n.resource, None), |(r, s)| (r, Some(s.to_owned())));
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(n.group.to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource,
                    verb: Some(n.verb.to_owned()),
                    namespace: n.namespace.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        async move {
            let answer = api.create(&PostParams::default(), &review).await?;
            Ok::<_, kube::Error>(answer.status.is_some_and(|s| s.allowed))
        }
    });
    let answers: Vec<bool> = {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(asks)
            .buffered(SSAR_CONCURRENCY)
            .try_collect()
            .await?
    };
    Ok(needs
        .iter()
        .zip(answers)
        .filter(|(_, allowed)| !allowed)
        .map(|(n, _)| n.clone())
        .collect())
}

/// Checks `what`'s permissions: Ok, or the [`exit::PERMISSION`] failure naming each missing one
/// and the shipped RBAC to apply. A review the apiserver does not answer is a cluster failure.
pub async fn check(
    client: &kube::Client,
    what: Use,
    config: &Config,
    playbook: Option<&Playbook>,
    command: &str,
) -> Result<(), Failure> {
    let needs = needs(what, config, playbook);
    let started = std::time::Instant::now();
    let missing = missing(client, &needs).await.map_err(|e| {
        Failure::cluster(format!(
            "cannot ask the apiserver what rollgate may do (SelfSubjectAccessReview): {e}"
        ))
    })?;
    tracing::debug!(
        checked = needs.len(),
        missing = missing.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "permissions checked"
    );
    if missing.is_empty() {
        return Ok(());
    }
    let mut rbac = Options::new(&config.state_namespace, DEFAULT_NAME);
    rbac.read_only = what != Use::Run;
    rbac.disable_eviction = missing.iter().any(|n| n.role == DISABLE_EVICTION.suffix);
    rbac.job_probe_namespaces = missing
        .iter()
        .filter(|n| n.role == JOB_PROBES.suffix)
        .filter_map(|n| n.namespace.clone())
        .collect();
    rbac.job_probe_namespaces.dedup();
    let mut message = format!(
        "error: `rollgate {command}` may not do all it needs in this cluster: nothing was changed. Missing ({} of {}):\n",
        missing.len(),
        needs.len()
    );
    for n in &missing {
        message.push_str(&format!("  - {n}\n"));
    }
    let roles: Vec<String> = [&RUNNER, &STATE, &READER, &STATE_READER]
        .iter()
        .filter(|d| missing.iter().any(|n| n.role == d.suffix))
        .map(|d| format!("{} {}", d.kind(), d.name(DEFAULT_NAME)))
        .collect();
    message.push_str(&format!(
        "  hint: apply the shipped RBAC and run as its ServiceAccount: `{} | kubectl apply -f -` (deploy/rbac.yaml holds the defaults; README, \"Permissions\"){}",
        rbac.command_line(),
        if roles.is_empty() {
            String::new()
        } else {
            format!(
                "; or bind your identity to the role(s) named ({})",
                roles.join(", ")
            )
        }
    ));
    Err(Failure::new(exit::PERMISSION, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn playbook(extra: &str) -> Playbook {
        crate::playbook::parse(
            Path::new("p.toml"),
            &format!("name = \"p\"\n[[phase]]\nname = \"all\"\nnodes = [\"a\"]\n[command]\nrun = \"true\"\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn a_run_needs_its_roles_and_the_optional_ones_its_playbook_asks_for() {
        let config = Config::parse(Path::new("c.toml"), "[state]\nnamespace = \"ops\"\n").unwrap();
        let plain = needs(Use::Run, &config, Some(&playbook("")));
        assert_eq!(plain.len(), 27);
        let eviction = plain
            .iter()
            .find(|n| n.resource == "pods/eviction")
            .unwrap();
        assert_eq!(
            eviction.to_string(),
            "create pods/eviction (in all namespaces): granted by ClusterRole rollgate-runner"
        );
        let lease = plain.iter().find(|n| n.verb == "update").unwrap();
        assert_eq!(
            lease.to_string(),
            "update leases.coordination.k8s.io (in namespace ops): granted by Role rollgate-state"
        );
        let both = needs(
            Use::Run,
            &config,
            Some(&playbook(
                "[drain]\non-pdb-timeout = \"disable-eviction\"\n[[probe]]\nname = \"smoke\"\nkind = \"job\"\nmanifest = \"j.yaml\"\nnamespace = \"smoke\"\nwhen = [\"before-run\"]\n",
            )),
        );
        assert_eq!(both.len(), 27 + 1 + 5);
        assert!(both.iter().any(|n| n.to_string()
            == "delete pods (in all namespaces): granted by ClusterRole rollgate-disable-eviction"));
        assert!(both.iter().any(|n| n.to_string()
            == "create jobs.batch (in namespace smoke): granted by ClusterRole rollgate-job-probes"));
        // Read-only uses need no write.
        for n in needs(Use::Read, &config, None) {
            assert!(matches!(n.verb, "get" | "list" | "watch"), "{n}");
        }
    }
}
