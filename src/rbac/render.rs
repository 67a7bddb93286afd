//! The shipped roles as Kubernetes YAML (what `rollgate rbac` prints; `deploy/rbac.yaml` is
//! its output with the defaults).

use super::{
    CONTROLLER, DISABLE_EVICTION, JOB_PROBES, READER, ROLES, RUNNER, RoleDef, STATE, STATE_READER,
    Scope,
};

/// What `rollgate rbac` prints: every role, and the ServiceAccount `name` bound to the ones
/// its use needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state namespace (`state.namespace`): the ServiceAccount, the Roles and their
    /// bindings live there; the output creates it.
    pub namespace: String,
    /// The ServiceAccount's name and the roles' prefix.
    pub name: String,
    /// Bind the read-only roles instead of the run's.
    pub read_only: bool,
    /// Bind the roles that control runs (pause, resume, abort) and read them, instead of the run's.
    pub control: bool,
    /// Also bind the optional role for `on-pdb-timeout = "disable-eviction"`.
    pub disable_eviction: bool,
    /// Bind the job probes' role in these namespaces.
    pub job_probe_namespaces: Vec<String>,
}

impl Options {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            read_only: false,
            control: false,
            disable_eviction: false,
            job_probe_namespaces: Vec::new(),
        }
    }

    /// The command line that prints this output.
    pub fn command_line(&self) -> String {
        let mut line = format!(
            "rollgate rbac --namespace {} --name {}",
            self.namespace, self.name
        );
        if self.read_only {
            line.push_str(" --read-only");
        }
        if self.control {
            line.push_str(" --control");
        }
        if self.disable_eviction {
            line.push_str(" --disable-eviction");
        }
        for ns in &self.job_probe_namespaces {
            line.push_str(&format!(" --job-probe-namespace {ns}"));
        }
        line
    }
}

const LABELS: &str = "  labels:\n    app.kubernetes.io/managed-by: rollgate\n";

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| {
            if i.is_empty() {
                "\"\"".to_owned()
            } else {
                (*i).to_owned()
            }
        })
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn role(def: &RoleDef, o: &Options) -> String {
    let namespace = match def.scope {
        Scope::State => format!("  namespace: {}\n", o.namespace),
        Scope::Cluster | Scope::ProbeNamespace => String::new(),
    };
    let mut out = format!(
        "# {}\napiVersion: rbac.authorization.k8s.io/v1\nkind: {}\nmetadata:\n  name: {}\n{namespace}{LABELS}rules:\n",
        def.purpose,
        def.kind(),
        def.name(&o.name)
    );
    for r in def.rules {
        out.push_str(&format!(
            "  # {}\n  - apiGroups: {}\n    resources: {}\n    verbs: {}\n",
            r.why,
            list(&[r.group]),
            list(r.resources),
            list(r.verbs)
        ));
    }
    out
}

/// A binding of `def` to the ServiceAccount: cluster-wide, or in `namespace`.
fn binding(def: &RoleDef, o: &Options, namespace: Option<&str>) -> String {
    let (kind, namespace) = match namespace {
        None => ("ClusterRoleBinding", String::new()),
        Some(ns) => ("RoleBinding", format!("  namespace: {ns}\n")),
    };
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n{namespace}{LABELS}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: {}\n  name: {name}\nsubjects:\n  - kind: ServiceAccount\n    name: {}\n    namespace: {}\n",
        def.kind(),
        o.name,
        o.namespace,
        name = def.name(&o.name),
    )
}

/// The YAML documents: the namespace, the ServiceAccount, every role, then the bindings.
pub fn render(o: &Options) -> String {
    let mut docs = vec![
        format!(
            "# rollgate's RBAC: `{}` prints this (README, \"Permissions\").\n# The state namespace: the cluster lock (Lease) and the runs' copies (ConfigMaps).\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n{LABELS}",
            o.command_line(),
            o.namespace
        ),
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {}\n  namespace: {}\n{LABELS}",
            o.name, o.namespace
        ),
    ];
    docs.extend(ROLES.iter().map(|def| role(def, o)));
    let bound: [&RoleDef; 2] = if o.control {
        [&CONTROLLER, &STATE_READER]
    } else if o.read_only {
        [&READER, &STATE_READER]
    } else {
        [&RUNNER, &STATE]
    };
    for def in bound {
        let ns = (def.scope == Scope::State).then_some(o.namespace.as_str());
        docs.push(binding(def, o, ns));
    }
    if o.disable_eviction {
        docs.push(binding(&DISABLE_EVICTION, o, None));
    }
    for ns in &o.job_probe_namespaces {
        docs.push(binding(&JOB_PROBES, o, Some(ns)));
    }
    docs.join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_rbac_yaml_is_the_default_output() {
        let shipped = include_str!("../../deploy/rbac.yaml");
        let printed = render(&Options::new(
            crate::config::DEFAULT_STATE_NAMESPACE,
            super::super::DEFAULT_NAME,
        ));
        assert!(
            shipped == printed,
            "deploy/rbac.yaml is not what `rollgate rbac` prints: regenerate it with `cargo run -- rbac > deploy/rbac.yaml`"
        );
    }

    #[test]
    fn optional_bindings_only_when_asked() {
        let mut o = Options::new("ops", "rg");
        let plain = render(&o);
        assert!(plain.contains("kind: ClusterRole\nmetadata:\n  name: rg-disable-eviction"));
        assert!(
            !plain.contains("kind: ClusterRoleBinding\nmetadata:\n  name: rg-disable-eviction")
        );
        assert!(plain.contains("kind: RoleBinding\nmetadata:\n  name: rg-state\n  namespace: ops"));
        o.disable_eviction = true;
        o.job_probe_namespaces = vec!["smoke".into()];
        let all = render(&o);
        assert!(all.contains("kind: ClusterRoleBinding\nmetadata:\n  name: rg-disable-eviction"));
        assert!(
            all.contains("kind: RoleBinding\nmetadata:\n  name: rg-job-probes\n  namespace: smoke")
        );
        o.read_only = true;
        let ro = render(&o);
        assert!(ro.contains("kind: ClusterRoleBinding\nmetadata:\n  name: rg-reader"));
        assert!(!ro.contains("kind: ClusterRoleBinding\nmetadata:\n  name: rg-runner"));
        o.read_only = false;
        o.control = true;
        let control = render(&o);
        assert!(
            control.contains("kind: RoleBinding\nmetadata:\n  name: rg-control\n  namespace: ops")
        );
        assert!(!control.contains("kind: ClusterRoleBinding\nmetadata:\n  name: rg-runner"));
        assert!(!control.contains("kind: RoleBinding\nmetadata:\n  name: rg-state\n"));
    }
}
