//! Maintenance windows and the run deadline on the real test cluster, with injected time
//! (`ROLLGATE_CLOCK_FILE`): a window that closes mid-run stops new nodes, the node in flight
//! finishes, and the run continues when the window reopens (or exits resumable and
//! `rollgate resume` continues).

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

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> i32 {
    let until = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("rollgate did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let code = wait_exit(&mut child, 2 * MINUTE);
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
    let code = wait_exit(&mut child, MINUTE);
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
    let code = wait_exit(&mut child, MINUTE);
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
