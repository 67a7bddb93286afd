//! The cluster lock on the real apiserver, under a partition and skewed clocks. The partition
//! is local to the test: the first runner reaches the (shared) apiserver through a TCP proxy
//! of the test's own, which the test freezes (connections stay open, nothing is forwarded,
//! as if the apiserver were SIGSTOPped). Clocks are skewed with `ROLLGATE_CLOCK_FILE` or a
//! lease written by the test. The health monitor is on, scoped to each test's namespace and
//! nodes.

mod support;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
/// `--lock-duration` in these tests: renew deadline 4 s, renewals every second.
const LEASE: Duration = Duration::from_secs(6);

/// A TCP proxy in front of the apiserver that the test can freeze.
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = Arc::clone(&f);
                    std::thread::spawn(move || pump(from, to, &f));
                }
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

/// Copies bytes until either side closes; while frozen, holds what it read.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16384];
    loop {
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A copy of the runner's kubeconfig whose server is the proxy (same host, so the
/// apiserver's certificate still matches).
fn kubeconfig_through(dir: &Path) -> (PathBuf, Proxy) {
    // The runner's kubeconfig (the ServiceAccount bound to the shipped roles).
    let original = kubeconfig_of(Identity::Runner);
    let text = std::fs::read_to_string(original).unwrap();
    let mut proxy = None;
    let mut out = String::new();
    for line in text.lines() {
        match line.trim().strip_prefix("server:") {
            Some(url) if proxy.is_none() => {
                let hostport = url
                    .trim()
                    .trim_matches('"')
                    .strip_prefix("https://")
                    .unwrap()
                    .trim_end_matches('/');
                let (host, _) = hostport.rsplit_once(':').unwrap();
                let p = Proxy::start(hostport.to_owned());
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}server: https://{host}:{}\n", p.port));
                proxy = Some(p);
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let path = dir.join("kubeconfig-proxy");
    std::fs::write(&path, out).unwrap();
    (path, proxy.expect("a server in the kubeconfig"))
}

fn monitor(ns: &str, suite: &str) -> String {
    format!("[monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n")
}

fn playbook(dir: &Path, name: &str, nodes: &[String], run: &str, monitor: &str) -> PathBuf {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    write_playbook(
        dir,
        &format!(
            "name = \"{name}\"\n[[phase]]\nname = \"all\"\nnodes = [{}]\n[command]\nrun = '{run}'\n{monitor}",
            nodes.join(", ")
        ),
    )
}

fn runner(dir: &Path, lock: &str, playbook: &Path) -> std::process::Command {
    let mut cmd = rollgate(dir);
    cmd.env("ROLLGATE_LOCK_NAME", lock)
        .args(["--log-format", "json", "run", "--yes", "--lock-duration"])
        .arg(format!("{}s", LEASE.as_secs()))
        .arg(playbook);
    cmd
}

fn at(event: &Value) -> SystemTime {
    humantime::parse_rfc3339(event["at"].as_str().unwrap()).unwrap()
}

fn journal(state_dir: &Path) -> Vec<Value> {
    let runs = state_dir.join("runs");
    let run_id = std::fs::read_to_string(runs.join("latest")).unwrap();
    std::fs::read_to_string(runs.join(run_id.trim()).join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn holder(lock: &str) -> String {
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

/// Runner A reaches the apiserver through the proxy; the test freezes it mid-run, while A's
/// first node runs its command, for longer than the lease. A must stop acting at its renew
/// deadline: the command finishes, then the node stops (failed, "lost the cluster lock"),
/// no node starts, nothing more is written to the nodes; exit 10. Runner B (direct) is
/// refused while the lease looks live and takes over only after watching it unchanged for
/// the lease duration, after A stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_cut_off_from_the_apiserver_stops_at_its_renew_deadline_and_another_takes_over_after_expiry()
 {
    let suite = unique("part");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let ns = TestNamespace::new("part");
    let lock = unique("part-lock");
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (kubeconfig, proxy) = kubeconfig_through(dir_a.path());
    let book_a = playbook(
        dir_a.path(),
        "partitioned",
        &names,
        r#"for i in $(seq 1 12); do echo "upgrading $ROLLGATE_NODE: $i/12"; sleep 1; done"#,
        &monitor(&ns.0, &suite),
    );
    let book_b = playbook(
        dir_b.path(),
        "takeover",
        &names[1..],
        r#"echo "upgrading $ROLLGATE_NODE"; sleep 1; echo done"#,
        &monitor(&ns.0, &suite),
    );
    let stderr_a = dir_a.path().join("stderr");
    let mut a = runner(dir_a.path(), &lock, &book_a)
        .env("KUBECONFIG", &kubeconfig)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_a).unwrap())
        .spawn()
        .unwrap();
    let (out_a, n1) = (stderr_a.clone(), names[0].clone());
    eventually("runner A's first node to be in its command", MINUTE, || {
        let (out_a, n1) = (out_a.clone(), n1.clone());
        async move {
            events(&std::fs::read_to_string(&out_a).unwrap())
                .iter()
                .any(|e| e["event"] == "command-output" && e["node"] == n1.as_str())
        }
    })
    .await;
    proxy.freeze(true);
    let frozen_at = SystemTime::now();
    let frozen = Instant::now();

    // B, direct, tries every second: refused while the lease looks live, then it watches.
    let (code, stderr_b) = loop {
        assert!(frozen.elapsed() < MINUTE, "B never took the lock");
        let (code, _, stderr) = run_rollgate(runner(dir_b.path(), &lock, &book_b), 2 * MINUTE);
        if code != 7 {
            break (code, stderr);
        }
        assert!(
            stderr.contains("another rollgate run holds the cluster lock")
                && stderr.contains(" pid "),
            "{stderr}"
        );
        assert!(!unschedulable(&names[1]), "a refused run touches nothing");
        std::thread::sleep(Duration::from_secs(1));
    };
    // A stopped by itself, still cut off.
    let mut a_exited = frozen.elapsed();
    let deadline = Instant::now() + MINUTE;
    let status = loop {
        if let Some(status) = a.try_wait().unwrap() {
            break status;
        }
        a_exited = frozen.elapsed();
        if Instant::now() >= deadline {
            let _ = a.kill();
            panic!("runner A did not stop while cut off");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let a_stderr = std::fs::read_to_string(&stderr_a).unwrap();
    assert_eq!(status.code(), Some(10), "{a_stderr}");
    assert!(a_stderr.contains("`rollgate resume "), "{a_stderr}");
    assert_eq!(code, 0, "{stderr_b}");
    assert!(
        stderr_b.contains("looks expired") && stderr_b.contains("watching it for 6s"),
        "{stderr_b}"
    );
    let b_events = events(&stderr_b);
    let b_started = at(named(&b_events, "run-started")[0]);
    assert!(
        b_started.duration_since(frozen_at).unwrap() >= LEASE,
        "B took over {:?} after the partition began, before the lease could expire",
        b_started.duration_since(frozen_at)
    );

    proxy.freeze(false);

    let a_events = events(&a_stderr);
    let lost = a_events
        .iter()
        .find(|e| {
            e["event"] == "warning"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("lost the cluster lock"))
        })
        .unwrap_or_else(|| panic!("A journaled losing the lock: {a_stderr}"));
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .contains("renew deadline of 4s"),
        "{lost}"
    );
    let lost_at = at(lost);
    // Its last renewal started before the partition; its renew deadline is 4 s (+ slack).
    assert!(
        lost_at.duration_since(frozen_at).unwrap() < Duration::from_millis(4500),
        "lost {:?} after the partition began",
        lost_at.duration_since(frozen_at)
    );
    assert!(lost_at < b_started, "A stopped acting before B took over");
    eprintln!(
        "figures: A lost the lock {:?} after the partition began, A exited {:?} after it, B took over {:?} after it",
        lost_at.duration_since(frozen_at).unwrap(),
        a_exited,
        b_started.duration_since(frozen_at).unwrap()
    );
    for e in &a_events {
        let acting = e["event"] == "node-started"
            || (e["event"] == "step-started" && e["step"] != "command");
        assert!(
            !(acting && at(e) > lost_at),
            "A acted after losing the lock: {e}"
        );
    }
    // A's node finished its command, then stopped before wait-ready (in its journal too).
    let a_journal = journal(dir_a.path());
    assert!(
        named(&a_journal, "node-failed")
            .iter()
            .any(|e| e["node"] == names[0].as_str()
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("lost the cluster lock"))),
        "journaled"
    );
    let failed: Vec<&Value> = named(&a_events, "node-failed");
    assert_eq!(failed.len(), 1, "{a_stderr}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert_eq!(failed[0]["step"], "wait-ready");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("stopped before wait-ready: lost the cluster lock"),
        "{}",
        failed[0]
    );
    let n1_events = journal_events(dir_a.path(), &names[0]);
    assert!(
        n1_events
            .iter()
            .any(|e| e["event"] == "step-finished" && e["step"] == "command"),
        "the command was not interrupted"
    );
    for n in &names[1..] {
        assert!(
            journal_events(dir_a.path(), n).is_empty(),
            "A never started {n}"
        );
    }
    // The nodes: A's stays cordoned as A left it (nothing written after the loss, even once
    // the partition healed); B's are done and uncordoned.
    std::thread::sleep(Duration::from_secs(2));
    assert!(unschedulable(&names[0]));
    assert_eq!(annotation(&names[0], "rollgate.dev/step"), "command");
    assert_eq!(
        annotation(&names[0], "rollgate.dev/cordoned-by"),
        latest_run_id(dir_a.path())
    );
    for n in &names[1..] {
        assert!(!unschedulable(n), "{n}");
        assert!(
            annotation(n, "rollgate.dev/last-run").starts_with(&latest_run_id(dir_b.path())),
            "{n}: {}",
            annotations(n)
        );
    }
    assert_eq!(holder(&lock), "", "B released the lock");
    kubectl_ok(&["uncordon", &names[0]]);
}

/// Runner A's clock is an hour behind: the renewTime it writes looks an hour old to runner
/// B. B must not take the lock over: it watches the lease, sees A renew it, and refuses. A
/// finishes undisturbed.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_holder_whose_clock_is_an_hour_behind_keeps_the_lock() {
    let suite = unique("skew");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("skew");
    let lock = unique("skew-lock");
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    // A's wall clock: an hour behind, ticking.
    let clock = dir_a.path().join("clock");
    let stop_clock = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (clock, stop) = (clock.clone(), Arc::clone(&stop_clock));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let t = SystemTime::now() - Duration::from_secs(3600);
                let tmp = clock.with_extension("tmp");
                let text = humantime::format_rfc3339_micros(t).to_string();
                if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, &clock).is_err() {
                    break; // the test ended
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let book_a = playbook(
        dir_a.path(),
        "skewed",
        &names[..1],
        r#"for i in $(seq 1 15); do echo "upgrading $ROLLGATE_NODE: $i/15"; sleep 1; done"#,
        &monitor(&ns.0, &suite),
    );
    let book_b = playbook(
        dir_b.path(),
        "contender",
        &names[1..],
        r#"echo "upgrading $ROLLGATE_NODE"; sleep 1"#,
        &monitor(&ns.0, &suite),
    );
    let mut a = runner(dir_a.path(), &lock, &book_a);
    a.env("ROLLGATE_CLOCK_FILE", &clock);
    let a = std::thread::spawn(move || run_rollgate(a, 2 * MINUTE));
    let n1 = names[0].clone();
    eventually("runner A to start its node", MINUTE, || {
        let n1 = n1.clone();
        async move { unschedulable(&n1) }
    })
    .await;
    let renew_time = kubectl_ok(&[
        "-n",
        STATE_NAMESPACE,
        "get",
        "lease",
        &format!("rollgate-lock-{lock}"),
        "-o",
        "jsonpath={.spec.renewTime}",
    ]);
    let renewed = humantime::parse_rfc3339_weak(renew_time.trim().trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("{renew_time}: {e}"));
    assert!(
        SystemTime::now().duration_since(renewed).unwrap() > Duration::from_secs(3000),
        "A writes its skewed clock: {renew_time}"
    );

    let started = Instant::now();
    let (code, _, stderr) = run_rollgate(runner(dir_b.path(), &lock, &book_b), MINUTE);
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("looks expired"), "it was watched: {stderr}");
    assert!(stderr.contains("holder is alive"), "{stderr}");
    assert!(started.elapsed() < LEASE, "refused as soon as A renewed");
    assert!(!unschedulable(&names[1]), "B touched nothing");
    assert!(holder(&lock).contains(" pid "), "A still holds it");

    let (code, _, stderr) = a.join().unwrap();
    stop_clock.store(true, Ordering::SeqCst);
    ticker.join().unwrap();
    assert_eq!(code, 0, "A was never disturbed: {stderr}");
    assert_eq!(named(&events(&stderr), "node-done").len(), 1);
    assert!(!stderr.contains("lost the cluster lock"), "{stderr}");
}

/// A lease written by the test: held by "elsewhere", its renewTime an hour old, but renewed
/// (moved forward) every second. A runner watches it and refuses; once the test stops
/// renewing, a runner takes it over after watching it unchanged for the lease duration.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_looks_an_hour_old_but_keeps_changing_is_not_taken_over() {
    let suite = unique("stale");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("stale");
    let lock = unique("stale-lock");
    let dir = tempfile::tempdir().unwrap();
    let book = playbook(
        dir.path(),
        "stale",
        &names,
        r#"echo "upgrading $ROLLGATE_NODE"; sleep 1"#,
        &monitor(&ns.0, &suite),
    );
    kubeconfig_of(Identity::Runner); // the shipped RBAC applied: the state namespace exists
    let leases: Api<Lease> = Api::namespaced(client().await, STATE_NAMESPACE);
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(format!("rollgate-lock-{lock}")),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("ops@elsewhere pid 1 run r0".into()),
                    lease_duration_seconds: Some(LEASE.as_secs() as i32),
                    acquire_time: Some(MicroTime(hour_ago)),
                    renew_time: Some(MicroTime(hour_ago)),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let renewing = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (leases, name, renewing) = (
            leases.clone(),
            format!("rollgate-lock-{lock}"),
            Arc::clone(&renewing),
        );
        tokio::spawn(async move {
            while renewing.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut lease = leases.get(&name).await.unwrap();
                let spec = lease.spec.as_mut().unwrap();
                let t = spec.renew_time.as_ref().unwrap().0;
                spec.renew_time = Some(MicroTime(t + jiff::SignedDuration::from_secs(1)));
                leases
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                    .unwrap();
            }
        })
    };
    let (code, _, stderr) = run_rollgate(runner(dir.path(), &lock, &book), MINUTE);
    assert_eq!(code, 7, "{stderr}");
    assert!(
        stderr.contains("looks expired") && stderr.contains("holder is alive"),
        "{stderr}"
    );
    assert!(stderr.contains("ops@elsewhere"), "{stderr}");
    assert!(!unschedulable(&names[0]), "touched nothing");

    // Its holder stops: unchanged for the lease duration, it is taken over.
    renewing.store(false, Ordering::SeqCst);
    renewer.await.unwrap();
    let started = Instant::now();
    let (code, _, stderr) = run_rollgate(runner(dir.path(), &lock, &book), MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("looks expired") && stderr.contains("watching it for 6s"),
        "{stderr}"
    );
    assert!(started.elapsed() >= LEASE, "watched for the lease duration");
    assert_eq!(named(&events(&stderr), "node-done").len(), 1);
    assert_eq!(holder(&lock), "", "released at the end");
}
