//! The health monitor and gates during real runs (issue 5): pod crash loops, failing probes,
//! baselines, ping gates with pause and resume, Prometheus alerts, Slack outages.

mod support;

use serde_json::Value;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const TOKEN_VAR: &str = "ROLLGATE_TEST_SLACK_TOKEN";

/// A config pointing Slack at the stand-in (a channel per test) and gates at the real Prometheus.
fn config(dir: &Path, channel: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[slack]\nchannel = \"{channel}\"\ntoken-env = \"{TOKEN_VAR}\"\napi-url = \"{}/api/\"\n[prometheus]\nurl = \"{}\"\n",
            env().slack_url,
            env().prometheus_url
        ),
    )
    .unwrap();
    path
}

fn rollgate_run(dir: &Path, channel: &str, playbook: &str) -> Command {
    let pb = dir.join("playbook.toml");
    std::fs::write(&pb, playbook).unwrap();
    let mut cmd = rollgate(dir);
    cmd.arg("--config")
        .arg(config(dir, channel))
        .env(TOKEN_VAR, &env().slack_token)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&pb);
    cmd
}

/// The Slack requests for this channel that the stand-in recorded.
fn slack_requests(channel: &str) -> Vec<Value> {
    let recorded: Vec<Value> = slack_recorded();
    recorded
        .into_iter()
        .filter(|r| {
            r["body"]["channel"] == channel
                || r["body"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(channel))
        })
        .collect()
}

/// Texts of the Slack requests for this channel that the stand-in answered normally.
fn slack_texts(channel: &str) -> Vec<String> {
    slack_requests(channel)
        .iter()
        .filter(|r| r["failed"].is_null())
        .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
        .collect()
}

fn scope(suite: &str, ns: &str) -> String {
    format!("[monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n")
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> (i32, Vec<Value>, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(3 * MINUTE).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    let _ = dog.join();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), events(&stderr), stderr)
}

fn at(e: &Value) -> jiff::Timestamp {
    e["at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_pod_crash_looping_elsewhere_during_a_drain_aborts_within_two_seconds_and_tells_slack() {
    let suite = unique("abort");
    let (_nodes, names) = TestNodes::numbered(&suite, 4);
    let ns = TestNamespace::new("abort");
    // Node 2's drain is held by a PDB, so the fault lands during it.
    held_by_pdb(&ns.0, &names[1]);
    ns.pod("victim", &names[3], "");
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Ready",
        "pod/victim",
        "--timeout=60s",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let channel = format!("#{suite}");
    let mut cmd = rollgate_run(
        dir.path(),
        &channel,
        &format!(
            "name = \"abort\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\", \"{}\", \"{}\"]\n[drain]\ntimeout = \"2m\"\n[command]\nrun = \"true\"\n{}",
            names[0],
            names[1],
            names[2],
            names[3],
            scope(&suite, &ns.0)
        ),
    );
    // Built on purpose: the budget holding node 2's drain, its pod pinned there, and the bare
    // victim pod are pre-flight blockers (drain-blockers, capacity); the abort is under test.
    cmd.args(["--ignore-preflight", "drain-blockers"])
        .args(["--ignore-preflight", "capacity"]);
    let child = spawn(cmd);
    let n2 = names[1].clone();
    eventually("node 2 to be draining", MINUTE, || {
        let n2 = n2.clone();
        async move { annotation(&n2, "rollgate.dev/step") == "drain" }
    })
    .await;
    kubectl_ok(&[
        "-n",
        &ns.0,
        "label",
        "pod",
        "victim",
        "rollgate.test/crashloop=true",
    ]);
    let (code, events, stderr) = finish(child);
    assert_eq!(code, 5, "exit 5 (gate abort): {stderr}");

    // Stopped within 2 s of the pod's crash loop (the time kwok wrote into its status).
    let victim = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pod",
        "victim",
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.finishedAt}",
    ]);
    let crashed: jiff::Timestamp = victim.trim().parse().unwrap();
    let stopping = named(&events, "stopping");
    assert_eq!(stopping[0]["reason"], "gate-abort");
    let latency = at(stopping[0]).duration_since(crashed);
    assert!(
        latency < jiff::SignedDuration::from_secs(2),
        "stopped {latency:?} after the crash loop began"
    );

    // Node 2 stopped mid-drain: cordoned, failure recorded; nodes 3 and 4 untouched.
    assert!(unschedulable(&names[1]));
    assert_eq!(annotation(&names[1], "rollgate.dev/failed-step"), "drain");
    assert!(annotation(&names[1], "rollgate.dev/reason").contains(&format!("{}/victim", ns.0)));
    assert!(!unschedulable(&names[2]) && !unschedulable(&names[3]));
    assert_eq!(named(&events, "node-started").len(), 2);
    let decision = &named(&events, "gate-decision")[0]["decision"];
    assert_eq!(decision["signal"], "pods");
    assert!(
        decision["evidence"]
            .as_str()
            .unwrap()
            .contains("CrashLoopBackOff")
    );

    // Slack got the abort message naming the pod and the node.
    let texts = slack_texts(&channel);
    let abort = texts
        .iter()
        .find(|t| t.contains("ABORTED"))
        .unwrap_or_else(|| panic!("no abort message in {texts:#?}"));
    assert!(
        abort.contains(&format!("{}/victim", ns.0))
            && abort.contains(&names[1])
            && abort.contains("Next:"),
        "{abort}"
    );
    kubectl_ok(&["uncordon", &names[1]]);
}

#[tokio::test]
async fn a_failing_probe_after_drain_aborts_before_the_remote_command() {
    let suite = unique("probe");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let n1 = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("command-ran");
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#probe",
        &format!(
            "name = \"probe\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n[command]\nrun = \"touch {}\"\n\
             [[probe]]\nname = \"create-vm\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo creating VM on $ROLLGATE_NODE; echo 'queue: no consumer' >&2; exit 1\"]\nwhen = [\"after-drain\"]\n{}",
            marker.display(),
            scope(&suite, "rollgate-unwatched")
        ),
    )));
    assert_eq!(code, 5, "{stderr}");
    assert!(
        !marker.exists(),
        "the remote command must not run after a failed probe"
    );
    let failed = &named(&events, "node-failed")[0];
    assert_eq!(failed["step"], "command");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("probe:create-vm"),
        "{failed}"
    );
    let probe = &named(&events, "probe-result")[0];
    assert!(
        probe["outcome"]["evidence"]
            .as_str()
            .unwrap()
            .contains("queue: no consumer"),
        "{probe}"
    );
    assert!(unschedulable(&n1));
    kubectl_ok(&["uncordon", &n1]);
}

/// A firing alert refuses a run's start, and later the resume of a run that crashed mid-way
/// (the run stays resumable); once the alert clears each goes on, and the resume finishes the
/// crashed node without running its command again.
#[tokio::test]
async fn a_firing_prometheus_alert_refuses_a_start_and_a_resume_and_once_it_clears_each_goes_on() {
    let e = env();
    let suite = unique("alert").replace('-', "_");
    let mut nodes = TestNodes::new(&suite.replace('_', "-"));
    let [n1, n2] = ["n1", "n2"].map(|n| format!("{}-{n}", suite.replace('_', "-")));
    nodes.add(&n1, &[], &[], "v1.35.4");
    nodes.add(&n2, &[], &[], "v1.35.4");
    let value = Arc::new(AtomicU32::new(1));
    let port = serve_metric("rollgate_test_alerting", Arc::clone(&value), suite.clone());
    std::fs::write(
        e.prometheus_targets_dir.join(format!("{suite}.json")),
        format!(r#"[{{"targets":["127.0.0.1:{port}"]}}]"#),
    )
    .unwrap();
    std::fs::write(
        e.prometheus_rules_dir.join(format!("{suite}.yml")),
        format!("groups:\n- name: {suite}\n  rules:\n  - alert: Broken_{suite}\n    expr: rollgate_test_alerting{{suite=\"{suite}\"}} > 0\n"),
    )
    .unwrap();
    http_post(&format!("{}/-/reload", e.prometheus_url), "");
    let firing = |want: bool| {
        let suite = suite.clone();
        move || {
            let body = http_get(&format!("{}/api/v1/alerts", env().prometheus_url));
            let is = body.contains(&format!("Broken_{suite}")) && body.contains("firing");
            async move { is == want }
        }
    };
    eventually("the alert to fire", MINUTE, firing(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let markers = dir.path().join("markers");
    let playbook = format!(
        "name = \"alert\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\", \"{n2}\"]\n\
         [command]\nrun = 'echo \"$ROLLGATE_NODE\" >> {}; echo upgrading; sleep 1'\n\
         [[probe]]\nname = \"no-alerts\"\nkind = \"prometheus\"\nalerts-matching = \"^Broken_{suite}$\"\nwhen = [\"before-run\"]\n{}",
        markers.display(),
        scope(&suite, "rollgate-unwatched")
    );
    let (code, _, stderr) = finish(spawn(rollgate_run(dir.path(), "#alert", &playbook)));
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains(&format!("Broken_{suite}")),
        "{stderr}"
    );
    assert!(!unschedulable(&n1), "nothing was changed");

    value.store(0, Ordering::SeqCst);
    eventually("the alert to clear", MINUTE, firing(false)).await;
    // The run starts; the failpoint holds it right after node 1's command, and it dies there.
    let lock = unique("alert-lock");
    crash_after(
        rollgate_run(dir.path(), "#alert", &playbook),
        dir.path(),
        &lock,
        &n1,
        "command",
    )
    .await;
    let resume = || {
        let mut cmd = rollgate(dir.path());
        cmd.arg("--config")
            .arg(config(dir.path(), "#alert"))
            .env(TOKEN_VAR, &env().slack_token)
            .env("ROLLGATE_LOCK_NAME", &lock)
            .args(["--log-format", "json", "resume"]);
        cmd
    };

    // The alert fires again: the resume is refused, nothing more changes, the run stays
    // resumable.
    value.store(1, Ordering::SeqCst);
    eventually("the alert to fire again", MINUTE, firing(true)).await;
    let (code, _, stderr) = finish(spawn(resume()));
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains(&format!("Broken_{suite}")),
        "{stderr}"
    );
    assert!(!unschedulable(&n2), "node 2 was not started");
    let mut status = rollgate(dir.path());
    status.args(["status", "-o", "json"]);
    let (_, stdout, _) = run_rollgate(status, MINUTE);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        !status["state"].as_str().unwrap().starts_with("refused"),
        "a refused resume leaves the run resumable: {status}"
    );

    value.store(0, Ordering::SeqCst);
    eventually("the alert to clear again", MINUTE, firing(false)).await;
    let (code, events, stderr) = finish(spawn(resume()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(named(&events, "node-done").len(), 2, "{stderr}");
    assert!(!unschedulable(&n1) && !unschedulable(&n2));
    let ran = std::fs::read_to_string(&markers).unwrap();
    assert_eq!(
        (ran.matches(&n1).count(), ran.matches(&n2).count()),
        (1, 1),
        "each command ran once: {ran}"
    );
    let _ = std::fs::remove_file(e.prometheus_rules_dir.join(format!("{suite}.yml")));
    let _ = std::fs::remove_file(e.prometheus_targets_dir.join(format!("{suite}.json")));
    http_post(&format!("{}/-/reload", e.prometheus_url), "");
}

/// Accepts TCP connections on `ip:port` while `open` is true.
fn tcp_service(ip: &str, port: u16, open: Arc<AtomicBool>) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut current = Some(listener);
        let addr = current.as_ref().unwrap().local_addr().unwrap();
        loop {
            let want = open.load(Ordering::SeqCst);
            match (&current, want) {
                (Some(_), false) => current = None,
                (None, true) => {
                    current = TcpListener::bind(addr).ok();
                    if let Some(l) = &current {
                        l.set_nonblocking(true).unwrap();
                    }
                }
                _ => {}
            }
            if let Some(l) = &current {
                while let Ok((s, _)) = l.accept() {
                    drop(s);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[tokio::test]
async fn a_ping_gate_pauses_when_a_pod_stops_answering_and_rollgate_resume_continues() {
    let suite = unique("ping");
    let mut nodes = TestNodes::new(&suite);
    let svc = format!("{suite}-svc");
    nodes.add(&svc, &["role=service"], &[], "v1.35.4");
    let workers: Vec<String> = (1..=3).map(|i| format!("{suite}-w{i}")).collect();
    for w in &workers {
        nodes.add(w, &["role=worker"], &[], "v1.35.4");
    }
    let ns = TestNamespace::new("ping");
    ns.pod("rabbit", &svc, "app: rabbit");
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Ready",
        "pod/rabbit",
        "--timeout=60s",
    ]);
    let ip = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pod",
        "rabbit",
        "-o",
        "jsonpath={.status.podIP}",
    ])
    .trim()
    .to_owned();
    let port = 25672;
    let open = Arc::new(AtomicBool::new(true));
    tcp_service(&ip, port, Arc::clone(&open));
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(rollgate_run(
        dir.path(),
        "#ping",
        &format!(
            "name = \"ping\"\n[[phase]]\nname = \"workers\"\nselector = \"rollgate.test/suite={suite}, role=worker\"\norder = \"name\"\n[command]\nrun = \"sleep 2\"\n\
             {}[monitor.ping]\nselector = \"app=rabbit\"\nport = {port}\ninterval = \"300ms\"\nmisses = 2\n",
            scope(&suite, &ns.0)
        ),
    ));
    let first = workers[0].clone();
    eventually("the first worker to run its command", MINUTE, || {
        let first = first.clone();
        async move { annotation(&first, "rollgate.dev/step") == "command" }
    })
    .await;
    open.store(false, Ordering::SeqCst);
    let runs = dir.path().join("runs");
    let paused = || {
        let runs = runs.clone();
        async move {
            std::fs::read_to_string(runs.join("latest"))
                .map(|id| runs.join(id.trim()).join("paused").exists())
                .unwrap_or(false)
        }
    };
    eventually("the run to pause", MINUTE, paused).await;
    // Paused: the node in flight finishes (its wait-ready included), no new node starts.
    let w1 = workers[0].clone();
    eventually("the node in flight to finish", MINUTE, || {
        let w1 = w1.clone();
        async move { !annotation(&w1, "rollgate.dev/last-run").is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !unschedulable(&workers[1])
            && annotation(&workers[1], "rollgate.dev/cordoned-by").is_empty(),
        "no node starts while paused"
    );

    open.store(true, Ordering::SeqCst);
    let mut resume = rollgate(dir.path());
    resume.arg("resume");
    let (code, _, stderr) = run_rollgate(resume, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let (code, events, stderr) = finish(child);
    assert_eq!(code, 0, "the run continued to the end: {stderr}");
    assert_eq!(named(&events, "node-done").len(), 3);
    assert!(
        named(&events, "paused").len() == 1 && named(&events, "resumed").len() == 1,
        "{stderr}"
    );
    assert_eq!(
        named(&events, "gate-decision")[0]["decision"]["signal"],
        "pings"
    );
}

#[tokio::test]
async fn a_pod_already_crash_looping_at_start_is_reported_not_held_against_the_run() {
    let suite = unique("base");
    let mut nodes = TestNodes::new(&suite);
    let n1 = format!("{suite}-n1");
    let other = format!("{suite}-other");
    nodes.add(&n1, &[], &[], "v1.35.4");
    nodes.add(&other, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("base");
    ns.pod("old-crash", &other, "rollgate.test/crashloop: \"true\"");
    eventually("the pod to crash-loop", MINUTE, || {
        let ns = ns.0.clone();
        async move {
            kubectl_ok(&[
                "-n",
                &ns,
                "get",
                "pod",
                "old-crash",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ]) == "CrashLoopBackOff"
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#base",
        &format!(
            "name = \"base\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n[command]\nrun = \"sleep 3\"\n{}",
            scope(&suite, &ns.0)
        ),
    )));
    assert_eq!(
        code, 0,
        "a pre-existing crash loop does not abort: {stderr}"
    );
    let baseline = &named(&events, "baseline")[0]["problems"];
    assert!(baseline.to_string().contains("old-crash"), "{baseline}");
    assert!(named(&events, "gate-decision").is_empty(), "{stderr}");
}

#[tokio::test]
async fn slack_failures_and_timeouts_do_not_block_the_run_and_missed_messages_arrive_later() {
    let suite = unique("slack");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let channel = format!("#{suite}");
    // The next requests fail: three 500s, then two that take longer than the client's timeout.
    http_post(
        &format!("{}/_fail", env().slack_url),
        &format!(r#"{{"status":500,"count":3,"channel":"{channel}"}}"#),
    );
    http_post(
        &format!("{}/_fail", env().slack_url),
        &format!(r#"{{"status":200,"delay_ms":6000,"count":2,"channel":"{channel}"}}"#),
    );
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut cmd = rollgate_run(
        dir.path(),
        &channel,
        &format!(
            "name = \"slack\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = \"true\"\n{}",
            names[0],
            names[1],
            scope(&suite, "rollgate-unwatched")
        ),
    );
    // The final figures go to the real Pushgateway, Slack's delivery failures included.
    cmd.env("ROLLGATE_PUSHGATEWAY", &env().pushgateway_url);
    let (code, events, stderr) = finish(spawn(cmd));
    assert_eq!(code, 0, "{stderr}");
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Diagnostic log lines (here: Slack unreachable) name the run like the event lines do.
    let warnings: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["level"] == "warn" && e["target"] == "rollgate::notify")
        .collect();
    assert!(!warnings.is_empty(), "{stderr}");
    assert!(
        warnings.iter().all(|w| w["run_id"] == run_id.as_str()),
        "{warnings:?}"
    );
    let pushed = http_get(&format!("{}/metrics", env().pushgateway_url));
    let value = |name: &str, label: &str| -> f64 {
        pushed
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("run_id=\"{run_id}\""))
                    && l.contains(label)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} {label} of run {run_id} in the Pushgateway"))
    };
    assert!(
        value(
            "rollgate_slack_delivery_failures_total",
            "outcome=\"deferred\""
        ) >= 1.0
    );
    assert_eq!(value("rollgate_nodes", "state=\"done\""), 2.0);
    assert_eq!(value("rollgate_run_state", "state=\"finished\""), 1.0);
    assert_eq!(named(&events, "node-done").len(), 2);
    assert!(
        started.elapsed() < MINUTE,
        "Slack trouble must not hold the run up"
    );
    let texts = slack_texts(&channel);
    for want in [
        format!("node `{}` upgraded", names[0]),
        format!("node `{}` upgraded", names[1]),
        "run finished".to_string(),
    ] {
        assert!(
            texts.iter().any(|t| t.contains(&want)),
            "{want:?} was delivered eventually: {texts:#?}"
        );
    }
    // The final message sums the run up and points at its report.
    let run_id = named(&events, "run-started")[0]["run_id"].as_str().unwrap();
    let report = dir.path().join("runs").join(run_id).join("report.html");
    assert!(
        texts.iter().any(
            |t| t.contains("2 done, 0 failed, 0 not started; slowest node `")
                && t.contains(&format!("Report: {}", report.display()))
        ),
        "the final message has the summary and the report's path: {texts:#?}"
    );
    assert!(report.is_file(), "{stderr}");
    let failed: Vec<u64> = slack_requests(&channel)
        .iter()
        .filter_map(|r| r["failed"].as_u64())
        .collect();
    assert_eq!(
        failed.iter().filter(|f| **f == 500).count(),
        3,
        "the three 500s hit this run: {failed:?}"
    );
    assert_eq!(
        failed.iter().filter(|f| **f == 0).count(),
        2,
        "the two slow answers hit this run: {failed:?}"
    );
    assert!(
        !stderr.contains(&env().slack_token),
        "the token never appears in logs"
    );
}

/// A node with a Ready pod `web` in its own namespace, and a playbook whose monitor watches them.
struct WatchedPod {
    _nodes: TestNodes,
    ns: TestNamespace,
    dir: tempfile::TempDir,
    playbook: PathBuf,
}

fn watched_pod(name: &str) -> WatchedPod {
    let suite = unique(name);
    let (nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new(name);
    ns.pod("web", &names[0], "");
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "--timeout=60s",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("watch.toml");
    std::fs::write(
        &playbook,
        format!(
            "name = \"watch\"\n[[phase]]\nname = \"x\"\nnodes = [\"{}\"]\n[command]\nrun = \"true\"\n{}",
            names[0],
            scope(&suite, &ns.0)
        ),
    )
    .unwrap();
    WatchedPod {
        _nodes: nodes,
        ns,
        dir,
        playbook,
    }
}

/// Runs `rollgate monitor -o json` (with `playbook`, or without one: everything watched, the
/// default gates), makes `web` crash-loop, and returns the `problem` event for it and the gate
/// decision that names it (if one came within a minute), and the exit code after Ctrl-C.
async fn monitor_sees_web_crash_looping(
    w: &WatchedPod,
    playbook: Option<&Path>,
) -> (Option<Value>, Option<Value>, Option<i32>) {
    let (ns, dir) = (&w.ns, &w.dir);
    let mut cmd = rollgate(dir.path());
    cmd.args(["monitor", "-o", "json"]);
    if let Some(pb) = playbook {
        cmd.arg(pb);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    kubectl_ok(&[
        "-n",
        &ns.0,
        "label",
        "pod",
        "web",
        "rollgate.test/crashloop=true",
    ]);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let object = format!("{}/web", ns.0);
    let deadline = std::time::Instant::now() + MINUTE;
    let (mut problem, mut decision) = (None, None);
    while std::time::Instant::now() < deadline && (problem.is_none() || decision.is_none()) {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["event"] == "problem" && v["problem"]["object"] == object.as_str() {
                problem = Some(v);
            } else if v["event"] == "gate-decision"
                && v["decision"]["evidence"]
                    .as_str()
                    .is_some_and(|e| e.contains(&object))
            {
                decision = Some(v);
            }
        }
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    (problem, decision, status.code())
}

#[tokio::test]
async fn rollgate_monitor_streams_new_problems_as_json() {
    let w = watched_pod("mon");
    let (found, _, status) = monitor_sees_web_crash_looping(&w, Some(&w.playbook)).await;
    let found = found.expect("a problem event for the crash-looping pod");
    assert_eq!(found["problem"]["kind"], "crash-loop");
    assert_eq!(status, Some(0), "Ctrl-C ends monitor cleanly");
}

#[tokio::test]
async fn rollgate_monitor_without_a_playbook_watches_every_namespace_with_the_default_gates() {
    let w = watched_pod("monall");
    let (found, decision, status) = monitor_sees_web_crash_looping(&w, None).await;
    let found = found.expect("a problem event for the crash-looping pod");
    assert_eq!(found["problem"]["kind"], "crash-loop");
    let decision = decision.expect("a gate decision naming the pod");
    assert_eq!(decision["decision"]["signal"], "pods");
    assert_eq!(
        decision["decision"]["decision"], "abort",
        "the default pods gate: {decision}"
    );
    assert_eq!(status, Some(0), "Ctrl-C ends monitor cleanly");
}

#[tokio::test]
async fn the_metrics_endpoint_scraped_by_prometheus_shows_the_run_progress() {
    let e = env();
    let suite = unique("metrics");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let job = suite.replace('-', "_");
    std::fs::write(
        e.prometheus_targets_dir.join(format!("{job}.json")),
        format!(r#"[{{"targets":["127.0.0.1:{port}"],"labels":{{"suite":"{job}"}}}}]"#),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = rollgate_run(
        dir.path(),
        "#metrics",
        &format!(
            "name = \"metrics\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = \"sleep 3\"\n{}",
            names[0],
            names[1],
            scope(&suite, "rollgate-unwatched")
        ),
    );
    cmd.env("ROLLGATE_METRICS_LISTEN", format!("127.0.0.1:{port}"));
    let (code, _, stderr) = finish(spawn(cmd));
    assert_eq!(code, 0, "{stderr}");
    let query = |q: &str| {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        http_get(&format!(
            "{}/api/v1/query?query={enc}",
            env().prometheus_url
        ))
    };
    let done = query(&format!(
        "max_over_time(rollgate_nodes{{suite=\"{job}\",phase=\"all\",state=\"done\"}}[5m])"
    ));
    // The run can end before the scrape after its last node: at least one node done was seen
    // (the final figures are what the Pushgateway test checks).
    let seen: f64 = serde_json::from_str::<Value>(&done).unwrap()["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample: {done}"));
    assert!(
        (1.0..=2.0).contains(&seen),
        "Prometheus saw nodes done: {done}"
    );
    let steps = query(&format!(
        "max_over_time(rollgate_node_step{{suite=\"{job}\",step=\"command\"}}[5m])"
    ));
    assert!(
        steps.contains(&names[0]),
        "Prometheus saw the node in its command step: {steps}"
    );
    let _ = std::fs::remove_file(e.prometheus_targets_dir.join(format!("{job}.json")));
}

/// Answers every HTTP request with `status` and `body` while running.
fn http_service(status: Arc<AtomicU32>, body: &'static str) -> u16 {
    serve_http(move || (status.load(Ordering::SeqCst), body.to_owned()))
}

#[tokio::test]
async fn job_and_http_probes_gate_the_run_and_the_probe_job_is_cleaned_up() {
    let suite = unique("jobs");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("jobs");
    // Job probes need the shipped job probes' role bound in their namespace.
    grant_job_probes(&ns.0);
    let dir = tempfile::tempdir().unwrap();
    // A relative manifest path is resolved against the playbook's directory.
    std::fs::write(
        dir.path().join("smoke-job.yaml"),
        format!("apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: smoke\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      nodeName: {}\n      containers: [{{name: smoke, image: busybox}}]\n", names[0]),
    )
    .unwrap();
    let status = Arc::new(AtomicU32::new(200));
    let port = http_service(Arc::clone(&status), "status: ok");
    let playbook = |when: &str| {
        format!(
            "name = \"jobs\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = \"true\"\n\
             [[probe]]\nname = \"smoke\"\nkind = \"job\"\nmanifest = \"smoke-job.yaml\"\nnamespace = \"{ns}\"\ntimeout = \"1m\"\nwhen = [\"before-run\"]\n\
             [[probe]]\nname = \"api\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/healthz\"\nbody-contains = \"ok\"\nwhen = [\"{when}\"]\n{}",
            names[0],
            names[1],
            scope(&suite, "rollgate-unwatched"),
            ns = ns.0
        )
    };
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#jobs",
        &playbook("after-uncordon"),
    )));
    assert_eq!(code, 0, "{stderr}");
    let results: Vec<(String, String)> = named(&events, "probe-result")
        .iter()
        .map(|e| {
            (
                e["probe"].as_str().unwrap().to_owned(),
                e["outcome"]["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        results
            .iter()
            .filter(|(p, r)| p == "smoke" && r == "pass")
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|(p, r)| p == "api" && r == "pass")
            .count(),
        2,
        "{results:?}"
    );
    eventually("the probe Job to be deleted", MINUTE, || {
        let ns = ns.0.clone();
        async move {
            kubectl_ok(&["-n", &ns, "get", "jobs", "-o", "name"])
                .trim()
                .is_empty()
        }
    })
    .await;

    // The service starts answering 503 after the first node: the http gate aborts the run.
    status.store(503, Ordering::SeqCst);
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#jobs",
        &playbook("after-drain"),
    )));
    assert_eq!(code, 5, "{stderr}");
    let decision = &named(&events, "gate-decision")[0]["decision"];
    assert_eq!(decision["signal"], "probe:api");
    assert!(
        decision["evidence"]
            .as_str()
            .unwrap()
            .contains("status 503"),
        "{decision}"
    );
    assert_eq!(named(&events, "node-started").len(), 1);
    kubectl_ok(&["uncordon", &names[0]]);
}

#[tokio::test]
async fn icmp_pings_reach_pod_ips_and_keep_the_gate_open() {
    // The kernel answers for every loopback address, as it would for a live pod.
    assert!(
        rollgate::monitor::icmp::ping("127.0.0.1".parse().unwrap(), Duration::from_secs(1), 1)
            .unwrap()
    );
    let suite = unique("icmp");
    let mut nodes = TestNodes::new(&suite);
    let svc = format!("{suite}-svc");
    let n1 = format!("{suite}-n1");
    nodes.add(&svc, &[], &[], "v1.35.4");
    nodes.add(&n1, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("icmp");
    ns.pod("mq", &svc, "app: mq");
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Ready",
        "pod/mq",
        "--timeout=60s",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#icmp",
        &format!(
            "name = \"icmp\"\n[[phase]]\nname = \"one\"\nnodes = [\"{n1}\"]\n[command]\nrun = \"sleep 2\"\n{}[monitor.ping]\nselector = \"app=mq\"\ninterval = \"300ms\"\nmisses = 2\n",
            scope(&suite, &ns.0)
        ),
    )));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        named(&events, "gate-decision").is_empty(),
        "ICMP pings answered: {stderr}"
    );
}

#[tokio::test]
async fn an_incoming_webhook_gets_the_same_messages_without_threads_and_its_url_stays_secret() {
    let suite = unique("hook");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let n1 = names[0].clone();
    let dir = tempfile::tempdir().unwrap();
    // The URL is the secret: it comes from the environment, like a token.
    let path = format!("/services/T0ROLLGATE/B0ROLLGATE/{suite}");
    let url = format!("{}{path}", env().slack_url);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[slack]\nchannel = \"#ignored-by-webhooks\"\nwebhook-url-env = \"ROLLGATE_TEST_WEBHOOK\"\n",
    )
    .unwrap();
    let pb = dir.path().join("playbook.toml");
    std::fs::write(
        &pb,
        format!(
            "name = \"hooked\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n[command]\nrun = \"true\"\n{}",
            scope(&suite, "rollgate-unwatched")
        ),
    )
    .unwrap();
    let mut cmd = rollgate(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .env("ROLLGATE_TEST_WEBHOOK", &url)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&pb);
    let (code, events, stderr) = finish(spawn(cmd));
    assert_eq!(code, 0, "{stderr}");
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let recorded: Vec<Value> = slack_recorded();
    let posts: Vec<&Value> = recorded.iter().filter(|r| r["path"] == path).collect();
    let texts: Vec<&str> = posts
        .iter()
        .filter_map(|r| r["body"]["text"].as_str())
        .collect();
    assert!(
        texts[0].contains(&run_id) && texts[0].contains("hooked"),
        "{texts:#?}"
    );
    for want in [format!("node `{n1}` upgraded"), "run finished".into()] {
        assert!(
            texts.iter().any(|t| t.contains(&want)),
            "{want}: {texts:#?}"
        );
    }
    assert!(
        posts.iter().all(|r| r["body"]["thread_ts"].is_null()),
        "webhooks cannot thread"
    );
    assert!(!stderr.contains(&path), "the webhook URL is never logged");
}

#[tokio::test]
async fn rollgate_monitor_at_a_terminal_shows_a_live_table_of_unhealthy_pods() {
    let w = watched_pod("montty");
    let (ns, dir, pb) = (&w.ns, &w.dir, &w.playbook);
    // A real pseudo-terminal, so rollgate draws its table.
    let mut inner = rollgate(dir.path());
    inner.args(["monitor"]).arg(pb);
    let terminal = Terminal::start(&inner);
    tokio::time::sleep(Duration::from_secs(2)).await;
    kubectl_ok(&[
        "-n",
        &ns.0,
        "label",
        "pod",
        "web",
        "rollgate.test/crashloop=true",
    ]);
    let object = format!("{}/web", ns.0);
    let deadline = std::time::Instant::now() + MINUTE;
    let shown = loop {
        // The last frame (each redraw clears the screen first).
        let frame = terminal
            .screen()
            .rsplit("\x1b[2J")
            .next()
            .unwrap_or("")
            .to_owned();
        if frame.contains(&object) || std::time::Instant::now() > deadline {
            break frame;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    terminal.close();
    assert!(shown.contains("rollgate monitor"), "{shown}");
    assert!(shown.contains("unhealthy since start (1)"), "{shown}");
    let row = shown
        .lines()
        .find(|l| l.contains(&object))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(row.to_lowercase().contains("crash"), "{row}");
}

#[tokio::test]
async fn pods_restarted_by_their_own_nodes_upgrade_are_not_held_against_the_run() {
    let suite = unique("reboot");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("reboot");
    // A node agent (DaemonSet) on both nodes: it restarts when its node reboots.
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      nodeSelector: {{rollgate.test/suite: {suite}}}\n      containers: [{{name: c, image: agent}}]\n",
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
    // The "upgrade" of each node bumps the restart count of its agent, as a reboot would.
    let kubectl = format!(
        "{} --kubeconfig {} -n {}",
        env().kubectl.display(),
        env().kubeconfig.display(),
        ns.0
    );
    let upgrade = format!(
        r#"p=$({kubectl} get pod -l app=agent --field-selector spec.nodeName=$ROLLGATE_NODE -o name); {kubectl} patch $p --subresource=status --type=json -p '[{{"op":"replace","path":"/status/containerStatuses/0/restartCount","value":1}}]'; sleep 2"#
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, events, stderr) = finish(spawn(rollgate_run(
        dir.path(),
        "#reboot",
        &format!(
            "name = \"reboot\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[drain]\nignore-daemonsets = true\n[command]\nrun = '''{upgrade}'''\n[settle]\nsoak = \"2s\"\n{}",
            names[0],
            names[1],
            scope(&suite, &ns.0)
        ),
    )));
    assert_eq!(code, 0, "{stderr}");
    assert!(named(&events, "gate-decision").is_empty(), "{stderr}");
    let restarts = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(
        restarts.trim(),
        "1 1",
        "both agents restarted during the run"
    );
}
