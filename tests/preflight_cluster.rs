//! `rollgate preflight` against the real cluster (issue 12): each blocker built for real — a
//! budget that never allows an eviction, an unmanaged pod, a node with a wrong host key, a
//! target newer than the apiserver, a wave whose pods do not fit — is named with its node,
//! object and fix (exit 9), a clean set of nodes passes (exit 0), and the ETA learns step
//! times from a real run's journal.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// `rollgate [GLOBAL] preflight PLAYBOOK -o json [FLAGS]`: (exit code, report, stderr).
fn preflight(
    dir: &std::path::Path,
    playbook: &std::path::Path,
    global: &[&str],
    flags: &[&str],
) -> (i32, Value, String) {
    let mut cmd = rollgate(dir);
    cmd.args(global)
        .arg("preflight")
        .arg(playbook)
        .args(["-o", "json"])
        .args(flags);
    let (code, stdout, stderr) = run_rollgate(cmd, 2 * MINUTE);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\n{stderr}"));
    (code, report, stderr)
}

fn findings<'a>(report: &'a Value, check: &str, severity: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["severity"] == severity)
        .collect()
}

/// An ssh_config whose known_hosts lists another node's key for `address` (and the right keys
/// for the others).
fn wrong_host_key(dir: &std::path::Path, address: &str) -> std::path::PathBuf {
    let known = std::fs::read_to_string(&env().known_hosts).unwrap();
    // `ADDRESS key`, or `[ADDRESS]:PORT key` when the environment's ports are moved.
    let (plain, bracketed) = (format!("{address} "), format!("[{address}]:"));
    let is_for = |l: &str| l.starts_with(&plain) || l.starts_with(&bracketed);
    let (host, _) = known
        .lines()
        .find(|l| is_for(l))
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("{address} is not in {}", env().known_hosts.display()));
    let other_key = known
        .lines()
        .find(|l| !is_for(l))
        .and_then(|l| l.split_once(' ').map(|(_, k)| k.to_owned()))
        .unwrap();
    let mut lines: Vec<String> = known
        .lines()
        .filter(|l| !is_for(l))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{host} {other_key}"));
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
    let ssh_config = dir.join("ssh_config");
    let base = std::fs::read_to_string(&env().ssh_config).unwrap();
    std::fs::write(
        &ssh_config,
        base.replace(
            &env().known_hosts.display().to_string(),
            &known_hosts.display().to_string(),
        ),
    )
    .unwrap();
    ssh_config
}

#[tokio::test]
async fn each_blocker_is_named_with_its_node_object_and_fix_and_a_clean_plan_passes() {
    let suite = unique("pre");
    let mut nodes = TestNodes::new(&suite);
    let (n1, n2, n3) = (
        format!("{suite}-n1"),
        format!("{suite}-n2"),
        format!("{suite}-n3"),
    );
    let ip1 = nodes.add(&n1, &["pool=app"], &[], "v1.35.4");
    nodes.add(&n2, &["pool=app"], &[], "v1.35.4");
    nodes.add(&n3, &["pool=spare"], &[], "v1.35.4");
    let ns = TestNamespace::new("pre");
    // A budget that never allows an eviction, over pods on the app nodes.
    kubectl_apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      nodeSelector: {{pool: app, rollgate.test/suite: "{suite}"}}
      containers: [{{name: c, image: db}}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: db, namespace: {ns}}}
spec:
  maxUnavailable: 0
  selector: {{matchLabels: {{app: db}}}}
"#,
        ns = ns.0
    ));
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Available",
        "deployment/db",
        "--timeout=60s",
    ]);
    // A pod no controller manages.
    ns.pod("loner", &n2, "app: loner");
    let dir = tempfile::tempdir().unwrap();
    let book = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"pre\"\ntarget-kubelet-version = \"v1.99.0\"\n[[phase]]\nname = \"app\"\nselector = \"rollgate.test/suite={suite},pool=app\"\nconcurrency = 2\n[command]\nrun = \"true\"\n"
        ),
        &ns.0,
    );
    let ssh_config = wrong_host_key(dir.path(), &ip1);
    let ssh_flag = ssh_config.display().to_string();
    let (code, report, stderr) = preflight(dir.path(), &book, &["--ssh-config", &ssh_flag], &[]);
    assert_eq!(code, 9, "{report:#}\n{stderr}");

    let budget: Vec<&Value> = findings(&report, "drain-blockers", "blocker")
        .into_iter()
        .filter(|f| f["object"] == format!("PodDisruptionBudget {}/db", ns.0))
        .collect();
    assert!(!budget.is_empty(), "{report:#}");
    assert!(
        budget[0]["message"]
            .as_str()
            .unwrap()
            .contains("maxUnavailable is 0"),
        "{budget:?}"
    );
    assert!(
        budget
            .iter()
            .all(|f| f["node"] == n1.as_str() || f["node"] == n2.as_str())
    );
    let loner = findings(&report, "drain-blockers", "blocker")
        .into_iter()
        .find(|f| f["object"] == format!("Pod {}/loner", ns.0))
        .unwrap_or_else(|| panic!("the unmanaged pod: {report:#}"));
    assert_eq!(loner["node"], n2.as_str());
    assert!(loner["fix"].as_str().unwrap().contains("force"), "{loner}");
    // Both app nodes drained at once, one budget over both.
    assert!(
        findings(&report, "drain-blockers", "warning")
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("at once")),
        "{report:#}"
    );

    let ssh = findings(&report, "ssh", "blocker");
    assert_eq!(ssh.len(), 1, "only n1 has the wrong key: {report:#}");
    assert_eq!(ssh[0]["node"], n1.as_str());
    assert!(
        ssh[0]["fix"].as_str().unwrap().contains("host key"),
        "{ssh:?}"
    );

    // The app pods may only run on the app pool: with both its nodes drained, nowhere.
    let capacity = findings(&report, "capacity", "blocker");
    assert!(
        capacity[0]["message"]
            .as_str()
            .unwrap()
            .contains("no place for 2 pod(s)"),
        "{report:#}"
    );

    let skew = findings(&report, "version-skew", "blocker");
    assert!(
        skew[0]["message"]
            .as_str()
            .unwrap()
            .contains("newer than the kube-apiserver"),
        "{report:#}"
    );

    // `plan` shows the same findings, and still exits 0.
    let mut plan = rollgate(dir.path());
    plan.args(["--ssh-config", &ssh_flag, "plan"])
        .arg(&book)
        .args(["-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(plan, 2 * MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let planned: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        findings(&planned["preflight"], "drain-blockers", "blocker")
            .iter()
            .any(|f| f["object"] == format!("Pod {}/loner", ns.0)),
        "{planned:#}"
    );

    // Ignored checks do not count.
    let mut cmd = rollgate(dir.path());
    cmd.args(["--ssh-config", &ssh_flag, "preflight"])
        .arg(&book)
        .args([
            "--ignore-preflight",
            "drain-blockers",
            "--ignore-preflight",
            "ssh",
            "--ignore-preflight",
            "version-skew",
            "--ignore-preflight",
            "capacity",
        ]);
    let (code, table, stderr) = run_rollgate(cmd, 2 * MINUTE);
    assert_eq!(code, 0, "{table}\n{stderr}");
    assert!(table.contains("BLOCKED (ignored)"), "{table}");

    // The spare node: nothing blocks, every check but version-skew ran.
    let clean = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"pre-clean\"\n[[phase]]\nname = \"spare\"\nselector = \"rollgate.test/suite={suite},pool=spare\"\n[command]\nrun = \"true\"\n"
        ),
        &ns.0,
    );
    let (code, report, stderr) = preflight(dir.path(), &clean, &[], &[]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert!(findings(&report, "ssh", "blocker").is_empty());
    assert_eq!(
        report["ran"],
        serde_json::json!(["drain-blockers", "capacity", "ssh", "eta"])
    );
    assert_eq!(report["skipped"][0][0], "version-skew");
    assert_eq!(
        report["eta"]["history_runs"], 0,
        "no earlier run: default step times"
    );
}

/// Which nodes the pods of `app` run on.
fn nodes_of(ns: &str, app: &str) -> Vec<String> {
    let out = kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn capacity_finds_the_wave_whose_pods_do_not_fit_and_the_eta_learns_from_a_real_run() {
    let suite = unique("cap");
    let (_nodes, names) = TestNodes::numbered(&suite, 4);
    let ns = TestNamespace::new("cap");
    // Three pods of 20 CPU on nodes of 32: one per node, one node left empty.
    kubectl_apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: big, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: big}}}}
  template:
    metadata: {{labels: {{app: big}}}}
    spec:
      nodeSelector: {{rollgate.test/suite: "{suite}"}}
      containers: [{{name: c, image: big, resources: {{requests: {{cpu: "20", memory: 1Gi}}}}}}]
"#,
        ns = ns.0
    ));
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Available",
        "deployment/big",
        "--timeout=60s",
    ]);
    let busy = nodes_of(&ns.0, "big");
    assert_eq!(busy.len(), 3, "{busy:?}");
    let listed = busy
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = tempfile::tempdir().unwrap();
    let book = |concurrency: usize| {
        write_playbook_in(
            dir.path(),
            &format!(
                "name = \"cap\"\n[[phase]]\nname = \"busy\"\nnodes = [{listed}]\nconcurrency = {concurrency}\n[drain]\ntimeout = \"30s\"\n[command]\nrun = \"{}\"\ntimeout = \"1m\"\n[settle]\nsoak = \"0s\"\n",
                upgrade_script()
            ),
            &ns.0,
        )
    };
    // Two at once: two pods of 20 CPU for the empty node (32) and the third busy node (12).
    let (code, report, stderr) = preflight(dir.path(), &book(2), &[], &["--no-ssh-check"]);
    assert_eq!(code, 9, "{report:#}\n{stderr}");
    let blocked = findings(&report, "capacity", "blocker");
    assert_eq!(blocked.len(), 1, "{report:#}");
    let message = blocked[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{}, {} at once", busy[0], busy[1]))
            && message.contains("no place for 1 pod(s)"),
        "{message}"
    );
    assert!(blocked[0]["fix"].as_str().unwrap().contains("concurrency"));
    // One at a time: each pod fits on the empty node; the worst wave is still said.
    let (code, report, stderr) = preflight(dir.path(), &book(1), &[], &["--no-ssh-check"]);
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let info = findings(&report, "capacity", "info");
    assert!(
        info[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("worst wave"),
        "{info:?}"
    );
    assert!(
        report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s[0] == "ssh"),
        "{report:#}"
    );

    // A real run of the playbook (on one node) leaves step times the ETA then uses.
    let single = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"cap\"\n[[phase]]\nname = \"one\"\nnodes = [\"{}\"]\n[command]\nrun = \"{}\"\ntimeout = \"1m\"\n[settle]\nsoak = \"0s\"\n",
            names.iter().find(|n| !busy.contains(n)).unwrap(),
            upgrade_script()
        ),
        &ns.0,
    );
    let mut run = rollgate(dir.path());
    run.args(["--log-format", "json", "run", "--yes"])
        .arg(&single);
    let (code, _, stderr) = run_rollgate(run, 2 * MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let (_, report, _) = preflight(dir.path(), &book(1), &[], &["--no-ssh-check"]);
    let eta = &report["eta"];
    assert_eq!(eta["history_runs"], 1, "{eta:#}");
    assert_eq!(eta["steps"]["command"]["samples"], 1, "{eta:#}");
    assert_eq!(eta["waves"][0]["rounds"], 3, "{eta:#}");
}

/// The messages the Slack stand-in recorded for `channel` (posts and updates), in order.
fn slack_bodies(channel: &str) -> Vec<Value> {
    let recorded: Vec<Value> = slack_recorded();
    recorded
        .into_iter()
        .filter(|r| r["body"]["channel"] == channel && r["failed"].is_null())
        .map(|r| {
            let mut body = r["body"].clone();
            body["path"] = r["path"].clone();
            body
        })
        .collect()
}

/// `rollgate --config SLACK --log-format json run --yes PLAYBOOK EXTRA` with no terminal (an
/// unattended run) and a lock of its own: (exit code, events, stderr).
fn unattended_run(
    dir: &std::path::Path,
    channel: &str,
    lock: &str,
    playbook: &std::path::Path,
    extra: &[&str],
) -> (i32, Vec<Value>, String) {
    let mut cmd = rollgate(dir);
    cmd.arg("--config")
        .arg(slack_config(dir, channel))
        .env("ROLLGATE_TEST_SLACK_TOKEN", &env().slack_token)
        .env("ROLLGATE_LOCK_NAME", lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(playbook)
        .args(extra);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    (code, events(&stderr), stderr)
}

/// The run's journal records (header left out).
fn journal(dir: &std::path::Path, run_id: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("runs").join(run_id).join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("event").is_some())
        .collect()
}

fn lock_holder(lock: &str) -> String {
    kubectl_ok(&[
        "-n",
        STATE_NAMESPACE,
        "get",
        "lease",
        &format!("rollgate-lock-{lock}"),
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

#[tokio::test]
async fn run_refuses_a_node_whose_budget_never_allows_an_eviction_and_starts_when_told_to_ignore_it()
 {
    let suite = unique("prerun");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("prerun");
    // One pod on the test's nodes whose budget allows no eviction ever.
    deployment_with_pdb(&ns.0, "db", &suite, 1, 0);
    let db_node = node_of_app(&ns.0, "db");
    let dir = tempfile::tempdir().unwrap();
    let book = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"prerun\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\n\
             [drain]\ntimeout = \"5s\"\n[command]\nrun = \"{}\"\ntimeout = \"1m\"\n[settle]\nsoak = \"0s\"\n",
            upgrade_script()
        ),
        &ns.0,
    );
    let channel = unique("#prerun");
    let lock = unique("prerun");
    let budget = format!("PodDisruptionBudget {}/db", ns.0);

    let (code, events, stderr) = unattended_run(dir.path(), &channel, &lock, &book, &[]);
    assert_eq!(code, 9, "refused by pre-flight: {stderr}");
    assert!(
        stderr.contains("refusing to start: pre-flight found")
            && stderr.contains("--ignore-preflight drain-blockers"),
        "{stderr}"
    );
    assert!(named(&events, "run-started").is_empty(), "{stderr}");
    for n in &names {
        assert!(!unschedulable(n), "{n} was not cordoned");
        assert_eq!(annotation(n, "rollgate.dev/cordoned-by"), "", "{n}");
    }
    assert_eq!(lock_holder(&lock), "", "the refused run released the lock");
    // The journal: the pre-flight event with the verdict and the blocker, then the refusal.
    let run_id = named(&events, "preflight")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let records = journal(dir.path(), &run_id);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["preflight", "run-refused"], "{records:#?}");
    let summary = &records[0]["summary"];
    let verdict = |check: &str| {
        summary["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .map(|c| c["verdict"].clone())
    };
    assert_eq!(
        verdict("drain-blockers"),
        Some("blocked".into()),
        "{summary:#}"
    );
    assert_eq!(verdict("ssh"), Some("ok".into()), "{summary:#}");
    let blocker = summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["blocker"] == true && f["object"] == budget.as_str())
        .unwrap_or_else(|| panic!("the budget is the blocker: {summary:#}"));
    assert_eq!(blocker["node"], db_node.as_str());
    assert!(
        records[1]["reason"].as_str().unwrap().contains(&budget),
        "{records:#?}"
    );
    // `status` tells it was refused.
    let mut status = rollgate(dir.path());
    status.args(["status", &run_id]);
    let (_, shown, _) = run_rollgate(status, MINUTE);
    assert!(
        shown.contains("refused: refusing to start: pre-flight"),
        "{shown}"
    );
    // Slack got one message: refused by pre-flight, naming the budget.
    let said = slack_bodies(&channel);
    assert_eq!(said.len(), 1, "{said:#?}");
    let text = said[0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "rollgate run `{run_id}`: *prerun* REFUSED by pre-flight"
        )) && text.contains(&budget)
            && text.contains("--ignore-preflight drain-blockers"),
        "{text}"
    );

    // Told to ignore the check, the run starts: the drain of the budget's node times out.
    let (code, events, stderr) = unattended_run(
        dir.path(),
        &channel,
        &lock,
        &book,
        &["--ignore-preflight", "drain-blockers"],
    );
    assert_eq!(code, 4, "the node held by the budget fails: {stderr}");
    let preflight = named(&events, "preflight");
    assert_eq!(preflight.len(), 1, "{stderr}");
    assert!(
        preflight[0]["summary"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "drain-blockers" && c["verdict"] == "ignored"),
        "{:#}",
        preflight[0]
    );
    assert_eq!(named(&events, "run-started").len(), 1, "{stderr}");
    let failed = named(&events, "node-failed");
    assert!(
        failed.iter().any(|f| f["node"] == db_node.as_str()
            && f["step"] == "drain"
            && f["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("{}/db", ns.0))),
        "{failed:#?}"
    );
    assert_eq!(lock_holder(&lock), "");
}

#[tokio::test]
async fn an_unattended_clean_run_posts_the_preflight_summary_with_its_first_message() {
    let suite = unique("presum");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let dir = tempfile::tempdir().unwrap();
    let book = write_playbook(
        dir.path(),
        &format!(
            "name = \"presum\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\"]\n\
             [command]\nrun = \"{}\"\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n[settle]\nsoak = \"0s\"\n",
            names[0],
            upgrade_script()
        ),
    );
    let channel = unique("#presum");
    let (code, events, stderr) =
        unattended_run(dir.path(), &channel, &unique("presum"), &book, &[]);
    assert_eq!(code, 0, "{stderr}");
    // In the event stream: pre-flight before the run started.
    let names_in_order: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .filter(|e| *e == "preflight" || *e == "run-started")
        .collect();
    assert_eq!(names_in_order, ["preflight", "run-started"], "{stderr}");
    let said = slack_bodies(&channel);
    let first = &said[0];
    assert_eq!(first["path"], "/api/chat.postMessage", "{said:#?}");
    assert!(
        first["thread_ts"].is_null(),
        "the run's own message: {first:#}"
    );
    let text = first["text"].as_str().unwrap();
    assert!(text.contains("*presum* (running)"), "{text}");
    assert!(
        text.contains(
            "pre-flight: drain-blockers *ok* · capacity *ok* · ssh *ok* · eta *ok* · version-skew *skipped*"
        ),
        "every check's verdict in the first message: {text}"
    );
    // The run's message keeps the summary when it is updated (chat.update names the message by
    // its ts, the thread of the run's replies, and the channel by its id).
    let root_ts = said[1]["thread_ts"].as_str().unwrap().to_owned();
    let recorded: Vec<Value> = slack_recorded();
    let updates: Vec<&Value> = recorded
        .iter()
        .filter(|r| r["path"] == "/api/chat.update" && r["body"]["ts"] == root_ts.as_str())
        .collect();
    assert!(!updates.is_empty(), "{said:#?}");
    assert!(
        updates.iter().all(|u| u["body"]["text"]
            .as_str()
            .unwrap()
            .contains("pre-flight: drain-blockers *ok*")),
        "{updates:#?}"
    );
}

#[tokio::test]
async fn at_a_terminal_the_findings_show_before_the_prompt_and_a_blocker_asks_nothing() {
    let suite = unique("preterm");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("preterm");
    // A pod no controller manages: the drain would refuse it.
    ns.pod("loner", &names[0], "app: loner");
    let dir = tempfile::tempdir().unwrap();
    let book = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"preterm\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\"]\n[command]\nrun = \"true\"\n",
            names[0]
        ),
        &ns.0,
    );
    let at_terminal = |extra: &[&str]| {
        let mut cmd = rollgate(dir.path());
        cmd.arg("run").arg(&book).args(extra);
        Terminal::start(&cmd)
    };
    // Refused: the table names the blocker, no question is asked, exit 9.
    let (code, screen) = at_terminal(&[]).wait(2 * MINUTE);
    let screen = screen.replace('\r', "");
    assert_eq!(code, 9, "{screen}");
    assert!(
        screen.contains("drain-blockers  BLOCKED")
            && screen.contains(&format!("BLOCKER  [drain-blockers] {}", names[0]))
            && screen.contains(&format!("Pod {}/loner", ns.0)),
        "{screen}"
    );
    assert!(!screen.contains("[y/N]"), "nothing to confirm: {screen}");
    assert!(
        screen.contains("refusing to start: pre-flight found 1 blocker(s)"),
        "{screen}"
    );
    // Ignored: the table comes first, then the question; declined, nothing changes.
    let mut term = at_terminal(&["--ignore-preflight", "drain-blockers"]);
    term.wait_for("upgrade 1 node(s)? [y/N]", 2 * MINUTE);
    let screen = term.screen().replace('\r', "");
    let table = screen
        .find("drain-blockers  BLOCKED (ignored)")
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(
        table < screen.find("upgrade 1 node(s)?").unwrap(),
        "{screen}"
    );
    term.type_line("n");
    let (code, screen) = term.wait(MINUTE);
    assert_eq!(code, 6, "declined: {screen}");
    assert!(!unschedulable(&names[0]));
    // A dry run checks too, and refuses the same way.
    let mut dry = rollgate(dir.path());
    dry.args(["--log-format", "json", "run", "--dry-run"])
        .arg(&book);
    let (code, _, stderr) = run_rollgate(dry, 2 * MINUTE);
    assert_eq!(code, 9, "{stderr}");
    let events = events(&stderr);
    assert_eq!(named(&events, "preflight").len(), 1, "{stderr}");
    assert_eq!(named(&events, "run-refused").len(), 1, "{stderr}");
    assert!(named(&events, "dry-run-action").is_empty(), "{stderr}");
}

#[tokio::test]
async fn resume_checks_the_nodes_left_a_blocker_refuses_it_and_the_run_stays_resumable() {
    let suite = unique("preres");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("preres");
    let dir = tempfile::tempdir().unwrap();
    let book = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"preres\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = \"{}\"\ntimeout = \"1m\"\n[settle]\nsoak = \"0s\"\n",
            names[0],
            names[1],
            upgrade_script()
        ),
        &ns.0,
    );
    let lock = unique("preres");
    // The run stops dead right after node 1's cordon (the failpoint holds it), then dies.
    crash_run_after(dir.path(), &book, &lock, &names[0], "cordon").await;
    assert!(unschedulable(&names[0]), "rollgate's cordon stays");
    // Meanwhile node 2 gets a pod whose budget never allows its eviction.
    held_by_pdb(&ns.0, &names[1]);
    let resume = || {
        let mut cmd = rollgate(dir.path());
        cmd.env("ROLLGATE_LOCK_NAME", &lock)
            .args(["--log-format", "json", "resume"]);
        let (code, _, stderr) = run_rollgate(cmd, 2 * MINUTE);
        (code, events(&stderr), stderr)
    };
    let (code, events, stderr) = resume();
    assert_eq!(code, 9, "{stderr}");
    let summary = &named(&events, "preflight")[0]["summary"];
    let blockers: Vec<&Value> = summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["blocker"] == true)
        .collect();
    assert!(
        blockers.iter().any(|f| f["node"] == names[1].as_str()
            && f["object"] == format!("PodDisruptionBudget {}/held", ns.0)),
        "{summary:#}"
    );
    assert!(
        blockers.iter().all(|f| f["node"] != names[0].as_str()),
        "the node rollgate cordoned is no blocker: {summary:#}"
    );
    assert!(named(&events, "node-started").is_empty(), "{stderr}");
    assert!(unschedulable(&names[0]) && !unschedulable(&names[1]));
    // The refused resume changed nothing: once the budget is gone, resume finishes the run.
    kubectl_ok(&["-n", &ns.0, "delete", "deployment,pdb", "held"]);
    let (code, events, stderr) = resume();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(named(&events, "node-done").len(), 2, "{stderr}");
    for n in &names {
        assert!(!unschedulable(n), "{n}");
    }
}
