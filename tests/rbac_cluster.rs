//! Least privilege: the shipped RBAC (`rollgate rbac`) is what every cluster test runs rollgate
//! under (tests/support); here, what happens without it: a run under a role with one rule
//! removed, a run as the read-only ServiceAccount, and the state namespace made by a run that
//! may create it.

mod support;

use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

fn book(nodes: &[String]) -> String {
    format!(
        "name = \"rbac\"\n[[phase]]\nname = \"all\"\nnodes = [{}]\n[command]\nrun = \"true\"\n",
        nodes
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The lease of the lock `lock` in `namespace`, if any.
fn lease_exists(namespace: &str, lock: &str) -> bool {
    kubectl(&[
        "-n",
        namespace,
        "get",
        "lease",
        &format!("rollgate-lock-{lock}"),
    ])
    .status
    .success()
}

#[tokio::test]
async fn a_run_under_a_role_missing_one_rule_exits_early_naming_it_and_changes_nothing() {
    let suite = unique("rbac-miss");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let dir = tempfile::tempdir().unwrap();
    // The shipped RBAC with the eviction rule taken out of the runner's ClusterRole.
    let name = "rollgate-test-broken";
    let shipped = shipped_rbac(name, &[]);
    let rule = "  - apiGroups: [\"\"]\n    resources: [pods/eviction]\n    verbs: [create]\n";
    assert!(shipped.contains(rule), "{shipped}");
    kubectl_apply(&shipped.replace(rule, ""));
    let kubeconfig = service_account_kubeconfig(name, RUNNER_CAN);
    let playbook = write_playbook(dir.path(), &book(&names));
    let lock = unique("lock");
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 11, "{stderr}");
    assert!(
        stderr.contains(
            "create pods/eviction (in all namespaces): granted by ClusterRole rollgate-runner"
        ) && stderr.contains("Missing (1 of ")
            && stderr.contains("nothing was changed")
            && stderr.contains(
                "rollgate rbac --namespace rollgate-system --name rollgate | kubectl apply -f -"
            ),
        "{stderr}"
    );
    // Nothing changed: the node is not cordoned nor marked, no lock was taken, no run started.
    assert!(!unschedulable(&names[0]));
    assert!(
        annotations(&names[0])
            .get("rollgate.dev/cordoned-by")
            .is_none()
    );
    assert!(!lease_exists(STATE_NAMESPACE, &lock));
    assert!(!dir.path().join("runs/latest").exists());
}

#[tokio::test]
async fn the_read_only_account_plans_but_may_not_run() {
    let suite = unique("rbac-ro");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(dir.path(), &book(&names));
    // plan runs as the reader (tests/support switches read-only subcommands to it).
    let mut cmd = rollgate(dir.path());
    cmd.arg("plan").arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", kubeconfig_of(Identity::Reader))
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 11, "{stderr}");
    for missing in [
        "patch nodes (cluster-scoped): granted by ClusterRole rollgate-runner",
        "create pods/eviction (in all namespaces): granted by ClusterRole rollgate-runner",
        "update leases.coordination.k8s.io (in namespace rollgate-system): granted by Role rollgate-state",
        "patch configmaps (in namespace rollgate-system): granted by Role rollgate-state",
    ] {
        assert!(stderr.contains(missing), "{missing}:\n{stderr}");
    }
    assert!(!unschedulable(&names[0]));
}

#[tokio::test]
async fn a_run_allowed_to_create_namespaces_makes_its_state_namespace() {
    let suite = unique("rbac-ns");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(dir.path(), &book(&names));
    let state_ns = unique("rollgate-state");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[state]\nnamespace = \"{state_ns}\"\n")).unwrap();
    let lock = unique("lock");
    // As the admin (the shipped roles do not create namespaces: their RBAC creates it).
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", &env().kubeconfig)
        .env("ROLLGATE_LOCK_NAME", &lock)
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, 2 * MINUTE);
    let made = kubectl(&["get", "namespace", &state_ns]).status.success();
    let copies = kubectl_ok(&["-n", &state_ns, "get", "configmaps", "-o", "name"]);
    let _ = kubectl(&["delete", "namespace", &state_ns, "--wait=false"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(made, "the state namespace {state_ns} was not created");
    assert!(
        copies.contains("rollgate-run-"),
        "no run copy in {state_ns}: {copies}"
    );
}
