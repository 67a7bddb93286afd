//! `rollgate run` on the real test cluster with a real sshd per node (issue 4).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs `rollgate run PLAYBOOK --yes --log-format json` and returns (exit code, events, stderr).
fn run(dir: &Path, playbook: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let mut cmd = rollgate(dir);
    cmd.args(["--log-format", "json", "run", "--yes"])
        .args(extra)
        .arg(playbook);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    (code, events(&stderr), stderr)
}

/// The largest number of nodes in flight at once, from NodeStarted / NodeDone / NodeFailed events.
fn max_in_flight(events: &[Value], nodes: &[String]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events.iter().filter(|e| {
        e["node"]
            .as_str()
            .is_some_and(|n| nodes.iter().any(|x| x == n))
    }) {
        match e["event"].as_str().unwrap() {
            "node-started" => {
                now += 1;
                max = max.max(now);
            }
            "node-done" | "node-failed" => now -= 1,
            _ => {}
        }
    }
    max
}

/// Watches the suite's nodes and records the most that were cordoned at the same time.
struct CordonWatch {
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CordonWatch {
    async fn stop(self) -> usize {
        self.task.abort();
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn watch_cordoned(suite: &str) -> CordonWatch {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::watcher;
    let api: kube::Api<Node> = kube::Api::all(client().await);
    let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&max);
    let config = watcher::Config::default().labels(&format!("rollgate.test/suite={suite}"));
    let task = tokio::spawn(async move {
        let mut cordoned = std::collections::HashMap::<String, bool>::new();
        let mut stream = watcher(api, config).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let mut update = |n: &Node| {
                let name = n.metadata.name.clone().unwrap_or_default();
                cordoned.insert(
                    name,
                    n.spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false),
                );
            };
            match event {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => update(&n),
                watcher::Event::Delete(n) => {
                    cordoned.remove(n.metadata.name.as_deref().unwrap_or(""));
                }
                _ => {}
            }
            let now = cordoned.values().filter(|c| **c).count();
            seen.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        }
    });
    CordonWatch { max, task }
}

// Multi-threaded: the node watcher runs while this thread blocks on the rollgate process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_node_two_phase_rollout_upgrades_every_node_control_plane_first() {
    let suite = unique("roll");
    let mut nodes = TestNodes::new(&suite);
    let cps: Vec<String> = (1..=2).map(|i| format!("{suite}-cp{i}")).collect();
    let workers: Vec<String> = (1..=4).map(|i| format!("{suite}-w{i}")).collect();
    for cp in &cps {
        nodes.add(
            cp,
            &["node-role.kubernetes.io/control-plane="],
            &["node-role.kubernetes.io/control-plane:NoSchedule"],
            "v1.35.4",
        );
    }
    for (i, w) in workers.iter().enumerate() {
        nodes.add(
            w,
            &[if i < 2 { "zone=a" } else { "zone=b" }],
            &[],
            "v1.35.4",
        );
    }
    let ns = TestNamespace::new("roll");
    deployment_with_pdb(&ns.0, "web", &suite, 4, 1);
    deployment_with_pdb(&ns.0, "queue", &suite, 2, 1);
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      nodeSelector: {{rollgate.test/suite: \"{suite}\"}}\n      tolerations: [{{operator: Exists}}]\n      containers: [{{name: a, image: agent}}]\n",
        ns = ns.0
    ));
    // A pod with emptyDir data and a pod no controller manages (the playbook allows both).
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: cache, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: cache}}}}\n  template:\n    metadata: {{labels: {{app: cache}}}}\n    spec:\n      nodeSelector: {{rollgate.test/suite: \"{suite}\"}}\n      volumes: [{{name: scratch, emptyDir: {{}}}}]\n      containers: [{{name: c, image: cache}}]\n",
        ns = ns.0
    ));
    ns.pod("loner", &workers[3], "");
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Available",
        "deployment/cache",
        "--timeout=60s",
    ]);
    let cordon_watch = watch_cordoned(&suite).await;
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"six nodes\"\ntarget-kubelet-version = \"v1.36.3\"\n\
             [[phase]]\nname = \"control-plane\"\nselector = \"rollgate.test/suite={suite}, node-role.kubernetes.io/control-plane\"\n\
             [[phase]]\nname = \"workers\"\nselector = \"rollgate.test/suite={suite}, !node-role.kubernetes.io/control-plane\"\nconcurrency = 2\n\
             [drain]\ntimeout = \"1m\"\ndelete-emptydir-data = true\nforce = true\n\
             [command]\nrun = 'echo \"$ROLLGATE_NODE $SSH_CONNECTION\" >> {markers} && {script}'\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n[ready]\ntimeout = \"30s\"\n[settle]\ntimeout = \"1m\"\n",
            script = upgrade_script(),
            markers = markers.display()
        ),
        &ns.0,
    );
    let (code, events, stderr) = run(dir.path(), &playbook, &[]);
    assert_eq!(code, 0, "run failed:\n{stderr}");
    let most_cordoned = cordon_watch.stop().await;
    assert!(
        (1..=2).contains(&most_cordoned),
        "a watcher saw {most_cordoned} nodes cordoned at once (concurrency is 2)"
    );

    // The remote command ran exactly once on each node, through that node's own sshd.
    let markers = std::fs::read_to_string(&markers).unwrap();
    for n in cps.iter().chain(&workers) {
        let lines: Vec<&str> = markers
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(n.as_str()))
            .collect();
        assert_eq!(lines.len(), 1, "{n} ran the command once: {markers}");
        let server_ip = lines[0].split_whitespace().nth(3).unwrap();
        let internal_ip = kubectl_ok(&[
            "get",
            "node",
            n,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ]);
        assert_eq!(
            server_ip,
            internal_ip.trim(),
            "{n} was reached on its own address"
        );
    }
    assert!(
        kubectl(&["-n", &ns.0, "get", "pod", "loner"]).status.code() != Some(0),
        "the unmanaged pod was evicted (force)"
    );
    assert!(
        named(&events, "warning")
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("unmanaged pod")),
        "{stderr}"
    );

    for n in cps.iter().chain(&workers) {
        assert_eq!(kubelet(n), "v1.36.3", "{n} upgraded");
        assert!(!unschedulable(n), "{n} uncordoned");
        let a = annotations(n);
        assert!(
            a.get("rollgate.dev/cordoned-by").is_none() && a.get("rollgate.dev/step").is_none(),
            "{n}: {a}"
        );
        assert!(a["rollgate.dev/last-run"].as_str().is_some(), "{n}: {a}");
    }
    let done: Vec<&str> = named(&events, "node-done")
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(done.len(), 6);
    let last_cp_done = events
        .iter()
        .rposition(|e| e["event"] == "node-done" && cps.iter().any(|c| e["node"] == c.as_str()))
        .unwrap();
    let first_worker = events
        .iter()
        .position(|e| {
            e["event"] == "node-started" && workers.iter().any(|w| e["node"] == w.as_str())
        })
        .unwrap();
    assert!(
        last_cp_done < first_worker,
        "the control plane finishes before workers start"
    );
    assert_eq!(max_in_flight(&events, &cps), 1);
    assert_eq!(max_in_flight(&events, &workers), 2, "workers two at a time");
    assert!(
        named(&events, "pod-evicted").len() >= 6,
        "web and queue pods were evicted"
    );
    assert!(
        named(&events, "pod-skipped")
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("DaemonSet")),
        "DaemonSet pods are skipped"
    );
    assert!(
        events.iter().all(|e| e["run_id"].is_string()),
        "every line has the run id"
    );
    // Every evicted pod has a Ready replacement: the Deployments are fully available.
    let ready = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "deployments",
        "-o",
        "jsonpath={range .items[*]}{.status.readyReplicas}/{.spec.replicas} {end}",
    ]);
    assert_eq!(ready.trim(), "1/1 2/2 4/4", "cache, queue and web are back");
    // The per-node log has the remote command's output.
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = std::fs::read_to_string(
        dir.path()
            .join("runs")
            .join(run_id)
            .join("nodes")
            .join(format!("{}.log", workers[0])),
    )
    .unwrap();
    assert!(
        log.contains("stdout: [") && log.contains("installing kubelet v1.36.3"),
        "{log}"
    );
}

#[tokio::test]
async fn a_pdb_blocking_past_the_timeout_fails_the_node_naming_the_budget_or_falls_back_to_delete()
{
    let suite = unique("pdb");
    let mut nodes = TestNodes::new(&suite);
    let n1 = format!("{suite}-n1");
    let n2 = format!("{suite}-n2");
    nodes.add(&n1, &[], &[], "v1.35.4");
    nodes.add(&n2, &[], &["hold:NoSchedule"], "v1.35.4"); // keeps the pods on n1
    let ns = TestNamespace::new("pdb");
    deployment_with_pdb(&ns.0, "db", &suite, 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let book = |policy: &str| {
        format!(
            "name = \"pdb\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\", \"{n2}\"]\n[drain]\ntimeout = \"3s\"\non-pdb-timeout = \"{policy}\"\ngrace-period = \"0s\"\n[command]\nrun = \"true\"\n[settle]\ntimeout = \"30s\"\n"
        )
    };
    let playbook = write_playbook_in(dir.path(), &book("fail"), &ns.0);
    // The budget that never allows an eviction is what this test drains into, and with n2
    // tainted its pod has nowhere to go: pre-flight rightly blocks both; they are the point.
    let (code, events, stderr) = run(
        dir.path(),
        &playbook,
        &[
            "--ignore-preflight",
            "drain-blockers",
            "--ignore-preflight",
            "capacity",
        ],
    );
    assert_eq!(code, 4, "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("PodDisruptionBudget {}/db", ns.0))
            && reason.contains(&format!("{}/db-", ns.0)),
        "names the PDB and its pods: {reason}"
    );
    assert!(
        named(&events, "eviction-blocked")
            .iter()
            .any(|e| e["pdb"] == format!("{}/db", ns.0))
    );
    assert!(unschedulable(&n1), "the failed node stays cordoned");
    let a = annotations(&n1);
    assert_eq!(a["rollgate.dev/failed-step"], "drain");
    assert!(
        a["rollgate.dev/reason"]
            .as_str()
            .unwrap()
            .contains("PodDisruptionBudget"),
        "{a}"
    );
    assert!(
        !unschedulable(&n2) && annotations(&n2).get("rollgate.dev/cordoned-by").is_none(),
        "the second node is not started"
    );
    assert_eq!(named(&events, "node-started").len(), 1);

    // With on-pdb-timeout = "disable-eviction" the blocked pod is deleted and the node finishes.
    kubectl_ok(&["taint", "node", &n2, "hold:NoSchedule-"]);
    let playbook = write_playbook_in(dir.path(), &book("disable-eviction"), &ns.0);
    // (With disable-eviction the budget is only a pre-flight warning; n2 is schedulable again.)
    // The runner's roles do not delete pods: the run refuses before it changes anything...
    let (code, _, stderr) = run(dir.path(), &playbook, &["--show-output"]);
    assert_eq!(code, 11, "{stderr}");
    assert!(
        stderr.contains(
            "delete pods (in all namespaces): granted by ClusterRole rollgate-disable-eviction"
        ) && stderr.contains("--disable-eviction | kubectl apply -f -"),
        "{stderr}"
    );
    // ...and with the optional role bound (`rollgate rbac --disable-eviction`) it runs.
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", kubeconfig_of(Identity::RunnerDisableEviction))
        .args(["--log-format", "json", "run", "--yes", "--show-output"])
        .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    let events = support::events(&stderr);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        named(&events, "warning").iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("despite PodDisruptionBudget")),
        "{stderr}"
    );
    assert!(!unschedulable(&n1));
}

#[tokio::test]
async fn a_failing_remote_command_stops_the_run_and_leaves_the_node_cordoned_with_the_reason() {
    let suite = unique("fail");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"fail\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n[command]\nrun = \"echo converging; echo 'chef: package conflict' >&2; exit 3\"\n"
        ),
    );
    let (code, events, stderr) = run(dir.path(), &playbook, &[]);
    assert_eq!(code, 4, "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert_eq!(failed[0]["step"], "command");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited with status 3") && reason.contains("chef: package conflict"),
        "{reason}"
    );
    assert!(unschedulable(&names[0]));
    assert_eq!(
        annotations(&names[0])["rollgate.dev/failed-step"],
        "command"
    );
    for n in &names[1..] {
        assert!(!unschedulable(n), "{n} was not started");
    }
    assert_eq!(named(&events, "run-finished")[0]["not_started"], 2);
    assert!(
        stderr.contains("nodes left cordoned") && stderr.contains(&names[0]),
        "the operator is told what is left: {stderr}"
    );
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn the_command_timeout_kills_the_remote_process_and_facts_arrive_as_environment() {
    let suite = unique("tmo");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let n1 = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let pids = dir.path().join("pids");
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"timeout\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n[command]\n\
             run = 'echo \"node=$ROLLGATE_NODE phase=$ROLLGATE_PHASE custom=$CUSTOM\"; sleep 300 & echo \"$$ $!\" > {pids}; wait'\n\
             timeout = \"2s\"\nenv = {{ CUSTOM = \"x; touch {marker}\" }}\n",
            pids = pids.display(),
            marker = marker.display()
        ),
    );
    let started = std::time::Instant::now();
    let (code, events, stderr) = run(dir.path(), &playbook, &[]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by the timeout"
    );
    let reason = named(&events, "node-failed")[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("killed after its 2s timeout"), "{reason}");
    let out: Vec<&str> = named(&events, "command-output")
        .iter()
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert!(
        out.contains(&format!("node={n1} phase=all custom=x; touch {}", marker.display()).as_str()),
        "{out:?}"
    );
    assert!(
        !marker.exists(),
        "an environment value is never run as shell"
    );
    let pids = std::fs::read_to_string(&pids).unwrap();
    for pid in pids.split_whitespace() {
        assert!(!alive(pid), "remote process {pid} survived the timeout");
    }
}

#[tokio::test]
async fn dry_run_reports_every_write_and_command_and_changes_nothing() {
    let suite = unique("dry");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let (n1, n2) = (names[0].clone(), names[1].clone());
    let ns = TestNamespace::new("dry");
    deployment_with_pdb(&ns.0, "web", &suite, 2, 1);
    let pods_before = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].metadata.uid}",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"dry\"\ntarget-kubelet-version = \"v1.36.3\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\n[command]\nrun = \"touch /tmp/should-not-exist-{suite}\"\n"
        ),
        &ns.0,
    );
    let (code, events, stderr) = run(dir.path(), &playbook, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    let actions: Vec<String> = named(&events, "dry-run-action")
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for want in [
        "PATCH node",
        "POST eviction (policy/v1) for pod",
        "SSH 127.0.",
        "WAIT up to",
        "reporting kubelet v1.36.3",
        "spec.unschedulable=false",
    ] {
        assert!(
            actions.iter().any(|a| a.contains(want)),
            "missing {want:?} in {actions:#?}"
        );
    }
    assert!(!Path::new(&format!("/tmp/should-not-exist-{suite}")).exists());
    assert!(!unschedulable(&n1) && !unschedulable(&n2));
    assert!(annotations(&n1).get("rollgate.dev/cordoned-by").is_none());
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].metadata.uid}"
        ]),
        pods_before,
        "no pod was evicted"
    );
    // A dry run cut short (here: its end removed from the journal) is never "resumed" into a
    // real run. It does not become the `latest` run that `resume` finds without a run id.
    assert!(!dir.path().join("runs/latest").exists());
    let run_id = std::fs::read_to_string(dir.path().join("runs/latest-dry-run")).unwrap();
    let journal = dir
        .path()
        .join("runs")
        .join(run_id.trim())
        .join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"run-finished\""))
        .collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    let mut resume = rollgate(dir.path());
    resume.args(["resume", run_id.trim()]);
    let (code, _, stderr) = run_rollgate(resume, MINUTE);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("dry run"), "{stderr}");
    assert!(!unschedulable(&n1) && !unschedulable(&n2));
}

#[tokio::test]
async fn refusals_version_mismatch_and_precordoned_nodes() {
    let suite = unique("misc");
    let mut nodes = TestNodes::new(&suite);
    let bare_node = format!("{suite}-bare");
    let old_node = format!("{suite}-old");
    let pre_node = format!("{suite}-pre");
    nodes.add(&bare_node, &[], &[], "v1.35.4");
    nodes.add(&old_node, &[], &[], "v1.35.4");
    nodes.add(&pre_node, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("misc");
    ns.pod("bare", &bare_node, "");
    let dir = tempfile::tempdir().unwrap();
    let book = |node: &str, target: &str| {
        format!(
            "name = \"misc\"\n{target}\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n[command]\nrun = \"true\"\n[ready]\ntimeout = \"3s\"\n"
        )
    };

    // A pod no controller manages: the drain refuses before evicting anything. (Pre-flight
    // names it as a drain blocker: ignored, since the drain's own refusal is under test.)
    let (code, events, stderr) = run(
        dir.path(),
        &write_playbook_in(dir.path(), &book(&bare_node, ""), &ns.0),
        &["--ignore-preflight", "drain-blockers"],
    );
    assert_eq!(code, 4, "{stderr}");
    let reason = named(&events, "node-failed")[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(&format!("{}/bare: not managed by a controller", ns.0))
            && reason.contains("force = true"),
        "{reason}"
    );
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "pod",
            "bare",
            "-o",
            "jsonpath={.spec.nodeName}"
        ]),
        bare_node,
        "nothing was evicted"
    );

    // A node that comes back with the wrong kubelet version fails. (A target newer than the
    // apiserver is a version-skew blocker: ignored, the wait-ready check is under test.)
    let (code, events, stderr) = run(
        dir.path(),
        &write_playbook_in(
            dir.path(),
            &book(&old_node, "target-kubelet-version = \"v1.99.0\""),
            &ns.0,
        ),
        &["--ignore-preflight", "version-skew"],
    );
    assert_eq!(code, 4, "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed[0]["step"], "wait-ready");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("reports kubelet v1.35.4, expected v1.99.0"),
        "{}",
        failed[0]
    );

    // A node cordoned by someone else stays cordoned after its upgrade.
    kubectl_ok(&["cordon", &pre_node]);
    let (code, events, stderr) = run(
        dir.path(),
        &write_playbook_in(dir.path(), &book(&pre_node, ""), &ns.0),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(named(&events, "warning").iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .contains("cordoned before this run (by kubectl")
    }));
    assert!(
        unschedulable(&pre_node),
        "rollgate does not uncordon a node it did not cordon"
    );
    assert!(
        annotations(&pre_node)
            .get("rollgate.dev/precordoned")
            .is_none(),
        "its own annotations are cleaned up"
    );
}

/// One graceful stop signal (SIGTERM, as a service manager sends it; Ctrl-C at a terminal is
/// tested through a pseudo-terminal in tests/command_cluster.rs): the node in flight finishes, no new one starts, the journal ends
/// with the stop, the lock is released (a new run takes it at once), exit 6; resume finishes.
async fn one_stop_signal_finishes_the_node_in_flight(signal: &str) {
    let suite = unique(&format!("sig{}", signal.to_lowercase()));
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"sig\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n[command]\nrun = \"sleep 3\"\n"
        ),
    );
    let lock = unique("sig-lock");
    let mut cmd = rollgate(dir.path());
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = names[0].clone();
    eventually("the first node to be cordoned", MINUTE, || {
        let first = first.clone();
        async move { unschedulable(&first) }
    })
    .await;
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let events = events(&stderr);
    assert_eq!(
        named(&events, "node-done").len(),
        1,
        "the node in flight finished: {stderr}"
    );
    assert!(!unschedulable(&names[0]));
    assert!(!unschedulable(&names[1]) && !unschedulable(&names[2]));
    assert_eq!(named(&events, "run-finished")[0]["not_started"], 2);
    let last = journal_events(dir.path(), &names[0]);
    assert_eq!(last.last().unwrap()["event"], "node-done");
    // The lease has no holder any more: the resumed run takes it without waiting.
    let lease = kubectl_ok(&[
        "-n",
        STATE_NAMESPACE,
        "get",
        "lease",
        &format!("rollgate-lock-{lock}"),
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease.trim(), "", "the lock was released");
    let mut resume = rollgate(dir.path());
    resume
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "resume"]);
    let (code, _, stderr) = run_rollgate(resume, 2 * MINUTE);
    assert_eq!(code, 0, "{stderr}");
    for n in &names {
        assert!(journal_has(dir.path(), n, "step-finished", "settle"), "{n}");
    }
}

#[tokio::test]
async fn sigterm_stops_like_one_ctrl_c_releases_the_lock_and_resume_finishes() {
    one_stop_signal_finishes_the_node_in_flight("TERM").await;
}

#[tokio::test]
async fn a_host_key_mismatch_or_a_dead_sshd_fails_the_node_before_any_command_runs() {
    let suite = unique("ssh");
    let mut nodes = TestNodes::new(&suite);
    let n1 = format!("{suite}-n1");
    let n2 = format!("{suite}-n2");
    let ip1 = nodes.add(&n1, &[], &[], "v1.35.4");
    nodes.add(&n2, &[], &[], "v1.35.4");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let book = |node: &str| {
        format!(
            "name = \"ssh\"\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n[command]\nrun = \"touch {}\"\n",
            marker.display()
        )
    };

    // Host key mismatch: a known_hosts that lists another key for the node's address.
    let (_, other_key) = std::fs::read_to_string(&env().known_hosts)
        .unwrap()
        .lines()
        .find(|l| !l.starts_with(&format!("{ip1} ")))
        .map(|l| l.split_once(' ').unwrap())
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{ip1} {other_key}\n")).unwrap();
    let ssh_config = dir.path().join("ssh_config");
    let base = std::fs::read_to_string(&env().ssh_config).unwrap();
    std::fs::write(
        &ssh_config,
        base.replace(
            &env().known_hosts.display().to_string(),
            &known_hosts.display().to_string(),
        ),
    )
    .unwrap();
    let mut cmd = rollgate(dir.path());
    // Pre-flight's ssh check finds the bad key first: ignored, the command step's own
    // refusal to connect is under test.
    cmd.arg("--ssh-config")
        .arg(&ssh_config)
        .args(["--log-format", "json", "run", "--yes"])
        .args(["--ignore-preflight", "ssh"])
        .arg(write_playbook(dir.path(), &book(&n1)));
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 4, "{stderr}");
    let ev = events(&stderr);
    let reason = named(&ev, "node-failed")[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("cannot connect to") && reason.contains(&ip1),
        "{reason}"
    );
    assert!(unschedulable(&n1) && annotations(&n1)["rollgate.dev/failed-step"] == "command");
    assert!(!marker.exists(), "nothing ran on a host with the wrong key");

    // sshd down: the node fails at the command step, nothing runs.
    let pid = std::fs::read_to_string(env().state_dir.join(format!("pids/sshd-{n2}.pid"))).unwrap();
    std::process::Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap();
    eventually("sshd to stop", Duration::from_secs(10), || {
        let pid = pid.trim().to_owned();
        async move { !alive(&pid) }
    })
    .await;
    let (code, ev, stderr) = run(
        dir.path(),
        &write_playbook(dir.path(), &book(&n2)),
        // The dead sshd is a pre-flight ssh blocker too: ignored, as above.
        &["--ignore-preflight", "ssh"],
    );
    assert_eq!(code, 4, "{stderr}");
    let reason = named(&ev, "node-failed")[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("cannot connect to"), "{reason}");
    assert!(unschedulable(&n2));
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_second_runner_is_refused_while_the_first_holds_the_lock_and_takes_over_once_it_expires()
{
    let suite = unique("lock");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let (n1, n2) = (names[0].clone(), names[1].clone());
    let lock = unique("shared");
    let dir1 = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let book = |node: &str, run: &str| {
        format!(
            "name = \"lock\"\n[[phase]]\nname = \"one\"\nnodes = [\"{node}\"]\n[command]\nrun = \"{run}\"\n"
        )
    };
    let first_playbook = write_playbook(dir1.path(), &book(&n1, "sleep 60"));
    let second_playbook = write_playbook(dir2.path(), &book(&n2, "true"));
    let runner = |dir: &Path, playbook: &Path| {
        let mut cmd = rollgate(dir);
        cmd.env("ROLLGATE_LOCK_NAME", &lock)
            .args([
                "--log-format",
                "json",
                "run",
                "--yes",
                "--lock-duration",
                "10s",
            ])
            .arg(playbook);
        cmd
    };
    let mut first = runner(dir1.path(), &first_playbook)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let n1c = n1.clone();
    eventually("the first run to start its node", MINUTE, || {
        let n1 = n1c.clone();
        async move { unschedulable(&n1) }
    })
    .await;

    let (code, _, stderr) = run_rollgate(runner(dir2.path(), &second_playbook), MINUTE);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("another rollgate run holds the cluster lock")
            && stderr.contains(" pid ")
            && stderr.contains("since"),
        "{stderr}"
    );
    assert!(!unschedulable(&n2), "the refused run touched nothing");

    // The first runner dies without releasing; its lease expires and the second takes over.
    first.kill().unwrap();
    let _ = first.wait();
    let killed_at = std::time::Instant::now();
    // Renewed every sixth of its 10 s, the lease is still valid for at least 8.3 s after the
    // kill (a start-up slowed by a loaded machine still lands inside it).
    let (code, _, stderr) = run_rollgate(runner(dir2.path(), &second_playbook), MINUTE);
    assert!(
        killed_at.elapsed() < Duration::from_millis(8300),
        "the check came too late to prove anything"
    );
    assert_eq!(
        code, 7,
        "refused while the dead runner's lease lasts: {stderr}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (code, _, stderr) = run_rollgate(runner(dir2.path(), &second_playbook), MINUTE);
    assert_eq!(code, 0, "took over the expired lease: {stderr}");
    assert!(!unschedulable(&n2));
    // The journal of the killed run tells where it stopped; the finished one says so too.
    let status = |dir: &Path| {
        let mut cmd = rollgate(dir);
        cmd.args(["status", "-o", "json"]);
        let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let killed = status(dir1.path());
    assert_eq!(
        killed["state"], "running",
        "no end in a killed run's journal: {killed}"
    );
    assert_eq!(killed["nodes"][&n1]["state"], "in-progress");
    assert_eq!(killed["nodes"][&n1]["step"], "command");
    assert!(killed["nodes"][&n1]["since"].as_str().is_some());
    let finished = status(dir2.path());
    assert_eq!(finished["state"], "succeeded", "{finished}");
    assert_eq!(finished["nodes"][&n2]["state"], "done");
    // From another machine (no local state): the run's copy in the cluster says the same.
    let run_id = std::fs::read_to_string(dir2.path().join("runs/latest")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = rollgate(elsewhere.path());
    cmd.args(["status", run_id.trim(), "-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let from_cluster: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        from_cluster, finished,
        "the cluster copy matches the journal"
    );
    // The killed run's node stays cordoned, recorded as rollgate's.
    assert!(unschedulable(&n1) && annotations(&n1)["rollgate.dev/step"] == "command");
    kubectl_ok(&["uncordon", &n1]);
}

/// Kills the runner with SIGKILL when `at` says so, then `rollgate resume` finishes the run.
async fn kill_and_resume(kill_step: &str) {
    kill_and_resume_on(kill_step, false).await;
}

/// `elsewhere`: resume from another machine (an empty state directory): the journal and the
/// playbook come from the run's copy in the cluster.
async fn kill_and_resume_on(case: &str, elsewhere: bool) {
    let suite = unique(&format!("kill-{case}"));
    // "safe-command": killed during a command the playbook marks safe to rerun, whose record
    // on the node is then lost; "reinstalled": the same with a command not safe to rerun.
    let (kill_step, safe) = match case {
        "safe-command" => ("command", true),
        "reinstalled" => ("command", false),
        step => (step, false),
    };
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("kill");
    // A pod on node 1 whose PDB holds the drain until the test lifts it.
    held_by_pdb(&ns.0, &names[0]);
    if kill_step != "drain" {
        kubectl_ok(&["-n", &ns.0, "delete", "pdb", "held"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"kill\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[drain]\ntimeout = \"2m\"\n[command]\nrun = 'echo \"$ROLLGATE_NODE\" >> {}; sleep 2'\nsafe-to-rerun = {safe}\n[settle]\nsoak = \"4s\"\n",
            names[0],
            names[1],
            markers.display()
        ),
        &ns.0,
    );
    let lock = unique("kill-lock");
    let mut cmd = rollgate(dir.path());
    // Step boundaries with no natural hold: the failpoint stops the runner dead right there.
    let boundary = matches!(kill_step, "cordon" | "wait-ready");
    if boundary {
        cmd.env("ROLLGATE_FAILPOINT", format!("pause-after:{kill_step}"));
    }
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args([
            "--log-format",
            "json",
            "run",
            "--yes",
            "--lock-duration",
            "3s",
        ])
        // The held pod is pinned to node 1 by hostname: no other node can take it (a true
        // capacity blocker, and the test's design); killed mid-drain, its budget never allows
        // the eviction until the test lifts it (a true drain blocker).
        .args(["--ignore-preflight", "capacity"])
        .args(if kill_step == "drain" {
            &["--ignore-preflight", "drain-blockers"][..]
        } else {
            &[]
        })
        .arg(&playbook);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let n1 = names[0].clone();
    let step = kill_step.to_owned();
    let marker_file = markers.clone();
    let state_dir = dir.path().to_owned();
    eventually(&format!("node 1 to reach {kill_step}"), MINUTE, || {
        let (n1, step, marker_file) = (n1.clone(), step.clone(), marker_file.clone());
        let state_dir = state_dir.clone();
        async move {
            let a = annotations(&n1);
            if boundary {
                // The step finished and was journaled; the failpoint holds the runner there.
                return journal_has(&state_dir, &n1, "step-finished", &step);
            }
            match step.as_str() {
                // Settling: uncordoned, upgraded, soaking.
                "settle" => a.get("rollgate.dev/last-run").is_some(),
                // The command has really started on the node (it wrote its marker).
                "command" => {
                    a["rollgate.dev/step"] == "command"
                        && std::fs::read_to_string(&marker_file).is_ok_and(|m| m.contains(&n1))
                }
                s => a["rollgate.dev/step"] == s,
            }
        }
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    if boundary {
        let last = last_journal_event(dir.path(), &names[0]);
        assert!(
            last["event"] == "step-finished" && last["step"] == kill_step,
            "killed exactly after {kill_step}: {last}"
        );
    }
    if kill_step == "drain" {
        kubectl_ok(&["-n", &ns.0, "delete", "pdb", "held"]);
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // the killed runner's lock expires
    let run_id = std::fs::read_to_string(dir.path().join("runs/latest")).unwrap();
    let other_machine = tempfile::tempdir().unwrap();
    let resume = |extra: &[&str]| {
        let mut cmd = rollgate(if elsewhere {
            other_machine.path()
        } else {
            dir.path()
        });
        cmd.env("ROLLGATE_LOCK_NAME", &lock)
            .args(["--log-format", "json", "resume"])
            // Resume checks the nodes left: the pinned pod still has nowhere to go (as above).
            .args(["--ignore-preflight", "capacity"])
            .args(extra);
        if elsewhere {
            cmd.arg(run_id.trim());
        }
        run_rollgate(cmd, 2 * MINUTE)
    };
    let record = format!("/var/tmp/rollgate-{}-{}", run_id.trim(), names[0]);
    if kill_step == "command" {
        // The command outlived the runner: it finishes on the node and records its status.
        let status = format!("{record}/status");
        eventually(
            "the command to finish on the node without rollgate",
            MINUTE,
            || {
                let status = status.clone();
                async move { std::fs::read_to_string(&status).is_ok_and(|s| s.trim() == "0") }
            },
        )
        .await;
    }
    if case == "command" && !elsewhere {
        // Drop the journal's last lines, as a cluster copy a few seconds old would: the node's
        // annotations still say its command started, and its record on the node decides.
        let path = dir
            .path()
            .join("runs")
            .join(run_id.trim())
            .join("journal.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let cut = text
            .lines()
            .position(|l| l.contains("\"step-started\"") && l.contains("\"command\""))
            .unwrap();
        let kept: Vec<&str> = text.lines().take(cut).collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    }
    if matches!(case, "safe-command" | "reinstalled") {
        // The node was reinstalled: its record of the command is gone.
        std::fs::remove_dir_all(&record).unwrap();
    }
    let (mut code, _, mut stderr) = resume(&[]);
    if case == "reinstalled" {
        assert_eq!(
            code, 2,
            "a command that may have run, with no record left, is not rerun blindly: {stderr}"
        );
        assert!(
            stderr.contains(&names[0])
                && stderr.contains("no record")
                && stderr.contains("--command-done"),
            "{stderr}"
        );
        (code, _, stderr) = resume(&["--command-done", &names[0]]);
    } else if kill_step == "command" {
        assert!(
            stderr.contains("its record decides") || stderr.contains("safe to rerun"),
            "resume says what it found on the node: {stderr}"
        );
    }
    assert_eq!(code, 0, "resume after a kill during {kill_step}: {stderr}");
    for n in &names {
        assert!(
            !unschedulable(n),
            "{n} is uncordoned after resume ({kill_step})"
        );
    }
    let markers = std::fs::read_to_string(&markers).unwrap();
    for n in &names {
        // A command safe to rerun whose record is gone runs again on its node; otherwise
        // resume reattaches to the record and nothing runs twice.
        let expected = if safe && *n == names[0] { 2 } else { 1 };
        assert_eq!(
            markers.lines().filter(|l| l == n).count(),
            expected,
            "the command ran {expected} time(s) on {n} ({case}): {markers}"
        );
    }
    if elsewhere {
        // A third machine writes the report of the whole run from the cluster copy.
        let third = tempfile::tempdir().unwrap();
        let mut cmd = rollgate(third.path());
        cmd.args(["report", run_id.trim(), "-o", "markdown"]);
        let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
        assert_eq!(code, 0, "{stderr}");
        let md = std::fs::read_to_string(stdout.trim()).unwrap();
        assert!(md.contains("2 done"), "{md}");
        let journal = std::fs::read_to_string(
            third
                .path()
                .join("runs")
                .join(run_id.trim())
                .join("journal.jsonl"),
        )
        .unwrap();
        assert!(
            md.contains("resumed 1 time"),
            "the report knows the run was resumed: {md}\n{journal}"
        );
    }
}

#[tokio::test]
async fn after_sigkill_right_after_cordon_resume_completes() {
    kill_and_resume("cordon").await;
}

#[tokio::test]
async fn after_sigkill_before_uncordon_resume_uncordons_without_rerunning_the_command() {
    kill_and_resume("wait-ready").await;
}

#[tokio::test]
async fn a_run_killed_on_one_machine_is_resumed_and_reported_from_another_via_the_cluster_copy() {
    kill_and_resume_on("command", true).await;
}

#[tokio::test]
async fn after_sigkill_mid_drain_resume_drains_again_and_completes() {
    kill_and_resume("drain").await;
}

#[tokio::test]
async fn after_sigkill_during_the_command_it_finishes_on_the_node_and_resume_reattaches_without_rerunning()
 {
    kill_and_resume("command").await;
}

#[tokio::test]
async fn after_sigkill_during_a_command_safe_to_rerun_whose_record_is_gone_resume_runs_it_again_unasked()
 {
    kill_and_resume_on("safe-command", false).await;
}

#[tokio::test]
async fn after_sigkill_during_the_command_on_a_node_since_reinstalled_resume_asks_for_command_done()
{
    kill_and_resume_on("reinstalled", false).await;
}

#[tokio::test]
async fn after_sigkill_during_settle_resume_completes() {
    kill_and_resume("settle").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollgate_pause_holds_new_nodes_until_rollgate_resume() {
    let suite = unique("pause");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"pause\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n[command]\nrun = \"sleep 2\"\n"
        ),
    );
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let (state, n1) = (dir.path().to_owned(), names[0].clone());
    eventually("node 1 to start its command", MINUTE, || {
        let (state, n1) = (state.clone(), n1.clone());
        async move { journal_has(&state, &n1, "step-started", "command") }
    })
    .await;
    let mut pause = rollgate(dir.path());
    pause.args(["pause", "--reason", "checking the message queue"]);
    let (code, _, stderr) = run_rollgate(pause, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("paused"), "{stderr}");
    // Node 1 finishes; nothing else starts while paused.
    node_done(dir.path(), &names[0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        journal_events(dir.path(), &names[1]).is_empty(),
        "node 2 waits"
    );
    assert!(child.try_wait().unwrap().is_none(), "the run waits");
    let mut status = rollgate(dir.path());
    status.args(["status", "-o", "json"]);
    let (_, stdout, _) = run_rollgate(status, MINUTE);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["state"], "paused", "{status}");
    assert!(
        status["decisions"][0]
            .as_str()
            .unwrap()
            .contains("pause by operator: checking the message queue"),
        "{status}"
    );
    let mut resume = rollgate(dir.path());
    resume.arg("resume");
    let (code, _, stderr) = run_rollgate(resume, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            started.elapsed() < 2 * MINUTE,
            "the run finishes after resume"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    for n in &names {
        assert!(!unschedulable(n), "{n}");
        assert!(journal_has(dir.path(), n, "step-finished", "settle"), "{n}");
    }
    // Pausing a run that is over is refused.
    let mut late = rollgate(dir.path());
    late.arg("pause");
    let (code, _, stderr) = run_rollgate(late, MINUTE);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
}

#[tokio::test]
async fn old_run_copies_in_the_cluster_are_pruned_per_lock_keeping_the_newest() {
    let suite = unique("prune");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let n1 = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"prune\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n[command]\nrun = \"true\"\n"
        ),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[state]\nkeep-runs = 2\n").unwrap();
    let lock = unique("prune-lock");
    let mut run_ids = Vec::new();
    for _ in 0..3 {
        let mut cmd = rollgate(dir.path());
        cmd.env("ROLLGATE_LOCK_NAME", &lock)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json", "run", "--yes"])
            .arg(&playbook);
        let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
        assert_eq!(code, 0, "{stdout}{stderr}");
        run_ids.push(
            named(&events(&stderr), "run-started")[0]["run_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        std::thread::sleep(Duration::from_millis(1100)); // run ids have a one-second resolution
    }
    let listed = kubectl_ok(&[
        "-n",
        STATE_NAMESPACE,
        "get",
        "configmaps",
        "-l",
        &format!("rollgate.dev/lock={lock}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<&str> = listed.split_whitespace().collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("rollgate-run-{}", run_ids[1]),
            format!("rollgate-run-{}", run_ids[2])
        ],
        "the two newest copies remain"
    );
    // `rollgate runs`: here, all three (two also in the cluster); elsewhere, the cluster's two.
    let listed = |state_dir: &Path| -> Vec<Value> {
        let mut cmd = rollgate(state_dir);
        cmd.args(["runs", "-o", "json"]);
        let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
        assert_eq!(code, 0, "{stderr}");
        let all: Vec<Value> = serde_json::from_str(&stdout).unwrap();
        all.into_iter()
            .filter(|r| run_ids.iter().any(|id| r["run_id"] == id.as_str()))
            .collect()
    };
    let here = listed(dir.path());
    assert_eq!(here.len(), 3, "{here:?}");
    assert_eq!(here[0]["run_id"], run_ids[2].as_str(), "newest first");
    assert!(
        here.iter()
            .all(|r| r["local"] == true && r["state"] == "succeeded")
    );
    assert_eq!(here.iter().filter(|r| r["cluster"] == true).count(), 2);
    let elsewhere = tempfile::tempdir().unwrap();
    let there = listed(elsewhere.path());
    assert_eq!(there.len(), 2, "{there:?}");
    assert!(
        there
            .iter()
            .all(|r| r["local"] == false && r["lock"] == lock.as_str())
    );
    assert_eq!(there[1]["done"], 1);
}

#[tokio::test]
async fn force_unlock_takes_a_held_lock_loudly_and_the_runner_that_lost_it_stops_at_the_next_safe_point()
 {
    let suite = unique("force");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let lock = unique("forced");
    let dir1 = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let first_playbook = write_playbook(
        dir1.path(),
        &format!(
            "name = \"first\"\n[[phase]]\nname = \"one\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = \"sleep 6\"\n",
            names[0], names[1]
        ),
    );
    let second_playbook = write_playbook(
        dir2.path(),
        &format!(
            "name = \"second\"\n[[phase]]\nname = \"one\"\nnodes = [\"{}\"]\n[command]\nrun = \"true\"\n",
            names[2]
        ),
    );
    let mut first = rollgate(dir1.path());
    first
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&first_playbook)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    let n1 = names[0].clone();
    eventually("the first run to start its first node", MINUTE, || {
        let n1 = n1.clone();
        async move { unschedulable(&n1) }
    })
    .await;
    let mut second = rollgate(dir2.path());
    second
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes", "--force-unlock"])
        .arg(&second_playbook);
    let (code, _, stderr) = run_rollgate(second, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("WARNING: --force-unlock"), "{stderr}");
    // The first runner lost its lock: its node in flight finishes its command, then stops
    // before the next step (recorded, not written to the node), and no other node starts.
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    let events = events(&stderr);
    assert!(named(&events, "node-done").is_empty(), "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert_eq!(
        failed[0]["step"], "wait-ready",
        "the command finished first"
    );
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("lost the cluster lock: taken by another run") && reason.contains("run "),
        "{reason}"
    );
    assert!(
        journal_events(dir1.path(), &names[1]).is_empty(),
        "node 2 never started"
    );
    assert!(unschedulable(&names[0]), "stopped before uncordon");
    assert_eq!(
        annotation(&names[0], "rollgate.dev/step"),
        "command",
        "nothing written to the node after the lock was lost"
    );
    for n in &names[1..] {
        assert!(!unschedulable(n), "{n}");
    }
    kubectl_ok(&["uncordon", &names[0]]);
}
