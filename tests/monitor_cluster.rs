//! The health monitor when it cannot see, and what it watches during a node's soak (issue 10):
//! a revoked permission and an API outage (a proxy of the test's own between rollgate and the
//! apiserver) turn the pods/nodes signals inconclusive within `monitor.blind-after` and the run
//! pauses; once the watch is back the signals resume from a fresh list. The node being soaked
//! is watched; pods are tracked by UID, replacement pods from their creation.

mod support;

use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

fn scope(suite: &str, ns: &str) -> String {
    format!("[monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n")
}

/// The test environment's kubeconfig as JSON (valid YAML), with `edit` applied.
/// The runner's kubeconfig (the ServiceAccount bound to the shipped roles), edited.
fn kubeconfig_with(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig_of(Identity::Runner))
        .expect("read kubeconfig");
    let mut v = serde_json::to_value(&kc).unwrap();
    edit(&mut v);
    let path = dir.join("kubeconfig.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    path
}

fn server() -> String {
    let kc = kube::config::Kubeconfig::read_from(&env().kubeconfig).unwrap();
    kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone()
        .unwrap()
}

/// A ServiceAccount whose ClusterRole may read pods and nodes (all rollgate monitor needs);
/// the binding can be deleted (permission revoked) and created again. Removed when dropped.
struct Watcher {
    ns: String,
    name: String,
    token: String,
}

impl Watcher {
    fn new(ns: &str, suite: &str) -> Self {
        let name = format!("{suite}-watcher");
        kubectl_ok(&["-n", ns, "create", "serviceaccount", &name]);
        kubectl_ok(&[
            "create",
            "clusterrole",
            &name,
            "--verb=get,list,watch",
            "--resource=pods,nodes",
        ]);
        let mut w = Self {
            ns: ns.to_owned(),
            name,
            token: String::new(),
        };
        w.grant();
        let token = kubectl_ok(&["-n", ns, "create", "token", &w.name, "--duration=1h"]);
        w.token = token.trim().to_owned();
        // The monitor checks its permissions at start: wait until RBAC's cache has the binding.
        let who = format!("--as=system:serviceaccount:{ns}:{}", w.name);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !kubectl(&["auth", "can-i", "watch", "nodes", &who])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher's binding is not effective"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        w
    }

    fn grant(&self) {
        kubectl_ok(&[
            "create",
            "clusterrolebinding",
            &self.name,
            &format!("--clusterrole={}", self.name),
            &format!("--serviceaccount={}:{}", self.ns, self.name),
        ]);
    }

    fn revoke(&self) {
        kubectl_ok(&["delete", "clusterrolebinding", &self.name]);
    }

    /// A kubeconfig that authenticates with the ServiceAccount's token only.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let token = self.token.clone();
        kubeconfig_with(dir, |v| {
            for user in v["users"].as_array_mut().unwrap() {
                user["user"] = serde_json::json!({ "token": token });
            }
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "clusterrolebinding",
            &self.name,
            "--ignore-not-found",
        ]);
        let _ = kubectl(&["delete", "clusterrole", &self.name, "--ignore-not-found"]);
    }
}

/// A TCP proxy of the test's own in front of the apiserver (TLS passes through). `cut` closes
/// every connection and refuses new ones, as an outage does; `restore` lets them through again.
struct ApiProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl ApiProxy {
    fn start() -> Self {
        let upstream = server()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, l) = (Arc::clone(&cut), Arc::clone(&live));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    // Checked again under the lock `cut` holds: a connection accepted while
                    // the cut happened must not survive it (a pooled keep-alive connection
                    // would carry the run's requests through the whole "outage").
                    let mut live = l.lock().unwrap();
                    if c.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        continue;
                    }
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { port, cut, live }
    }

    fn cut(&self) {
        let mut live = self.live.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for s in live.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// The environment's kubeconfig pointed at this proxy.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let url = format!("https://127.0.0.1:{}", self.port);
        kubeconfig_with(dir, |v| {
            for c in v["clusters"].as_array_mut().unwrap() {
                c["cluster"]["server"] = Value::String(url.clone());
            }
        })
    }
}

/// JSON lines from a child's pipe, as they come.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits for the first event that `matches`; panics naming `what` after `timeout`.
fn wait_for(
    rx: &mpsc::Receiver<Value>,
    seen: &mut Vec<Value>,
    what: &str,
    timeout: Duration,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(v) = seen.iter().find(|v| matches(v)) {
        return v.clone();
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(v.clone());
            if matches(&v) {
                return v;
            }
        }
    }
    panic!("timed out after {timeout:?} waiting for {what}; events: {seen:#?}");
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn interrupt(child: &mut Child) -> Option<i32> {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code()
}

fn run_cmd(dir: &Path, playbook: &str) -> Command {
    let pb = dir.join("playbook.toml");
    std::fs::write(&pb, playbook).unwrap();
    let mut cmd = rollgate(dir);
    cmd.args(["--log-format", "json", "run", "--yes"]).arg(&pb);
    cmd
}

fn finish(child: Child, timeout: Duration) -> (i32, Vec<Value>, String) {
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
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

fn wait_ready_pod(ns: &str, pod: &str) {
    kubectl_ok(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        "--timeout=60s",
    ]);
}

#[tokio::test]
async fn a_revoked_permission_makes_the_monitor_inconclusive_and_a_new_grant_resumes_from_a_fresh_list()
 {
    let suite = unique("blind");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("blind");
    ns.pod("web", &names[0], "");
    wait_ready_pod(&ns.0, "web");
    let watcher = Watcher::new(&ns.0, &suite);
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("watch.toml");
    std::fs::write(
        &playbook,
        format!(
            "name = \"watch\"\n[[phase]]\nname = \"x\"\nnodes = [\"{}\"]\n[command]\nrun = \"true\"\n{}blind-after = \"5s\"\n",
            names[0],
            scope(&suite, &ns.0)
        ),
    )
    .unwrap();
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", watcher.kubeconfig(dir.path()))
        .args(["monitor", "-o", "json"])
        .arg(&playbook);
    let mut child = spawn(cmd);
    let rx = lines(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    // The monitor is up when the first watch renewal could have happened; give it its baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the monitor runs with the ServiceAccount: {seen:#?}"
    );

    let revoked = Instant::now();
    watcher.revoke();
    // Noticed when the watch is next renewed (at most every 60 s), inconclusive 5 s later.
    let decision = wait_for(
        &rx,
        &mut seen,
        "an inconclusive gate decision",
        Duration::from_secs(60 + 5 + 15),
        |v| v["event"] == "gate-decision",
    );
    let blind_for = revoked.elapsed();
    let evidence = decision["decision"]["evidence"].as_str().unwrap();
    assert_eq!(decision["decision"]["decision"], "pause", "{decision}");
    assert!(
        evidence.starts_with("inconclusive:")
            && evidence.contains("blind-after")
            && evidence.contains("forbidden"),
        "{evidence}"
    );
    assert!(seen.iter().any(|v| v["event"] == "watch-lost"), "{seen:#?}");

    // While it is blind, a pod starts crash-looping: seen once the watch is back.
    kubectl_ok(&[
        "-n",
        &ns.0,
        "label",
        "pod",
        "web",
        "rollgate.test/crashloop=true",
    ]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    seen.extend(rx.try_iter());
    assert!(
        !seen.iter().any(|v| v["event"] == "problem"),
        "a blind monitor sees nothing new: {seen:#?}"
    );
    watcher.grant();
    let granted = Instant::now();
    wait_for(&rx, &mut seen, "the watches to be back", MINUTE, |v| {
        v["event"] == "watch-restored"
    });
    let problem = wait_for(
        &rx,
        &mut seen,
        "the crash loop from the fresh list",
        MINUTE,
        |v| v["event"] == "problem" && v["problem"]["object"] == format!("{}/web", ns.0),
    );
    assert_eq!(problem["problem"]["kind"], "crash-loop");
    eprintln!(
        "blind: gate decision {blind_for:?} after the revocation; signals back {:?} after the new grant",
        granted.elapsed()
    );
    assert_eq!(interrupt(&mut child), Some(0));
}

/// An API outage mid-run: the monitor, blind for `blind-after`, pauses the run; the node in
/// flight finishes, its own writes to the node riding out the outage; once the API is back an
/// operator's resume lets the run go on to the end.
#[tokio::test]
async fn an_api_outage_pauses_the_run_within_blind_after_and_it_resumes_once_the_api_is_back() {
    let suite = unique("outage");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let ns = TestNamespace::new("outage");
    // A watched pod on a node outside the plan.
    ns.pod("web", &names[2], "");
    wait_ready_pod(&ns.0, "web");
    let proxy = ApiProxy::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = run_cmd(
        dir.path(),
        &format!(
            "name = \"outage\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = 'for i in $(seq 1 4); do echo upgrading $i; sleep 1; done'\n{}blind-after = \"5s\"\n",
            names[0],
            names[1],
            scope(&suite, &ns.0)
        ),
    );
    // The outage must not cost the run its lock (that is not what this test is about).
    cmd.env("KUBECONFIG", proxy.kubeconfig(dir.path()))
        .args(["--lock-duration", "5m"]);
    let child = spawn(cmd);
    let first = names[0].clone();
    // The cut comes while the command runs and prints (its output in the node's log); the
    // command ends a moment later while the API is still gone, so the node's next step starts
    // in the outage and its first write to the node must ride it out (not fail the node).
    let runs_dir = dir.path().join("runs");
    eventually("node 1's command to print", MINUTE, || {
        let node_log = std::fs::read_to_string(runs_dir.join("latest"))
            .map(|id| {
                runs_dir
                    .join(id.trim())
                    .join("nodes")
                    .join(format!("{first}.log"))
            })
            .and_then(std::fs::read_to_string)
            .unwrap_or_default();
        async move { node_log.contains("upgrading 2") }
    })
    .await;
    assert_eq!(annotation(&first, "rollgate.dev/step"), "command");
    let cut = Instant::now();
    proxy.cut();
    let runs = dir.path().join("runs");
    let paused = || {
        std::fs::read_to_string(runs.join("latest"))
            .map(|id| runs.join(id.trim()).join("paused").exists())
            .unwrap_or(false)
    };
    while !paused() {
        if cut.elapsed() > Duration::from_secs(20) {
            let (code, _, stderr) = finish(child, Duration::from_secs(1));
            panic!(
                "the run did not pause within 20 s of the cut (blind-after 5 s); it ended with {code}:\n{stderr}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paused_after = cut.elapsed();
    proxy.restore();
    // Node 1 finishes (its command was never interrupted); node 2 waits for the operator.
    let state = dir.path().to_owned();
    eventually("node 1 to finish", MINUTE, || {
        let (state, first) = (state.clone(), first.clone());
        async move {
            journal_events(&state, &first)
                .iter()
                .any(|e| e["event"] == "node-done")
        }
    })
    .await;
    assert!(
        annotation(&names[1], "rollgate.dev/cordoned-by").is_empty(),
        "no node starts while paused"
    );
    let mut resume = rollgate(dir.path());
    resume.arg("resume");
    let (code, _, stderr) = run_rollgate(resume, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    let (code, events, stderr) = finish(child, 3 * MINUTE);
    assert_eq!(code, 0, "the run continued to the end: {stderr}");
    assert_eq!(named(&events, "node-done").len(), 2, "{stderr}");
    let decision = &named(&events, "gate-decision")[0]["decision"];
    assert!(
        decision["signal"] == "pods" || decision["signal"] == "nodes",
        "{decision}"
    );
    assert_eq!(decision["decision"], "pause");
    let evidence = decision["evidence"].as_str().unwrap();
    assert!(
        evidence.starts_with("inconclusive: the monitor cannot see") && evidence.contains("5s"),
        "{evidence}"
    );
    assert_eq!(named(&events, "paused").len(), 1, "{stderr}");
    assert!(
        named(&events, "warning")
            .iter()
            .any(|w| w["node"] == first.as_str()
                && w["message"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("cannot update node {first} now"))),
        "node 1's next step met the outage and waited for the API: {stderr}"
    );
    assert!(!named(&events, "watch-lost").is_empty(), "{stderr}");
    assert!(!named(&events, "watch-restored").is_empty(), "{stderr}");
    eprintln!("paused {paused_after:?} after the API was cut");
}

/// A DaemonSet `agent` on this test's nodes (its pods stay on their node through a drain).
fn agents(ns: &str, suite: &str) {
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      nodeSelector: {{rollgate.test/suite: {suite}}}\n      containers: [{{name: c, image: agent}}]\n"
    ));
    kubectl_ok(&[
        "-n",
        ns,
        "rollout",
        "status",
        "daemonset/agent",
        "--timeout=60s",
    ]);
}

fn agent_on(ns: &str, node: &str) -> String {
    kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pod",
        "-l",
        "app=agent",
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
    .trim()
    .to_owned()
}

#[tokio::test]
async fn a_pod_crash_looping_on_the_node_being_soaked_trips_the_gate() {
    let suite = unique("soak");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("soak");
    agents(&ns.0, &suite);
    let agent = agent_on(&ns.0, &names[0]);
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(run_cmd(
        dir.path(),
        &format!(
            "name = \"soak\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[drain]\nignore-daemonsets = true\n[command]\nrun = 'echo upgrading; sleep 1; echo done'\n[settle]\nsoak = \"30s\"\n{}",
            names[0],
            names[1],
            scope(&suite, &ns.0)
        ),
    ));
    let state = dir.path().to_owned();
    let first = names[0].clone();
    eventually("node 1 to soak", MINUTE, || {
        let (state, first) = (state.clone(), first.clone());
        async move { journal_has(&state, &first, "step-started", "settle") }
    })
    .await;
    kubectl_ok(&[
        "-n",
        &ns.0,
        "label",
        "pod",
        &agent,
        "rollgate.test/crashloop=true",
    ]);
    let (code, events, stderr) = finish(child, 2 * MINUTE);
    assert_eq!(code, 5, "exit 5 (gate abort): {stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert_eq!(failed[0]["step"], "settle", "stopped during its soak");
    let decision = &named(&events, "gate-decision")[0]["decision"];
    assert_eq!(decision["signal"], "pods");
    assert!(
        decision["evidence"]
            .as_str()
            .unwrap()
            .contains(&format!("{}/{agent}", ns.0)),
        "{decision}"
    );
    assert!(
        named(&events, "node-started")
            .iter()
            .all(|e| e["node"] == names[0].as_str()),
        "node 2 never starts"
    );
    kubectl_ok(&["uncordon", &names[0]]);
}

#[tokio::test]
async fn a_replacement_pod_whose_restarts_rise_trips_the_gate() {
    let suite = unique("repl");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("repl");
    // One replica on node 1 (node 2 cordoned meanwhile); node 1's drain moves it to node 2 as
    // a new pod.
    kubectl_ok(&["cordon", &names[1]]);
    deployment_with_pdb(&ns.0, "web", &suite, 1, 1);
    kubectl_ok(&["uncordon", &names[1]]);
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(run_cmd(
        dir.path(),
        &format!(
            "name = \"repl\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n[command]\nrun = 'echo upgrading; sleep 1'\n[settle]\nsoak = \"30s\"\n{}",
            names[0],
            names[1],
            scope(&suite, &ns.0)
        ),
    ));
    // Node 1 soaks with the replacement Ready on node 2: restart the replacement (a pod the
    // baseline taken at the start has never seen).
    let state = dir.path().to_owned();
    let n1 = names[0].clone();
    eventually("node 1 to soak", 2 * MINUTE, || {
        let (state, n1) = (state.clone(), n1.clone());
        async move { journal_has(&state, &n1, "step-started", "settle") }
    })
    .await;
    let pod = kubectl_ok(&[
        "-n",
        &ns.0,
        "get",
        "pod",
        "-l",
        "app=web",
        "--field-selector",
        &format!("spec.nodeName={},status.phase=Running", names[1]),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let pod = pod.trim();
    kubectl_ok(&[
        "-n",
        &ns.0,
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/status/containerStatuses/0/restartCount","value":1}]"#,
    ]);
    let (code, events, stderr) = finish(child, 3 * MINUTE);
    assert_eq!(code, 5, "exit 5 (gate abort): {stderr}");
    let problems = named(&events, "problem");
    assert!(
        problems
            .iter()
            .any(|p| p["problem"]["object"] == format!("{}/{pod}", ns.0)
                && p["problem"]["kind"] == "restarts-rising"),
        "{stderr}"
    );
    for n in &names {
        let _ = kubectl(&["uncordon", n]);
    }
}
