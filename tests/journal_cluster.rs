//! The journal is the truth (issue 10, item 8 and point 13), on the real test cluster with the
//! health monitor on, scoped to each test's namespace and nodes: a disk that fills up mid-run
//! stops the run before the step it cannot record, and resume finishes it; a torn line is
//! ended by resume and skipped by every reader; resume appends to the per-node logs and runs
//! the playbook the run started with; a dry run does not become the run `resume` finds; early
//! exits give the cluster lock back and leave no unexplained journal.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// The monitor on (every default signal), watching only this test's namespace and nodes.
fn monitor_scope(suite: &str, ns: &str) -> String {
    format!("[monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n")
}

/// A small tmpfs mounted on `dir` (the test runs as root), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs on {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }

    /// Writes a file that takes every free byte; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected: {e}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn journal_path(state: &Path, run_id: &str) -> PathBuf {
    state.join("runs").join(run_id).join("journal.jsonl")
}

/// Every parsed journal line (the header first).
fn journal_lines(state: &Path, run_id: &str) -> Vec<Value> {
    std::fs::read_to_string(journal_path(state, run_id))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn markers_of(markers: &Path, node: &str) -> usize {
    std::fs::read_to_string(markers)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == node)
        .count()
}

/// `rollgate status RUN -o json`.
fn status_json(state: &Path, run_id: &str) -> Value {
    let mut cmd = rollgate(state);
    cmd.args(["status", run_id, "-o", "json"]);
    let (code, stdout, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// `node` was stopped before `step`: the journal never announced it, and nothing of it (or
/// after it) was done on the node.
fn stopped_before(journal: &[Value], markers: &Path, node: &str, step: &str) {
    assert!(
        !journal
            .iter()
            .any(|v| v["event"] == "step-started" && v["node"] == node && v["step"] == step),
        "{node}'s {step} was never announced"
    );
    let order = [
        "cordon",
        "drain",
        "command",
        "wait-ready",
        "uncordon",
        "settle",
    ];
    let at = order.iter().position(|s| *s == step).unwrap();
    assert_eq!(
        unschedulable(node),
        (1..=4).contains(&at),
        "{node} stopped before {step}: cordoned exactly when cordon ran and uncordon did not"
    );
    if at <= 2 {
        assert_eq!(markers_of(markers, node), 0, "{node}: no command ran");
    }
    assert_ne!(
        annotation(node, "rollgate.dev/step"),
        step,
        "{node}: {step} never began"
    );
}

#[tokio::test]
async fn a_journal_that_fills_the_disk_stops_the_run_before_the_step_it_cannot_record_and_resume_finishes()
 {
    let suite = unique("jfull");
    let (_nodes, names) = TestNodes::numbered(&suite, 4);
    let ns = TestNamespace::new("jfull");
    deployment_with_pdb(&ns.0, "web", &suite, 2, 1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let disk = Tmpfs::mount(&state, "1m");
    let markers = dir.path().join("markers");
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"full disk\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\nconcurrency = 1\n\
             [drain]\ntimeout = \"1m\"\n\
             [command]\nrun = 'echo \"$ROLLGATE_NODE\" >> {markers}; echo \"upgrading $ROLLGATE_NODE\"; {script}'\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n\
             [ready]\ntimeout = \"30s\"\n[settle]\nsoak = \"1s\"\ntimeout = \"1m\"\n{}",
            monitor_scope(&suite, &ns.0),
            markers = markers.display(),
            script = upgrade_script(),
        ),
    );
    let lock = unique("jfull-lock");
    let mut cmd = rollgate(&state);
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The disk fills up while the first node's command runs. The journal's current page may
    // still take a few records; the next page it needs cannot be had, some records later.
    let m = markers.clone();
    eventually("a first command to start", 2 * MINUTE, || {
        let started = std::fs::read_to_string(&m).is_ok_and(|t| !t.is_empty());
        async move { started }
    })
    .await;
    let filler = disk.fill();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the run journal")
            && stderr.contains("No space left on device")
            && stderr.contains("rollgate resume"),
        "the reason and the way on are on stderr: {stderr}"
    );
    let run_id = std::fs::read_to_string(state.join("runs/latest")).unwrap();
    let run_id = run_id.trim();
    // Each node the run stopped: "NODE: stopped before STEP (not done ...".
    let stopped: Vec<(String, String)> = stderr
        .lines()
        .filter_map(|l| {
            let (node, rest) = l.trim().split_once(": stopped before ")?;
            let step = rest.split_whitespace().next()?;
            rest.contains("not done")
                .then(|| (node.to_owned(), step.to_owned()))
        })
        .collect();
    // One node at a time: at most one was stopped before a step (none when the record lost
    // was a node's end: the next node was then not started).
    assert!(stopped.len() <= 1, "{stderr}");
    println!("stopped before an unrecorded step: {stopped:?}");
    let journal = journal_lines(&state, run_id);
    // The half-written record was cut back: every line parses, the file ends with a newline.
    let text = std::fs::read_to_string(journal_path(&state, run_id)).unwrap();
    assert_eq!(journal.len(), text.lines().count(), "no torn line: {text}");
    assert!(text.ends_with('\n'));
    for (node, step) in &stopped {
        stopped_before(&journal, &markers, node, step);
    }
    // Nodes never started were not touched.
    for n in &names {
        if !journal.iter().any(|v| v["node"] == *n) {
            assert!(
                !unschedulable(n) && markers_of(&markers, n) == 0,
                "{n} untouched"
            );
        }
    }

    // Space again: resume finishes, and nothing runs twice.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resume = |extra: &[&str]| {
        let mut cmd = rollgate(&state);
        cmd.env("ROLLGATE_LOCK_NAME", &lock)
            .args(["--log-format", "json", "resume"])
            .args(extra);
        run_rollgate(cmd, 3 * MINUTE)
    };
    let (mut code, _, mut stderr) = resume(&[]);
    if let [(node, step)] = stopped.as_slice()
        && code == 2
        && step == "wait-ready"
    {
        // The record lost was the command's end: the operator confirms it finished.
        assert!(stderr.contains("--command-done"), "{stderr}");
        (code, _, stderr) = resume(&["--command-done", node]);
    }
    assert_eq!(code, 0, "resume after the disk was freed: {stderr}");
    for n in &names {
        assert!(!unschedulable(n), "{n} is uncordoned after resume");
        assert_eq!(markers_of(&markers, n), 1, "the command ran once on {n}");
    }
    let status = status_json(&state, run_id);
    assert_eq!(status["state"], "succeeded", "{status}");
    for n in &names {
        assert_eq!(status["nodes"][n]["state"], "done", "{status}");
    }
    drop(disk);
}

/// Kills a run during node 1's command (after it printed), tears the journal's last line,
/// edits the playbook and makes a dry run; then `rollgate resume` (no run id) continues the
/// real run, with the playbook it started with, appending to the node logs.
#[tokio::test]
async fn resume_ends_a_torn_line_keeps_the_node_logs_and_the_playbook_and_ignores_a_later_dry_run()
{
    let suite = unique("jtorn");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("jtorn");
    deployment_with_pdb(&ns.0, "web", &suite, 2, 1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let markers = dir.path().join("markers");
    let command = |tag: &str| {
        format!(
            "echo \"$ROLLGATE_NODE\" >> {m}; echo \"{tag}-output $ROLLGATE_NODE\"; sleep 4; echo \"{tag}-done\"",
            m = markers.display()
        )
    };
    let text = |run: &str| {
        format!(
            "name = \"torn\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[drain]\ntimeout = \"1m\"\n\
             [command]\nrun = '{run}'\ntimeout = \"1m\"\n[ready]\ntimeout = \"30s\"\n[settle]\nsoak = \"1s\"\n{}",
            names[0],
            names[1],
            monitor_scope(&suite, &ns.0)
        )
    };
    let playbook = write_playbook(dir.path(), &text(&command("first")));
    let lock = unique("jtorn-lock");
    let mut child = rollgate(&state)
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args([
            "--log-format",
            "json",
            "run",
            "--yes",
            "--lock-duration",
            "3s",
        ])
        .arg(&playbook)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n1 = names[0].clone();
    let logs = state.clone();
    eventually("node 1's command to print", MINUTE, || {
        let printed = std::fs::read_dir(logs.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| {
                std::fs::read_to_string(run.path().join("nodes").join(format!("{n1}.log")))
                    .is_ok_and(|l| l.contains("first-output"))
            });
        async move { printed }
    })
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let run_id = std::fs::read_to_string(state.join("runs/latest")).unwrap();
    let run_id = run_id.trim().to_owned();
    // The runner died in the middle of a record.
    let journal = journal_path(&state, &run_id);
    let torn_line = std::fs::read_to_string(&journal).unwrap().lines().count() + 1;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        write!(
            f,
            "{{\"at\":\"2026-12-02T03:00:00.000Z\",\"event\":\"step-finished\",\"node\":\"{}\",\"st",
            names[0]
        )
        .unwrap();
    }
    // The playbook is edited after the run started.
    std::fs::write(&playbook, text(&command("edited"))).unwrap();
    // A dry run meanwhile (of the edited playbook).
    let mut dry = rollgate(&state);
    dry.args(["run", "--dry-run"]).arg(&playbook);
    let (code, _, stderr) = run_rollgate(dry, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    tokio::time::sleep(Duration::from_secs(4)).await; // the killed runner's lock expires

    // The operator reads node 1's log to decide --command-done: the first run's output is there.
    let log_path = state
        .join("runs")
        .join(&run_id)
        .join("nodes")
        .join(format!("{}.log", names[0]));
    let before = std::fs::read_to_string(&log_path).unwrap();
    assert!(before.contains("first-output"), "{before}");
    let mut resume = rollgate(&state);
    resume
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["resume", "--command-done", &names[0]]);
    let (code, _, stderr) = run_rollgate(resume, 2 * MINUTE);
    assert_eq!(
        code, 0,
        "resume continues the real run, not the dry run: {stderr}"
    );
    assert!(
        stderr.contains("was torn") && stderr.contains("changed since the run started"),
        "resume says what it found: {stderr}"
    );
    // The resumed run used the playbook it started with.
    for n in &names {
        assert_eq!(markers_of(&markers, n), 1, "the command ran once on {n}");
    }
    let after = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        after.starts_with(&before) && after.contains("resumed (rollgate resume)"),
        "the resumed run appends after a marker:\n{after}"
    );
    let log2 = std::fs::read_to_string(
        state
            .join("runs")
            .join(&run_id)
            .join("nodes")
            .join(format!("{}.log", names[1])),
    )
    .unwrap();
    assert!(
        log2.contains("first-output") && !log2.contains("edited-output"),
        "{log2}"
    );
    // The torn line stays on its own line; the resumed run's records start on the next one.
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[torn_line - 1].ends_with("\"st"), "{text}");
    assert!(
        serde_json::from_str::<Value>(lines[torn_line]).is_ok(),
        "{text}"
    );
    // Every reader sees the whole run and says where it skipped.
    let status = status_json(&state, &run_id);
    assert_eq!(status["state"], "succeeded", "{status}");
    for n in &names {
        assert_eq!(status["nodes"][n]["state"], "done", "{status}");
    }
    assert_eq!(status["skipped_lines"], serde_json::json!([torn_line]));
    let mut human = rollgate(&state);
    human.args(["status", &run_id]);
    let (_, stdout, _) = run_rollgate(human, MINUTE);
    assert!(
        stdout.contains(&format!("skipped (line {torn_line})")),
        "{stdout}"
    );
    let mut report = rollgate(&state);
    report.args(["report", &run_id, "-o", "markdown"]);
    let (code, stdout, stderr) = run_rollgate(report, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("line {torn_line}")), "{stderr}");
    let md = std::fs::read_to_string(stdout.trim()).unwrap();
    assert!(
        md.contains("2 done") && md.contains(&format!("(line {torn_line})")),
        "{md}"
    );
}

/// A run that stops after taking the lock gives it back, and leaves no journal that looks like
/// a crashed run: a journal that cannot be created, and a gate that refuses the start.
#[tokio::test]
async fn early_exits_release_the_lock_and_mark_a_run_that_never_started() {
    let suite = unique("jearly");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("jearly");
    let dir = tempfile::tempdir().unwrap();
    let playbook = |probe: &str| {
        write_playbook(
            dir.path(),
            &format!(
                "name = \"early\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\"]\n[command]\nrun = \"true\"\n{probe}{}",
                names[0],
                monitor_scope(&suite, &ns.0)
            ),
        )
    };
    let lease_holder = |lock: &str| {
        kubectl_ok(&[
            "-n",
            STATE_NAMESPACE,
            "get",
            "lease",
            &format!("rollgate-lock-{lock}"),
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .trim()
        .to_owned()
    };
    // 1. The state directory cannot take the run's journal (`runs` is a file).
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("runs"), "not a directory").unwrap();
    let lock = unique("jearly-lock");
    let mut cmd = rollgate(&broken);
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args(["run", "--yes", "--lock-duration", "5m"])
        .arg(playbook(""));
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(lease_holder(&lock), "", "the lock was given back: {stderr}");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot write the run journal"), "{stderr}");
    assert!(!unschedulable(&names[0]));

    // 2. A before-run gate refuses the start: the journal says so; resume refuses it.
    let state = dir.path().join("state");
    let refused = playbook(
        "[[probe]]\nname = \"never\"\nkind = \"command\"\ncommand = [\"false\"]\nwhen = [\"before-run\"]\n\
         [[gate]]\nsignal = \"probe:never\"\non-fail = \"abort\"\n",
    );
    let mut cmd = rollgate(&state);
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args(["run", "--yes", "--lock-duration", "5m"])
        .arg(&refused);
    let (code, _, stderr) = run_rollgate(cmd, MINUTE);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert_eq!(lease_holder(&lock), "", "the lock was given back");
    let run_id = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let status = status_json(&state, &run_id);
    assert!(
        status["state"]
            .as_str()
            .unwrap()
            .starts_with("refused: refusing to start"),
        "{status}"
    );
    let mut resume = rollgate(&state);
    resume
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["resume", &run_id]);
    let (code, _, stderr) = run_rollgate(resume, MINUTE);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("never started"), "{stderr}");
    assert!(!unschedulable(&names[0]), "nothing was changed");
}

/// `skip-upgraded` across a crash: a node already at the target is left out when the run
/// starts and stays out when it is resumed; the node the run was upgrading when it died (its
/// command had upgraded it, it was still cordoned) is finished, not skipped, and its command
/// does not run again; the node not started yet is upgraded by the resume.
#[tokio::test]
async fn skip_upgraded_keeps_its_choice_across_a_crash_and_resume_finishes_the_node_it_had_upgraded()
 {
    let suite = unique("jskip");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let ns = TestNamespace::new("jskip");
    let target = "v1.36.3";
    let at_target = &names[0];
    kubectl_ok(&[
        "patch",
        "node",
        at_target,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"nodeInfo\":{{\"kubeletVersion\":\"{target}\"}}}}}}"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"skip\"\ntarget-kubelet-version = \"{target}\"\nskip-upgraded = true\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\n\
             [command]\nrun = 'echo \"$ROLLGATE_NODE\" >> {}; exec {}'\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n{}",
            markers.display(),
            env().state_dir.join("bin/kwok-node-upgrade").display(),
            monitor_scope(&suite, &ns.0)
        ),
    );
    let lock = unique("jskip-lock");
    // The runner dies right after the first upgraded node is Ready again, still cordoned.
    let upgrading = names[1].clone();
    crash_run_after(dir.path(), &playbook, &lock, &upgrading, "wait-ready").await;
    assert!(unschedulable(&upgrading), "it died with node 2 cordoned");
    assert_eq!(kubelet(&upgrading), target, "node 2 reports the target now");

    let mut resume = rollgate(dir.path());
    resume
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "resume"]);
    let (code, _, stderr) = run_rollgate(resume, 2 * MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let done = |node: &str| {
        journal_events(dir.path(), node)
            .iter()
            .any(|e| e["event"] == "node-done")
    };
    assert!(done(&names[1]) && done(&names[2]), "{stderr}");
    assert!(
        journal_events(dir.path(), at_target).is_empty(),
        "the node at the target never entered the run: {stderr}"
    );
    for n in &names {
        assert!(!unschedulable(n), "{n} ends schedulable");
    }
    let ran = std::fs::read_to_string(&markers).unwrap();
    assert_eq!(
        names
            .iter()
            .map(|n| ran.matches(n.as_str()).count())
            .collect::<Vec<_>>(),
        [0, 1, 1],
        "node 1 skipped, each other command ran once: {ran}"
    );
}
