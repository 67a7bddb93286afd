//! `on-pdb-timeout = "skip"` on the real test cluster (issue 12): a node whose drain a
//! PodDisruptionBudget holds past the timeout is given back without its command and the run
//! goes on; a drain timeout that a budget does not explain stays a failure.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// `rollgate run --yes --log-format json` with Slack: (exit code, events, stderr).
fn run(dir: &Path, channel: &str, playbook: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let mut cmd = rollgate(dir);
    cmd.arg("--config")
        .arg(slack_config(dir, channel))
        .env(SLACK_TOKEN_VAR, &env().slack_token)
        .args(["--log-format", "json", "run", "--yes"])
        .args(extra)
        .arg(playbook);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    (code, events(&stderr), stderr)
}

/// The keys of a node's `rollgate.dev/` annotations.
fn rollgate_annotations(node: &str) -> Vec<String> {
    annotations(node)
        .as_object()
        .map(|a| {
            a.keys()
                .filter(|k| k.starts_with("rollgate.dev/"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A pod that an eviction cannot remove: a finalizer holds it. Dropped: the finalizer goes, so
/// the pod and its namespace can.
struct StuckPod {
    ns: String,
    name: String,
}

impl StuckPod {
    fn new(ns: &str, name: &str, node: &str) -> Self {
        kubectl_apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, finalizers: [rollgate.test/hold]}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: app}}]}}\n"
        ));
        Self {
            ns: ns.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Drop for StuckPod {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "-n",
            &self.ns,
            "patch",
            "pod",
            &self.name,
            "--type=merge",
            "-p",
            "{\"metadata\":{\"finalizers\":null}}",
        ]);
    }
}

#[tokio::test]
async fn a_node_held_by_a_budget_is_uncordoned_without_its_command_and_the_run_goes_on() {
    let suite = unique("pdbskip");
    let mut nodes = TestNodes::new(&suite);
    let (a, b) = (format!("{suite}-a"), format!("{suite}-b"));
    nodes.add(&a, &[], &[], "v1.35.4");
    nodes.add(&b, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("pdbskip");
    // One pod of Deployment `held` on one of the two nodes (either could take it: capacity is
    // no blocker), its PDB `maxUnavailable: 0`: it never allows an eviction.
    deployment_with_pdb(&ns.0, "held", &suite, 1, 0);
    let on = node_of_app(&ns.0, "held");
    // n1 holds the pod and goes first: the run must go on past it to n2.
    let (n1, n2) = if on.trim() == a { (a, b) } else { (b, a) };
    assert_eq!(on.trim(), n1);
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"pdb skip\"\ntarget-kubelet-version = \"v1.36.3\"\n\
             [[phase]]\nname = \"all\"\nnodes = [\"{n1}\", \"{n2}\"]\n\
             [drain]\ntimeout = \"3s\"\non-pdb-timeout = \"skip\"\ngrace-period = \"0s\"\n\
             [command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; echo \"$ROLLGATE_NODE\" >> {markers}; {script}'\n\
             timeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n[ready]\ntimeout = \"30s\"\n[settle]\ntimeout = \"30s\"\n",
            markers = markers.display(),
            script = upgrade_script(),
        ),
        &ns.0,
    );

    // Pre-flight: with "skip" the budget is a warning (the node will be skipped), not a blocker.
    let mut cmd = rollgate(dir.path());
    cmd.arg("preflight")
        .arg(&playbook)
        .args(["-o", "json", "--no-ssh-check"]);
    let (code, stdout, stderr) = run_rollgate(cmd, 2 * MINUTE);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let budget: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "drain-blockers" && f["node"] == n1.as_str())
        .collect();
    assert_eq!(budget.len(), 1, "{report:#}");
    assert_eq!(budget[0]["severity"], "warning", "{report:#}");
    assert_eq!(
        budget[0]["object"],
        format!("PodDisruptionBudget {}/held", ns.0)
    );
    assert!(
        budget[0]["fix"]
            .as_str()
            .unwrap()
            .starts_with("the node will be skipped"),
        "{report:#}"
    );
    assert_eq!(
        code,
        0,
        "no blocker: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );

    let channel = format!("#{suite}");
    let started = std::time::Instant::now();
    let (code, events, stderr) = run(dir.path(), &channel, &playbook, &[]);
    let took = started.elapsed();
    assert_eq!(code, 0, "skipped nodes are not failures:\n{stderr}");
    assert!(named(&events, "node-failed").is_empty(), "{stderr}");

    // n1: skipped, naming the budget and its pod; given back as after a success; never upgraded.
    let skipped = named(&events, "node-skipped");
    assert_eq!(skipped.len(), 1, "{stderr}");
    let skip = skipped[0];
    assert_eq!(skip["node"], n1.as_str());
    let pdb = format!("{}/held", ns.0);
    assert_eq!(skip["pdbs"], serde_json::json!([pdb]));
    let pods: Vec<&str> = skip["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pods.len(), 1, "{skip}");
    assert!(pods[0].starts_with(&format!("{}/held-", ns.0)), "{skip}");
    let pod = pods[0].to_owned();
    let reason = skip["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("drain timed out after 3s")
            && reason.contains(&format!("PodDisruptionBudget {pdb}"))
            && reason.contains(&pod),
        "{reason}"
    );
    assert!(!unschedulable(&n1), "the skipped node is uncordoned");
    assert!(
        rollgate_annotations(&n1).is_empty(),
        "no rollgate annotations left: {}",
        annotations(&n1)
    );
    assert_eq!(kubelet(&n1), "v1.35.4", "not upgraded");
    let markers = std::fs::read_to_string(&markers).unwrap_or_default();
    assert!(
        !markers.lines().any(|l| l == n1),
        "its command never ran: {markers}"
    );
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !Path::new(&format!("/var/tmp/rollgate-{run_id}-{n1}")).exists(),
        "no remote command record on the skipped node"
    );
    assert!(
        !named(&events, "step-started")
            .iter()
            .any(|e| e["node"] == n1.as_str() && e["step"] == "command"),
        "{stderr}"
    );
    // The held pod is still there and Running.
    let held = kubectl_ok(&["-n", &ns.0, "get", "pods", "-l", "app=held", "-o", "name"]);
    assert_eq!(
        held.trim(),
        format!("pod/{}", pod.split('/').nth(1).unwrap())
    );

    // n2: upgraded, after n1 was skipped.
    assert_eq!(kubelet(&n2), "v1.36.3");
    assert!(!unschedulable(&n2));
    assert_eq!(markers.lines().filter(|l| *l == n2).count(), 1, "{markers}");
    let done: Vec<&str> = named(&events, "node-done")
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(done, [n2.as_str()]);
    assert!(
        named(&events, "command-output")
            .iter()
            .any(|e| e["node"] == n2.as_str() && e["line"] == format!("upgrading {n2}")),
        "{stderr}"
    );
    let finished = named(&events, "run-finished")[0];
    assert_eq!(finished["outcome"], "succeeded");
    assert_eq!(
        (&finished["done"], &finished["failed"], &finished["skipped"]),
        (&Value::from(1), &Value::from(0), &Value::from(1))
    );
    // The end of the run lists the skip apart from failures.
    assert!(
        stderr.contains("nodes skipped (on-pdb-timeout = \"skip\")")
            && stderr.contains(&format!("  {n1}: drain timed out after 3s")),
        "{stderr}"
    );
    assert!(!stderr.contains("nodes left cordoned"), "{stderr}");

    // The journal, the status and the report name the skip with the budget and the pod.
    let journal = journal_events(dir.path(), &n1);
    let last = journal.last().unwrap();
    assert_eq!(last["event"], "node-skipped", "{journal:?}");
    assert_eq!(last["pdbs"], serde_json::json!([pdb]));
    assert_eq!(last["pods"], serde_json::json!([pod]));
    let mut cmd = rollgate(dir.path());
    cmd.args(["status", &run_id, "-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["nodes"][&n1]["state"], "skipped", "{status:#}");
    let why = status["nodes"][&n1]["skipped"].as_str().unwrap();
    assert!(why.contains(&pdb) && why.contains(&pod), "{why}");
    assert!(status["nodes"][&n1]["last_error"].is_null(), "{status:#}");
    assert_eq!(status["nodes"][&n2]["state"], "done");
    let mut cmd = rollgate(dir.path());
    cmd.args(["status", &run_id]);
    let (_, table, _) = run_rollgate(cmd, MINUTE);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&n1) && l.contains("skipped") && l.contains(&pdb)),
        "{table}"
    );
    let report =
        std::fs::read_to_string(dir.path().join("runs").join(&run_id).join("report.md")).unwrap();
    assert!(
        report.contains("1 done, 0 failed, 1 skipped")
            && report.contains("## Skipped nodes")
            && report.contains(&format!("- {}: held by PodDisruptionBudget", n1))
            && report.contains(&pod),
        "{report}"
    );

    // Slack heard of it, with the budget and the pod, and the final message counts it apart.
    let mut texts = Vec::new();
    for _ in 0..50 {
        texts = slack_texts(&channel);
        if texts.iter().any(|t| t.starts_with("run finished")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let told = texts
        .iter()
        .find(|t| t.starts_with(&format!("node `{n1}` SKIPPED")))
        .unwrap_or_else(|| panic!("no skip message in {texts:#?}"));
    assert!(
        told.contains(&format!("PodDisruptionBudget {pdb} held {pod}")),
        "{told}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("run finished after ")
                && t.contains("1 done, 0 failed, 1 skipped")),
        "{texts:#?}"
    );
    eprintln!("figures: run with one node skipped took {took:?}");
}

#[tokio::test]
async fn a_drain_timeout_a_budget_does_not_explain_stays_a_failure_with_skip() {
    let suite = unique("pdbstuck");
    let mut nodes = TestNodes::new(&suite);
    let n1 = format!("{suite}-n1");
    nodes.add(&n1, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("pdbstuck");
    // A budget blocks one pod, and a finalizer keeps another one on the node once evicted:
    // the budget alone does not explain the timeout.
    held_by_pdb(&ns.0, &n1);
    let _stuck = StuckPod::new(&ns.0, "stuck", &n1);
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"pdb stuck\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n\
             [drain]\ntimeout = \"3s\"\non-pdb-timeout = \"skip\"\ngrace-period = \"0s\"\nforce = true\n\
             [command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; sleep 1; echo \"$ROLLGATE_NODE\" >> {markers}'\n",
            markers = markers.display()
        ),
        &ns.0,
    );
    let channel = format!("#{suite}");
    // The held pod is pinned to n1 by hostname: nowhere to go, a true capacity blocker built
    // on purpose (the drain's failure is under test).
    let (code, events, stderr) = run(
        dir.path(),
        &channel,
        &playbook,
        &["--ignore-preflight", "capacity"],
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(named(&events, "node-skipped").is_empty(), "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["step"], "drain");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{}/stuck (evicted", ns.0))
            && reason.contains("finalizer(s) rollgate.test/hold"),
        "{reason}"
    );
    assert!(unschedulable(&n1), "a failed node stays cordoned");
    assert_eq!(annotation(&n1, "rollgate.dev/failed-step"), "drain");
    assert!(!markers.exists(), "the command never ran");
    // Handed back so the test leaves nothing behind.
    kubectl_ok(&["uncordon", &n1]);
}
