//! `rollgate plan` against the real cluster (issue 3): selectors resolved on labelled nodes,
//! waves zone by zone, a PDB that would block, refused pods; and plan never writes: it runs
//! with read-only RBAC credentials and the cluster is unchanged afterwards.

mod support;

use std::time::Duration;
use support::*;

/// A kubeconfig for a service account that may only get/list/watch.
fn read_only_kubeconfig(dir: &std::path::Path, suite: &str) -> std::path::PathBuf {
    let sa = format!("{suite}-viewer");
    kubectl_apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: default}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {sa}}}
rules:
- apiGroups: ["", "policy", "apps"]
  resources: [nodes, pods, poddisruptionbudgets, replicasets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {sa}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {sa}}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: default}}]
"#
    ));
    let token = kubectl_ok(&["-n", "default", "create", "token", &sa, "--duration=10m"]);
    let admin = std::fs::read_to_string(&env().kubeconfig).unwrap();
    let ca_line = admin
        .lines()
        .find(|l| l.contains("certificate-authority"))
        .unwrap()
        .trim()
        .to_owned();
    let server_line = admin
        .lines()
        .find(|l| l.contains("server:"))
        .unwrap()
        .trim()
        .to_owned();
    let path = dir.join("viewer.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    {server_line}\n    {ca_line}\ncontexts:\n- name: viewer\n  context: {{cluster: c, user: viewer}}\ncurrent-context: viewer\nusers:\n- name: viewer\n  user:\n    token: {}\n",
            token.trim()
        ),
    )
    .unwrap();
    path
}

fn snapshot(suite: &str, ns: &str) -> String {
    let nodes = kubectl_ok(&[
        "get",
        "nodes",
        "-l",
        &format!("rollgate.test/suite={suite}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.unschedulable} {.metadata.annotations}{\"\\n\"}{end}",
    ]);
    let pods = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.metadata.uid} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    format!("{nodes}\n{pods}")
}

#[tokio::test]
async fn plan_resolves_selectors_reports_blocking_pdbs_and_refusals_and_never_writes() {
    let suite = unique("plan");
    let mut nodes = TestNodes::new(&suite);
    let cp = format!("{suite}-cp");
    let wa = format!("{suite}-wa");
    let wb = format!("{suite}-wb");
    nodes.add(
        &cp,
        &["node-role.kubernetes.io/control-plane=", "zone=a"],
        &["node-role.kubernetes.io/control-plane:NoSchedule"],
        "v1.35.4",
    );
    nodes.add(&wa, &["zone=a"], &[], "v1.35.4");
    nodes.add(&wb, &["zone=b"], &[], "v1.35.4");
    let ns = TestNamespace::new("plan");
    deployment_with_pdb(&ns.0, "web", &suite, 2, 0);
    ns.pod("bare", &wb, "");
    // The PDB must have observed the pods before it reports 0 allowed disruptions.
    let pdb_ready = || async {
        kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.expectedPods}",
        ])
        .trim()
            == "2"
    };
    eventually(
        "the PDB to observe its pods",
        Duration::from_secs(30),
        pdb_ready,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("plan.toml");
    std::fs::write(
        &playbook,
        format!(
            "name = \"plan test\"\n[[phase]]\nname = \"cp\"\nselector = \"rollgate.test/suite={suite}, node-role.kubernetes.io/control-plane\"\n\
             [[phase]]\nname = \"workers\"\nselector = \"rollgate.test/suite={suite}, !node-role.kubernetes.io/control-plane\"\norder = \"label:zone\"\nconcurrency = 2\n\
             [[phase]]\nname = \"gpu\"\nselector = \"rollgate.test/suite={suite}, gpu\"\n[command]\nrun = \"true\"\n"
        ),
    )
    .unwrap();
    let viewer = read_only_kubeconfig(dir.path(), &suite);
    let before = snapshot(&suite, &ns.0);

    let mut cmd = rollgate(dir.path());
    cmd.arg("--kubeconfig")
        .arg(&viewer)
        .args(["plan", "-o", "json"])
        .arg(&playbook);
    let (code, stdout, stderr) = run_rollgate(cmd, Duration::from_secs(60));
    assert_eq!(code, 0, "plan failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let phases = report["plan"]["phases"].as_array().unwrap();
    assert_eq!(phases[0]["waves"][0]["nodes"], serde_json::json!([cp]));
    assert_eq!(phases[1]["waves"][0]["label"], "zone=a");
    assert_eq!(phases[1]["waves"][0]["nodes"], serde_json::json!([wa]));
    assert_eq!(phases[1]["waves"][1]["nodes"], serde_json::json!([wb]));
    assert!(
        report["plan"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "phase \"gpu\" matches no node"),
        "{}",
        report["plan"]["warnings"]
    );
    let pdb = format!("{}/web", ns.0);
    let worker_pdbs: Vec<&serde_json::Value> = [&wa, &wb]
        .iter()
        .flat_map(|n| {
            report["nodes"][n.as_str()]["blocking_pdbs"]
                .as_array()
                .unwrap()
        })
        .collect();
    assert!(
        worker_pdbs.iter().any(|p| **p == pdb),
        "a PDB allowing 0 disruptions is reported: {:#}",
        report["nodes"]
    );
    let refused = report["nodes"][&wb]["refuse"].to_string();
    assert!(
        refused.contains("bare") && refused.contains("not managed by a controller"),
        "{refused}"
    );
    assert_eq!(report["nodes"][&cp]["facts"]["kubelet_version"], "v1.35.4");

    // The table says the same to a person.
    let mut cmd = rollgate(dir.path());
    cmd.arg("--kubeconfig")
        .arg(&viewer)
        .arg("plan")
        .arg(&playbook);
    let (code, stdout, stderr) = run_rollgate(cmd, Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("PDB allows 0 disruptions now: {pdb}")),
        "{stdout}"
    );
    assert!(stdout.contains("wave zone=b"), "{stdout}");

    assert_eq!(snapshot(&suite, &ns.0), before, "plan changed the cluster");
}

#[tokio::test]
async fn plan_refuses_a_node_selected_by_two_phases_and_an_unreachable_cluster() {
    let suite = unique("plan2");
    let mut nodes = TestNodes::new(&suite);
    nodes.add(&format!("{suite}-n1"), &["zone=a"], &[], "v1.35.4");
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("p.toml");
    std::fs::write(
        &playbook,
        format!("name = \"t\"\n[[phase]]\nname = \"a\"\nselector = \"rollgate.test/suite={suite}\"\n[[phase]]\nname = \"b\"\nselector = \"zone=a, rollgate.test/suite={suite}\"\n[command]\nrun = \"true\"\n"),
    )
    .unwrap();
    let mut cmd = rollgate(dir.path());
    cmd.arg("plan").arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, Duration::from_secs(60));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "node \"{suite}-n1\" is selected by phases \"a\" and \"b\""
        )),
        "{stderr}"
    );

    let bad = dir.path().join("nowhere.kubeconfig");
    std::fs::write(&bad, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: x}\n").unwrap();
    let mut cmd = rollgate(dir.path());
    cmd.arg("--kubeconfig").arg(&bad).arg("plan").arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, Duration::from_secs(60));
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("does not answer") && stderr.contains("hint:"),
        "{stderr}"
    );
}
