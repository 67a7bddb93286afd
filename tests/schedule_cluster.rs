//! Maintenance windows and the run deadline on the real test cluster, with injected time
//! (`ROLLGATE_CLOCK_FILE`): a window that closes mid-run stops new nodes, the node in flight
//! finishes, and the run continues when the window reopens (or exits resumable and
//! `rollgate resume` continues). With `finish-by-end`, a node whose p95 (from a real earlier
//! run of the playbook) passes the window's end does not start, and pre-flight says so.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Times in a window open 01:00–05:00 UTC on weekdays (2026-11-25 is a Wednesday).
const INSIDE: &str = "2026-11-25T01:00:00Z";
const AFTER: &str = "2026-11-25T05:30:00Z";
const NEXT_NIGHT: &str = "2026-11-26T01:10:00Z";

fn set_clock(file: &Path, at: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, at).unwrap();
    std::fs::rename(&tmp, file).unwrap(); // atomic: the runner never reads half a time
}

fn started(dir: &Path, node: &str) -> bool {
    journal_has_event(dir, node, "node-started")
}

async fn until_started(dir: &Path, node: &str) {
    let (dir, node) = (dir.to_owned(), node.to_owned());
    eventually(&format!("{node} to start"), MINUTE, || {
        let (dir, node) = (dir.clone(), node.clone());
        async move { started(&dir, &node) }
    })
    .await;
}

fn journal_has_event(dir: &Path, node: &str, event: &str) -> bool {
    journal_events(dir, node)
        .iter()
        .any(|v| v["event"] == event)
}

/// All journal lines of the latest run (not only one node's).
fn journal(dir: &Path) -> Vec<serde_json::Value> {
    let runs = dir.join("runs");
    let id = std::fs::read_to_string(runs.join("latest")).unwrap();
    std::fs::read_to_string(runs.join(id.trim()).join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn position(lines: &[serde_json::Value], event: &str, node: Option<&str>) -> usize {
    lines
        .iter()
        .position(|v| v["event"] == event && node.is_none_or(|n| v["node"] == n))
        .unwrap_or_else(|| panic!("no {event} {node:?} in the journal: {lines:#?}"))
}

struct Setup {
    nodes: TestNodes,
    names: Vec<String>,
    dir: tempfile::TempDir,
    clock: std::path::PathBuf,
    playbook: std::path::PathBuf,
}

fn setup(suite: &str, outside: &str) -> Setup {
    let suite = unique(suite);
    let (nodes, names) = TestNodes::numbered(&suite, 3);
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    set_clock(&clock, INSIDE);
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"windowed\"\n[[phase]]\nname = \"all\"\nnodes = [{}]\nconcurrency = 1\n[command]\nrun = \"sleep 3\"\n[window]\ndays = [\"mon-fri\"]\nstart = \"01:00\"\nend = \"05:00\"\ntimezone = \"UTC\"\noutside = \"{outside}\"\n",
            list.join(", ")
        ),
    );
    Setup {
        nodes,
        names,
        dir,
        clock,
        playbook,
    }
}

fn spawn_run(s: &Setup, extra: &[&str]) -> std::process::Child {
    let mut cmd = rollgate(s.dir.path());
    cmd.env("ROLLGATE_CLOCK_FILE", &s.clock)
        .args(["--log-format", "json", "run", "--yes"])
        .args(extra)
        .arg(&s.playbook)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(s.dir.path().join("stderr.log")).unwrap());
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_closing_mid_run_holds_new_nodes_until_it_reopens() {
    let s = setup("window-wait", "wait");
    let mut child = spawn_run(&s, &[]);
    let (dir, n1) = (s.dir.path().to_owned(), s.names[0].clone());
    until_started(&dir, &n1).await;
    // The window closes while node 1 is in flight: it finishes, no other node starts.
    set_clock(&s.clock, AFTER);
    eventually("the run to wait for the window", MINUTE, || {
        let dir = dir.clone();
        async move { journal(&dir).iter().any(|v| v["event"] == "window-closed") }
    })
    .await;
    assert!(journal_has_event(&dir, &n1, "node-done"), "node 1 finished");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !started(&dir, &s.names[1]),
        "no node starts outside the window"
    );
    assert!(child.try_wait().unwrap().is_none(), "the run waits");
    let closed = journal(&dir)
        .into_iter()
        .find(|v| v["event"] == "window-closed")
        .unwrap();
    assert_eq!(closed["reopens_at"], "2026-11-26T01:00:00Z", "{closed}");
    let mut status = rollgate(&dir);
    status.args(["status", "-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(status, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("waiting for the maintenance window (reopens 2026-11-26T01:00:00Z)"),
        "{stdout}"
    );
    // The next night: the run goes on by itself.
    set_clock(&s.clock, NEXT_NIGHT);
    let code = wait_exit(&mut child, 2 * MINUTE).unwrap_or(-1);
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let lines = journal(&dir);
    let reopened = position(&lines, "window-opened", None);
    assert!(position(&lines, "window-closed", None) < reopened);
    assert!(reopened < position(&lines, "node-started", Some(&s.names[1])));
    // The run report shows the wait and why.
    let id = std::fs::read_to_string(dir.join("runs/latest")).unwrap();
    let md = std::fs::read_to_string(dir.join("runs").join(id.trim()).join("report.md")).unwrap();
    assert!(
        md.contains("## Waits") && md.contains("outside the maintenance window"),
        "{md}"
    );
    for n in &s.names {
        assert!(journal_has_event(&dir, n, "node-done"), "{n} done");
        assert!(!unschedulable(n), "{n} uncordoned");
    }
    drop(s.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_exit_stops_resumable_and_resume_continues_in_the_next_window() {
    let s = setup("window-exit", "exit");
    let mut child = spawn_run(&s, &[]);
    let (dir, n1) = (s.dir.path().to_owned(), s.names[0].clone());
    until_started(&dir, &n1).await;
    set_clock(&s.clock, AFTER);
    let code = wait_exit(&mut child, MINUTE).unwrap_or(-1);
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert_eq!(code, 8, "exit 8: stopped resumable: {stderr}");
    assert!(journal_has_event(&dir, &n1, "node-done"), "node 1 finished");
    assert!(!started(&dir, &s.names[1]));
    assert!(!unschedulable(&n1), "the finished node is uncordoned");
    // Resuming outside the window stops again at once, changing nothing.
    let resume = || {
        let mut cmd = rollgate(&dir);
        cmd.env("ROLLGATE_CLOCK_FILE", &s.clock)
            .args(["--log-format", "json", "resume"]);
        run_rollgate(cmd, 2 * MINUTE)
    };
    let (code, _, stderr) = resume();
    assert_eq!(code, 8, "{stderr}");
    assert!(!started(&dir, &s.names[1]));
    // In the next window, resume finishes the run.
    set_clock(&s.clock, NEXT_NIGHT);
    let (code, _, stderr) = resume();
    assert_eq!(code, 0, "{stderr}");
    for n in &s.names {
        assert!(journal_has_event(&dir, n, "node-done"), "{n} done");
        assert!(!unschedulable(n));
    }
    drop(s.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passed_deadline_stops_new_nodes_and_a_new_deadline_lets_resume_finish() {
    let s = setup("deadline", "wait");
    // The deadline is 1h after the (injected) start.
    let mut child = spawn_run(&s, &["--deadline", "1h"]);
    let (dir, n1) = (s.dir.path().to_owned(), s.names[0].clone());
    until_started(&dir, &n1).await;
    set_clock(&s.clock, "2026-11-25T02:00:00Z"); // inside the window, past the deadline
    let code = wait_exit(&mut child, MINUTE).unwrap_or(-1);
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert_eq!(code, 8, "{stderr}");
    let lines = journal(&dir);
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "stopping" && v["reason"] == "deadline"),
        "{lines:#?}"
    );
    assert!(!started(&dir, &s.names[1]));
    // The journal keeps the deadline: resume alone stops again; a new one lets it finish.
    let resume = |extra: &[&str]| {
        let mut cmd = rollgate(&dir);
        cmd.env("ROLLGATE_CLOCK_FILE", &s.clock)
            .args(["--log-format", "json", "resume"])
            .args(extra);
        run_rollgate(cmd, 2 * MINUTE)
    };
    // Pre-flight's eta check sees the passed deadline too (a blocker: no time left); it is
    // ignored so the run's own deadline stop (exit 8) is what is tested.
    let (code, _, stderr) = resume(&["--ignore-preflight", "eta"]);
    assert_eq!(code, 8, "{stderr}");
    let (code, _, stderr) = resume(&["--deadline", "2h"]);
    assert_eq!(code, 0, "{stderr}");
    for n in &s.names {
        assert!(!unschedulable(n));
    }
    drop(s.nodes);
}

/// Two seconds before the window closes: less than any node of the test cluster takes.
const LATE: &str = "2026-11-25T04:59:58Z";
/// Ten minutes before it closes: more than a node takes.
const TEN_LEFT: &str = "2026-11-25T04:50:00Z";

/// A one-node playbook named "finish-by" with a `finish-by-end` window (mon-fri 01:00-05:00
/// UTC); its command is the fake upgrade (prints, keeps the node down 3 s).
fn finish_by_playbook(dir: &Path, node: &str, outside: &str) -> std::path::PathBuf {
    write_playbook(
        dir,
        &format!(
            "name = \"finish-by\"\n[[phase]]\nname = \"all\"\nnodes = [\"{node}\"]\n[command]\nrun = \"{}\"\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"3\" }}\n[settle]\nsoak = \"0s\"\n[window]\ndays = [\"mon-fri\"]\nstart = \"01:00\"\nend = \"05:00\"\ntimezone = \"UTC\"\noutside = \"{outside}\"\nfinish-by-end = true\n",
            upgrade_script()
        ),
    )
}

/// A real run of the playbook at the window's opening (4 h left: even the default p95 of
/// 14 min fits), which leaves its step times in the state directory. Returns the node's
/// duration by its steps and the command's, in seconds, from the run's journal.
fn history_run(dir: &Path, clock: &Path, playbook: &Path) -> (f64, f64) {
    set_clock(clock, INSIDE);
    let mut cmd = rollgate(dir);
    cmd.env("ROLLGATE_CLOCK_FILE", clock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(playbook);
    let (code, _, stderr) = run_rollgate(cmd, 2 * MINUTE);
    assert_eq!(code, 0, "the history run: {stderr}");
    let lines = journal(dir);
    let secs = |v: &serde_json::Value| v["elapsed_ms"].as_f64().unwrap() / 1000.0;
    let steps: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["event"] == "step-finished")
        .collect();
    assert_eq!(steps.len(), 6, "every step timed once: {lines:#?}");
    let command = steps.iter().find(|v| v["step"] == "command").unwrap();
    assert!(secs(command) >= 3.0, "the command takes its 3 s: {command}");
    (steps.iter().map(|v| secs(v)).sum(), secs(command))
}

/// A run that a failing assertion must not leave waiting for a window forever.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_json(dir: &Path) -> serde_json::Value {
    let mut status = rollgate(dir);
    status.args(["status", "-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(status, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn one_event(lines: &[serde_json::Value], event: &str) -> serde_json::Value {
    let found: Vec<&serde_json::Value> = lines.iter().filter(|v| v["event"] == event).collect();
    assert_eq!(found.len(), 1, "one {event}: {lines:#?}");
    found[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn finish_by_end_holds_a_node_whose_p95_passes_the_window_end_until_the_next_window() {
    let suite = unique("finish-by-wait");
    let (nodes, names) = TestNodes::numbered(&suite, 1);
    let n = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let playbook = finish_by_playbook(dir.path(), &n, "wait");
    let (per_node, _) = history_run(dir.path(), &clock, &playbook);

    // Two seconds before the close, the node (p95 ≈ its history run) must not start.
    set_clock(&clock, LATE);
    let mut cmd = rollgate(dir.path());
    cmd.env("ROLLGATE_CLOCK_FILE", &clock)
        .args(["--log-format", "text", "run", "--yes"])
        .arg(&playbook)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let d = dir.path().to_owned();
    eventually("the run to wait for the next window", MINUTE, || {
        let d = d.clone();
        async move { journal(&d).iter().any(|v| v["event"] == "window-closed") }
    })
    .await;
    let lines = journal(&d);
    let held = one_event(&lines, "finish-by-end");
    assert_eq!(held["node"], n.as_str(), "{held}");
    assert_eq!(held["closes_in_secs"], 2, "{held}");
    assert_eq!(held["closes_at"], "2026-11-25T05:00:00Z", "{held}");
    assert_eq!(held["from_runs"], 1, "{held}");
    let needs = held["needs_secs"].as_f64().unwrap();
    assert!(
        (needs - per_node.floor()).abs() <= 1.0,
        "p95 {needs} s from the history run's {per_node} s: {held}"
    );
    assert!(position(&lines, "finish-by-end", None) < position(&lines, "window-closed", None));
    // It stays held: never started, never cordoned, the run waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!started(&d, &n), "no node starts");
    assert!(!unschedulable(&n), "never cordoned");
    assert!(child.0.try_wait().unwrap().is_none(), "the run waits");
    let status = status_json(&d);
    assert_eq!(
        status["state"], "waiting for the maintenance window (reopens 2026-11-26T01:00:00Z)",
        "{status:#}"
    );
    let why = status["finish_by_end"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.starts_with(&format!("node {n} would need"))
            && why.contains("p95 from 1 earlier run(s)")
            && why.contains("the window closes in 2s"),
        "{status:#}"
    );
    let terminal = std::fs::read_to_string(d.join("stderr.log")).unwrap();
    assert!(
        terminal.contains(&format!("NOT STARTED (finish-by-end): node {n} would need")),
        "{terminal}"
    );

    // The next night has hours left: the run goes on by itself and finishes.
    set_clock(&clock, NEXT_NIGHT);
    let code = wait_exit(&mut child.0, 2 * MINUTE).unwrap_or(-1);
    let terminal = std::fs::read_to_string(d.join("stderr.log")).unwrap();
    assert_eq!(code, 0, "{terminal}");
    let lines = journal(&d);
    assert!(position(&lines, "window-opened", None) < position(&lines, "node-started", Some(&n)));
    assert!(journal_has_event(&d, &n, "node-done"));
    assert!(!unschedulable(&n));
    let id = std::fs::read_to_string(d.join("runs/latest")).unwrap();
    let md = std::fs::read_to_string(d.join("runs").join(id.trim()).join("report.md")).unwrap();
    assert!(
        md.contains(&format!("finish-by-end: node {n} would need")),
        "{md}"
    );
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn finish_by_end_with_outside_exit_stops_before_the_node_and_resume_starts_it_with_time_left()
{
    let suite = unique("finish-by-exit");
    let (nodes, names) = TestNodes::numbered(&suite, 1);
    let n = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let clock = d.join("clock");
    let playbook = finish_by_playbook(&d, &n, "exit");
    history_run(&d, &clock, &playbook);

    // Slack (the test environment's stand-in) hears why, in a channel of this test's own.
    let channel = unique("finish-by");
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[slack]\nchannel = \"{channel}\"\ntoken-env = \"ROLLGATE_TEST_SLACK_TOKEN\"\napi-url = \"{}/api/\"\n",
            env().slack_url
        ),
    )
    .unwrap();
    set_clock(&clock, LATE);
    let run = |args: &[&str]| {
        let mut cmd = rollgate(&d);
        cmd.env("ROLLGATE_CLOCK_FILE", &clock)
            .env("ROLLGATE_TEST_SLACK_TOKEN", &env().slack_token)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .args(args);
        run_rollgate(cmd, 2 * MINUTE)
    };
    // Pre-flight's eta check foresees the same (2 s of window, a 9 s node, outside = "exit"):
    // a blocker, ignored so the run's own finish-by-end stop is what is tested.
    let (code, _, stderr) = run(&[
        "run",
        "--yes",
        "--ignore-preflight",
        "eta",
        playbook.to_str().unwrap(),
    ]);
    assert_eq!(code, 8, "stopped resumable: {stderr}");
    let lines = journal(&d);
    let held = one_event(&lines, "finish-by-end");
    assert_eq!(
        (&held["node"], &held["closes_in_secs"]),
        (&n.as_str().into(), &2.into())
    );
    let stop = position(&lines, "stopping", None);
    assert_eq!(lines[stop]["reason"], "outside-window");
    assert!(position(&lines, "finish-by-end", None) < stop);
    assert!(!started(&d, &n), "the node did not start");
    assert!(!unschedulable(&n), "never cordoned");
    let recorded: Vec<serde_json::Value> = slack_recorded();
    let said = format!("not started (finish-by-end): node {n} would need");
    assert!(
        recorded
            .iter()
            .any(|r| r["body"]["channel"] == channel.as_str()
                && r["body"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&said))),
        "no Slack message {said:?} in {channel}: {recorded:#?}"
    );
    let status = status_json(&d);
    assert_eq!(status["state"], "stopped: outside-window", "{status:#}");
    assert!(
        status["finish_by_end"]
            .as_str()
            .is_some_and(|w| w.contains("the window closes in 2s")),
        "{status:#}"
    );

    // Ten minutes before the close there is time for the node: resume starts and finishes it.
    set_clock(&clock, TEN_LEFT);
    let (code, _, stderr) = run(&["resume"]);
    assert_eq!(code, 0, "{stderr}");
    let lines = journal(&d);
    one_event(&lines, "finish-by-end"); // still only the first run's
    assert!(journal_has_event(&d, &n, "node-done"));
    assert!(!unschedulable(&n));
    let status = status_json(&d);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(status.get("finish_by_end").is_none(), "{status:#}");
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_eta_judges_what_is_left_of_the_window_from_a_real_runs_history() {
    let suite = unique("finish-by-eta");
    let (nodes, names) = TestNodes::numbered(&suite, 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let clock = d.join("clock");
    let wait = finish_by_playbook(&d, &names[0], "wait");
    let (per_node, command) = history_run(&d, &clock, &wait);
    let preflight = |at: &str, playbook: &Path| {
        set_clock(&clock, at);
        let mut cmd = rollgate(&d);
        cmd.env("ROLLGATE_CLOCK_FILE", &clock)
            .arg("preflight")
            .arg(playbook)
            .args(["-o", "json", "--no-ssh-check"]);
        let (code, stdout, stderr) = run_rollgate(cmd, 2 * MINUTE);
        let report: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\n{stderr}"));
        (code, report)
    };
    let finish_by = |report: &serde_json::Value| -> serde_json::Value {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["check"] == "eta" && f["message"].as_str().unwrap().starts_with("finish-by-end")
            })
            .unwrap_or_else(|| panic!("no finish-by-end verdict: {report:#}"))
            .clone()
    };

    // Two seconds left: the figures are the history run's, and the node does not fit.
    let (code, report) = preflight(LATE, &wait);
    assert_eq!(
        code, 0,
        "only a warning with outside = \"wait\": {report:#}"
    );
    let eta = &report["eta"];
    assert_eq!(eta["history_runs"], 1, "{eta:#}");
    assert_eq!(eta["finish_by_end"], true, "{eta:#}");
    assert_eq!(eta["window_open_secs"], 2, "{eta:#}");
    assert_eq!(eta["starts_at"], LATE, "{eta:#}");
    assert_eq!(eta["steps"]["command"]["samples"], 1, "{eta:#}");
    let p95 = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(
        (p95(&eta["steps"]["command"]["p95_secs"]) - command).abs() < 0.01,
        "{eta:#}"
    );
    assert!(
        (p95(&eta["per_node_p95_secs"]) - per_node).abs() < 0.01,
        "{eta:#}"
    );
    let late = finish_by(&report);
    assert_eq!(late["severity"], "warning", "{late:#}");
    let message = late["message"].as_str().unwrap();
    assert!(
        message.contains(
            "(p95, from 1 earlier run(s)) but the window closes in 2s: no node starts now"
        ) && message.contains("which opens 2026-11-26T01:00:00Z"),
        "{late:#}"
    );
    // The same with outside = "exit": the run would stop at once, a blocker (exit 9).
    let exit = finish_by_playbook(&d, &names[0], "exit");
    let (code, report) = preflight(LATE, &exit);
    assert_eq!(code, 9, "{report:#}");
    assert_eq!(finish_by(&report)["severity"], "blocker", "{report:#}");
    // Ten minutes left: it fits.
    let wait = finish_by_playbook(&d, &names[0], "wait");
    let (code, report) = preflight(TEN_LEFT, &wait);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["eta"]["window_open_secs"], 600, "{report:#}");
    let fits = finish_by(&report);
    assert_eq!(fits["severity"], "info", "{fits:#}");
    assert!(
        fits["message"]
            .as_str()
            .unwrap()
            .contains("the window has 10m00s left"),
        "{fits:#}"
    );
    drop(nodes);
}
