//! Controlling a live run from anywhere: `rollgate pause`, `resume` and `abort` run from a
//! second state directory (as from another machine, sharing only the cluster) reach the run
//! through its object in the cluster; the run obeys, answers, records who asked, and says so
//! in Slack. The health monitor is on (scoped to each test's nodes).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// `rollgate ARGS` from another machine: its own, empty state directory; only the cluster is
/// shared, as the ServiceAccount bound to the shipped control roles (it cannot drain).
fn elsewhere(other: &Path, args: &[&str]) -> (i32, String) {
    let mut cmd = rollgate(other);
    cmd.env("KUBECONFIG", kubeconfig_of(Identity::Controller))
        .args(args);
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    (code, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_from_another_machine_go_through_the_cluster_and_say_who() {
    let suite = unique("ctl-pause");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let channel = format!("#{suite}");
    let mut child = spawn_printing_run(
        dir.path(),
        &suite,
        &slack_config(dir.path(), &channel),
        3,
        &[(SLACK_TOKEN_VAR, &env().slack_token)],
    );
    command_started(dir.path(), &names[0]).await;
    let run = latest_run_id(dir.path());
    let asked = Instant::now();
    let (code, stderr) = elsewhere(
        other.path(),
        &["pause", &run, "--reason", "checking the message queue"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("run {run} paused")), "{stderr}");
    eprintln!("paused from elsewhere, answered in {:?}", asked.elapsed());
    // Asked again: said plainly, nothing changes.
    let (code, stderr) = elsewhere(other.path(), &["pause", &run]);
    assert_eq!(
        (code, stderr.contains("already paused")),
        (0, true),
        "{stderr}"
    );
    // Node 1 finishes; node 2 waits while paused.
    node_done(dir.path(), &names[0]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        journal_events(dir.path(), &names[1]).is_empty(),
        "node 2 waits"
    );
    // `status` from the other machine (the cluster copy) shows the pause with who and why.
    let mut status = rollgate(other.path());
    status.args(["status", &run, "-o", "json"]);
    let (_, stdout, _) = run_rollgate(status, MINUTE);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    let decision = status["decisions"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        decision.contains("pause by operator: checking the message queue (paused by ")
            && decision.contains('@'),
        "{status}"
    );
    let (code, stderr) = elsewhere(other.path(), &["resume", &run]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("run {run} resumed")), "{stderr}");
    assert_eq!(wait_exit(&mut child, 2 * MINUTE), Some(0));
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let events = events(&stderr);
    let resumed = named(&events, "resumed");
    assert_eq!(resumed.len(), 1, "{stderr}");
    assert!(resumed[0]["by"].as_str().unwrap().contains('@'), "{stderr}");
    for n in &names {
        assert!(!unschedulable(n), "{n}");
    }
    // Slack says who paused and who resumed it.
    let texts = slack_texts(&channel).join("\n");
    assert!(
        texts.contains("checking the message queue (paused by ") && texts.contains("resumed by "),
        "{texts}"
    );
    // A run that is over cannot be paused; the error says so and how to see it.
    let (code, stderr) = elsewhere(other.path(), &["pause", &run]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not running"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_from_another_machine_stops_the_node_in_flight_at_its_safe_point() {
    let suite = unique("ctl-abort");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let channel = format!("#{suite}");
    let mut child = spawn_printing_run(
        dir.path(),
        &suite,
        &slack_config(dir.path(), &channel),
        4,
        &[(SLACK_TOKEN_VAR, &env().slack_token)],
    );
    command_started(dir.path(), &names[0]).await;
    let run = latest_run_id(dir.path());
    let (code, stderr) = elsewhere(
        other.path(),
        &["abort", &run, "--reason", "VM creation broke"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("run {run} aborting")), "{stderr}");
    assert_eq!(
        wait_exit(&mut child, 2 * MINUTE),
        Some(5),
        "exit 5, as a gate abort"
    );
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let events = events(&stderr);
    // The remote command was not cut: it ran to its end, then the node stopped.
    let output: Vec<&str> = named(&events, "command-output")
        .iter()
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(output.contains(&"upgrading 4"), "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("an operator aborted the run: VM creation broke (aborted by "),
        "{stderr}"
    );
    assert!(unschedulable(&names[0]), "the stopped node stays cordoned");
    assert!(
        annotation(&names[0], "rollgate.dev/reason").contains("VM creation broke"),
        "the node says why"
    );
    assert!(
        journal_events(dir.path(), &names[1]).is_empty(),
        "node 2 never started"
    );
    let stopping = named(&events, "stopping");
    assert_eq!(stopping[0]["reason"], "operator-abort", "{stderr}");
    let finished = named(&events, "run-finished");
    assert_eq!(
        finished[0]["outcome"]["stopped"], "operator-abort",
        "{stderr}"
    );
    let texts = slack_texts(&channel).join("\n");
    assert!(
        texts.contains("ABORTED by an operator")
            && texts.contains("VM creation broke (aborted by "),
        "{texts}"
    );
}
