//! Where the failure budget meets the gates, concurrency and cordons, on the real test cluster
//! with the health monitor on (issue 10: items 3, 4, 11 and the settle part of 13).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs `rollgate ARGS --log-format json` and returns (exit code, events, stderr).
fn rollgate_json(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> (i32, Vec<Value>, String) {
    let mut cmd = rollgate(dir);
    cmd.args(["--log-format", "json"]).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    (code, events(&stderr), stderr)
}

fn run(dir: &Path, playbook: &Path) -> (i32, Vec<Value>, String) {
    rollgate_json(dir, &["run", "--yes", playbook.to_str().unwrap()], &[])
}

/// Index of the first event `name` about `node`.
fn index_of(events: &[Value], name: &str, node: &str) -> usize {
    events
        .iter()
        .position(|e| e["event"] == name && e["node"] == node)
        .unwrap_or_else(|| panic!("no {name} for {node}"))
}

fn node_names(events: &[Value], name: &str) -> Vec<String> {
    named(events, name)
        .iter()
        .map(|e| e["node"].as_str().unwrap().to_owned())
        .collect()
}

fn run_id(events: &[Value]) -> String {
    named(events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Issue 10, item 3: with `failure-budget = 1`, a node whose command fails and leaves it
/// NotReady (its pods NotReady with it) is counted by the budget, not by the `nodes`/`pods`
/// gates: the other nodes are upgraded and the run succeeds with one failure.
#[tokio::test]
async fn a_node_failing_within_the_budget_and_left_not_ready_trips_no_gate() {
    let suite = unique("budget");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let (n1, n2, n3) = (&names[0], &names[1], &names[2]);
    let ns = TestNamespace::new("budget");
    // An agent on the node that will fail; the failing upgrade breaks it (crash loop), a new
    // problem for the `pods` signal.
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {n1}}}\n      tolerations: [{{operator: Exists}}]\n      containers: [{{name: a, image: agent}}]\n",
        ns = ns.0
    ));
    kubectl_ok(&[
        "-n",
        &ns.0,
        "rollout",
        "status",
        "daemonset/agent",
        "--timeout=60s",
    ]);
    let break_agent = format!(
        "{} --kubeconfig {} -n {} label pods -l app=agent rollgate.test/crashloop=true",
        env().kubectl.display(),
        env().kubeconfig.display(),
        ns.0
    );
    let dir = tempfile::tempdir().unwrap();
    // n1 fails at once and stays NotReady; n2 and n3 take long enough for the monitor to see
    // n1 and its agent broken while the run goes on.
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"budget\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\nconcurrency = 2\nfailure-budget = 1\n\
             [command]\nrun = 'if [ \"$ROLLGATE_NODE\" = {n1} ]; then {break_agent}; export FAKE_UPGRADE_SECONDS=1; else export FAKE_UPGRADE_SECONDS=8; fi; {script}'\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_FAIL = \"{n1}\" }}\n\
             [ready]\ntimeout = \"30s\"\n",
            script = upgrade_script(),
        ),
        &ns.0,
    );
    let (code, events, stderr) = run(dir.path(), &playbook);
    assert_eq!(
        code, 0,
        "the run goes on past the failure within budget:\n{stderr}"
    );
    assert_eq!(node_names(&events, "node-failed"), vec![n1.clone()]);
    assert_eq!(
        node_names(&events, "node-done"),
        vec![n2.clone(), n3.clone()]
    );
    assert!(
        named(&events, "gate-decision").is_empty(),
        "no gate decided anything: {stderr}"
    );
    assert!(unschedulable(n1), "the failed node stays cordoned");
    // The scenario did happen: n1 is NotReady and its agent crash-looping.
    let node_ready = kubectl_ok(&[
        "get",
        "node",
        n1,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(node_ready.trim(), "False");
    let agent = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].state.waiting.reason}",
    ]);
    assert_eq!(agent.trim(), "CrashLoopBackOff");
}

/// Issue 10, item 11: a failed node left cordoned keeps its `concurrency` slot: with
/// concurrency 2, once n1 failed, n3 waits for n2 (never three nodes out of service).
#[tokio::test]
async fn a_failed_node_left_cordoned_takes_a_concurrency_slot() {
    let suite = unique("slots");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let (n1, n2, n3) = (&names[0], &names[1], &names[2]);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"slots\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\nconcurrency = 2\nfailure-budget = 1\n\
             [command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; if [ \"$ROLLGATE_NODE\" = {n1} ]; then echo \"package conflict\" >&2; exit 3; fi; sleep 6; echo done'\n"
        ),
    );
    let (code, events, stderr) = run(dir.path(), &playbook);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(node_names(&events, "node-failed"), vec![n1.clone()]);
    assert_eq!(
        node_names(&events, "node-done"),
        vec![n2.clone(), n3.clone()]
    );
    assert!(
        index_of(&events, "node-failed", n1) < index_of(&events, "node-done", n2),
        "n1 fails while n2 is in flight: {stderr}"
    );
    assert!(
        index_of(&events, "node-started", n3) > index_of(&events, "node-done", n2),
        "n3 starts only once n2 is done (n1 stays cordoned): {stderr}"
    );
}

/// Issue 10, item 11: a node task that panics (a bug; here a failpoint) fails that node at its
/// step: recorded on the node, counted by the budget (0: the run stops, exit 4).
#[tokio::test]
async fn a_panicking_node_task_fails_that_node() {
    let suite = unique("panic");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"panic\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n[command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; sleep 1'\n"
        ),
    );
    let (code, events, stderr) = rollgate_json(
        dir.path(),
        &["run", "--yes", playbook.to_str().unwrap()],
        &[("ROLLGATE_FAILPOINT", "panic-after:drain")],
    );
    assert_eq!(code, 4, "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert_eq!(failed[0]["step"], "drain");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("internal error in rollgate during drain"),
        "{}",
        failed[0]
    );
    assert!(unschedulable(&names[0]));
    assert_eq!(annotation(&names[0], "rollgate.dev/failed-step"), "drain");
    assert!(
        !unschedulable(&names[1]) && node_names(&events, "node-started") == vec![names[0].clone()],
        "the budget is spent: the second node does not start"
    );
}

/// Issue 10, item 4: after a failed run the operator uncordons the node (rollgate's
/// `cordoned-by` stays), later someone cordons it for other work. Neither resuming that run
/// nor a new run takes that cordon for rollgate's: the node is upgraded and stays cordoned.
/// The advice after the failure is `rollgate resume`, or the exact command that also clears
/// rollgate's annotations.
#[tokio::test]
async fn a_cordon_set_by_hand_after_rollgates_was_removed_stays() {
    let suite = unique("owner");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed");
    let book = |node: &str| {
        format!(
            "name = \"owner\"\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n\
             [command]\nrun = 'echo \"converging $ROLLGATE_NODE\"; test -e {fixed} || {{ echo \"package conflict\" >&2; exit 3; }}; echo converged'\nsafe-to-rerun = true\n",
            fixed = fixed.display()
        )
    };
    let lock = unique("owner-lock");
    let locked = [("ROLLGATE_LOCK_NAME", lock.as_str())];
    for (node, resume) in [(&names[0], true), (&names[1], false)] {
        let _ = std::fs::remove_file(&fixed);
        let playbook = write_playbook(dir.path(), &book(node));
        let run_args = ["run", "--yes", playbook.to_str().unwrap()];
        let (code, events, stderr) = rollgate_json(dir.path(), &run_args, &locked);
        assert_eq!(code, 4, "{stderr}");
        let failed_run = run_id(&events);
        assert!(
            stderr.contains(&format!("rollgate resume {failed_run}"))
                && stderr.contains("kubectl annotate node NODE rollgate.dev/cordoned-by-")
                && !stderr.contains("rerun the playbook"),
            "the advice names resume and the full hand-back command: {stderr}"
        );
        assert_eq!(annotation(node, "rollgate.dev/cordoned-by"), failed_run);
        // The operator uncordons by hand (the annotations stay); later someone cordons it.
        kubectl_ok(&["uncordon", node]);
        kubectl_ok(&["cordon", node]);
        std::fs::write(&fixed, "").unwrap();
        let (code, events, stderr) = if resume {
            rollgate_json(dir.path(), &["resume", &failed_run], &locked)
        } else {
            rollgate_json(dir.path(), &run_args, &locked)
        };
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(node_names(&events, "node-done"), vec![node.clone()]);
        assert!(
            unschedulable(node),
            "{node}: a cordon rollgate did not set stays (resume: {resume}): {stderr}"
        );
        assert!(
            named(&events, "warning").iter().any(|e| e["message"]
                .as_str()
                .unwrap()
                .contains("cordoned before this run (by kubectl")),
            "{stderr}"
        );
        kubectl_ok(&["uncordon", node]);
    }
}

/// The hand-back command rollgate advises gives a failed node back completely: schedulable and
/// without any `rollgate.dev/` annotation but `last-run`.
#[tokio::test]
async fn the_advised_hand_back_command_clears_what_a_failure_leaves() {
    let suite = unique("handback");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let node = &names[0];
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"handback\"\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n[command]\nrun = 'echo converging; echo \"package conflict\" >&2; exit 3'\n"
        ),
    );
    let (code, _, stderr) = run(dir.path(), &playbook);
    assert_eq!(code, 4, "{stderr}");
    let advice = stderr
        .lines()
        .find_map(|l| l.split_once("to give a node back by hand instead: "))
        .map(|(_, cmd)| cmd.trim().replace("NODE", node))
        .unwrap_or_else(|| panic!("no hand-back advice: {stderr}"));
    // Run it as the operator would, with the environment's kubectl first on PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(&env().kubectl, bin.join("kubectl")).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &advice])
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("KUBECONFIG", &env().kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{advice}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unschedulable(node));
    let left: Vec<String> = annotations(node)
        .as_object()
        .map(|a| {
            a.keys()
                .filter(|k| k.starts_with("rollgate.dev/") && *k != "rollgate.dev/last-run")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Issue 10, point 13: a workload already short of Ready replicas before the run (one of its
/// two pods can never be scheduled) does not fail the node at settle: settle waits for the
/// replicas that were Ready before the drain, as the monitor's baseline forgives what was
/// broken before.
#[tokio::test]
async fn settle_forgives_a_workload_already_short_before_the_drain() {
    let suite = unique("short");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let node = &names[0];
    let ns = TestNamespace::new("short");
    // Two replicas that refuse to share a node, and one node: one Ready, one Pending for good.
    kubectl_apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: short, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: short}}}}
  template:
    metadata: {{labels: {{app: short}}}}
    spec:
      nodeSelector: {{rollgate.test/suite: "{suite}"}}
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: short}}}}
            topologyKey: kubernetes.io/hostname
      containers: [{{name: c, image: app}}]
"#,
        ns = ns.0
    ));
    eventually("one Ready replica of short", MINUTE, || async {
        kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "deployment",
            "short",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .trim()
            == "1"
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"short\"\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n[drain]\ntimeout = \"30s\"\n[command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; sleep 1'\n[settle]\ntimeout = \"15s\"\n"
        ),
        &ns.0,
    );
    // The Ready replica can go nowhere else (one node of the suite, anti-affinity): a true
    // capacity blocker, built on purpose (settle's forgiveness is under test).
    let (code, events, stderr) = rollgate_json(
        dir.path(),
        &[
            "run",
            "--yes",
            "--ignore-preflight",
            "capacity",
            playbook.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(node_names(&events, "node-done"), vec![node.clone()]);
    assert_eq!(
        named(&events, "pod-evicted").len(),
        1,
        "the Ready replica was evicted: {stderr}"
    );
    assert!(!unschedulable(node));
}
