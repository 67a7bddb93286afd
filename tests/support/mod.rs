//! Support for cluster tests: the environment that `cargo xtask testenv up` started (one per
//! test run), uniquely named nodes (each with its own sshd) and namespaces per test so tests
//! run in parallel, and helpers to run the rollgate binary against it.
//!
//! A cluster test never skips: without the environment it fails and says how to start it.
#![allow(dead_code)] // Each test binary uses a different subset.

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Deserialize, Clone, Debug)]
pub struct Env {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub client_key: PathBuf,
    pub slack_url: String,
    pub slack_token: String,
    /// The app-level token the stand-in accepts for Socket Mode.
    pub slack_app_token: String,
    pub prometheus_url: String,
    pub prometheus_rules_dir: PathBuf,
    pub prometheus_targets_dir: PathBuf,
    pub pushgateway_url: String,
    pub kubectl: PathBuf,
    pub xtask: PathBuf,
}

/// The running test environment (read once from `STATE/env.json`).
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let state = std::env::var_os("ROLLGATE_TESTENV_STATE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/rollgate-testenv"));
        let file = state.join("env.json");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|_| {
            panic!(
                "the test environment is not running ({} is missing).\n\
                 Start it with `cargo xtask testenv up` (after `cargo xtask testenv install`), \
                 or run the whole suite with `cargo xtask test`.",
                file.display()
            )
        });
        let env: Env = serde_json::from_str(&text).expect("env.json parses");
        let ok = Command::new(&env.kubectl).arg("--kubeconfig").arg(&env.kubeconfig).args(["get", "--raw", "/readyz"]).output().map(|o| o.status.success()).unwrap_or(false);
        assert!(ok, "the test environment in {} does not answer: restart it with `cargo xtask testenv down && cargo xtask testenv up`", state.display());
        env
    })
}

/// A Kubernetes client for the test environment (one per test: clients are bound to a runtime).
pub async fn client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&env().kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// A short id unique in this test run, usable in node and namespace names.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{:04x}{n}", (nanos ^ std::process::id()) & 0xffff)
}

pub fn kubectl(args: &[&str]) -> Output {
    Command::new(&env().kubectl)
        .arg("--kubeconfig")
        .arg(&env().kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn kubectl_apply(yaml: &str) {
    use std::io::Write;
    let mut child = Command::new(&env().kubectl)
        .arg("--kubeconfig")
        .arg(&env().kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test nodes, removed (with their sshd) when dropped.
pub struct TestNodes {
    pub names: Vec<String>,
    /// The label every node of this test carries: `rollgate.test/suite=<suite>`.
    pub suite: String,
}

impl TestNodes {
    pub fn new(suite: &str) -> Self {
        Self {
            names: Vec::new(),
            suite: suite.to_owned(),
        }
    }

    /// `count` nodes `SUITE-n1`..`SUITE-nCOUNT` at kubelet v1.35.4, no labels or taints.
    pub fn numbered(suite: &str, count: usize) -> (Self, Vec<String>) {
        let mut nodes = Self::new(suite);
        let names: Vec<String> = (1..=count).map(|i| format!("{suite}-n{i}")).collect();
        for n in &names {
            nodes.add(n, &[], &[], "v1.35.4");
        }
        (nodes, names)
    }

    /// Adds a kwok node with its own sshd; returns its SSH address. Labels are `k=v`.
    pub fn add(
        &mut self,
        name: &str,
        labels: &[&str],
        taints: &[&str],
        kubelet_version: &str,
    ) -> String {
        let mut cmd = Command::new(&env().xtask);
        cmd.args([
            "testenv",
            "node",
            "add",
            name,
            "--kubelet-version",
            kubelet_version,
            "--label",
        ])
        .arg(format!("rollgate.test/suite={}", self.suite));
        for l in labels {
            cmd.args(["--label", l]);
        }
        for t in taints {
            cmd.args(["--taint", t]);
        }
        let out = cmd.output().expect("run xtask node add");
        assert!(
            out.status.success(),
            "node add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.names.push(name.to_owned());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for TestNodes {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new(&env().xtask)
                .args(["testenv", "node", "rm", name])
                .output();
        }
        remove_command_records(&self.names);
    }
}

/// The remote commands' records `names` left on the (shared, local) "node" disk:
/// /var/tmp/rollgate-RUN-NODE and its .attempt-N siblings.
fn remove_command_records(names: &[String]) {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix("rollgate-") else {
            continue;
        };
        let base = rest.split(".attempt-").next().unwrap_or(rest);
        // RUN-NODE: the node is some suffix after a dash.
        let ours = base
            .match_indices('-')
            .any(|(i, _)| names.contains(&base[i + 1..]));
        if ours {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The xtask binary that manages the environment: `ROLLGATE_TESTENV_XTASK` or the copy the
/// environment runs (`STATE/bin/xtask`).
pub fn xtask() -> PathBuf {
    std::env::var_os("ROLLGATE_TESTENV_XTASK")
        .map(PathBuf::from)
        .unwrap_or_else(|| env().xtask.clone())
}

/// A fleet of kwok nodes `PREFIX-0001`.. sharing one sshd (`testenv node add-many`), labelled
/// `rollgate.test/suite=PREFIX`, with pods from Deployments in a namespace; removed when dropped.
pub struct Fleet {
    pub prefix: String,
    pub names: Vec<String>,
}

impl Fleet {
    /// `count` nodes at kubelet v1.35.4 with `pods_per_node` pods each in namespace `ns`.
    pub fn add(prefix: &str, count: u32, pods_per_node: u32, ns: &str) -> Self {
        let out = Command::new(xtask())
            .args(["testenv", "node", "add-many", "--prefix", prefix])
            .args(["--count", &count.to_string()])
            .args(["--pods-per-node", &pods_per_node.to_string()])
            .args(["--namespace", ns])
            .arg("--label")
            .arg(format!("rollgate.test/suite={prefix}"))
            .output()
            .expect("run xtask node add-many");
        assert!(
            out.status.success(),
            "node add-many: {}\n(an environment started by an older xtask lacks `add-many`: restart it, \
             or point ROLLGATE_TESTENV_XTASK at a current target/debug/xtask)",
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(names.len(), count as usize, "add-many printed every node");
        Self {
            prefix: prefix.to_owned(),
            names,
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(xtask())
            .args(["testenv", "node", "rm-many", "--prefix", &self.prefix])
            .output();
        remove_command_records(&self.names);
    }
}

/// A namespace deleted when dropped.
pub struct TestNamespace(pub String);

impl TestNamespace {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        kubectl_ok(&["create", "namespace", &name]);
        Self(name)
    }

    /// A bare pod (no controller) pinned to `node`, with `labels` (`k: v` pairs, YAML).
    pub fn pod(&self, name: &str, node: &str, labels: &str) {
        kubectl_apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {}, labels: {{{labels}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: app}}]}}\n",
            self.0
        ));
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// Polls `check` until it is true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn node(client: &kube::Client, name: &str) -> Node {
    Api::<Node>::all(client.clone())
        .get(name)
        .await
        .expect("get node")
}

/// A Deployment of `replicas` pods pinned to this test's nodes, with a PDB allowing
/// `max_unavailable` disruptions.
pub fn deployment_with_pdb(ns: &str, name: &str, suite: &str, replicas: u32, max_unavailable: u32) {
    kubectl_apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{rollgate.test/suite: "{suite}"}}
      tolerations: [{{key: node-role.kubernetes.io/control-plane, operator: Exists}}]
      containers: [{{name: c, image: app}}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: {name}, namespace: {ns}}}
spec:
  maxUnavailable: {max_unavailable}
  selector: {{matchLabels: {{app: {name}}}}}
"#
    ));
    kubectl_ok(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Available",
        &format!("deployment/{name}"),
        "--timeout=60s",
    ]);
}

/// Who rollgate runs as in a cluster test: a ServiceAccount bound to exactly the shipped roles
/// (`rollgate rbac`, applied as it prints them). The admin kubeconfig is for test setup only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `rollgate rbac`: the run's roles (runner, state).
    Runner,
    /// `rollgate rbac --disable-eviction`: the run's roles and the optional pod deletion.
    RunnerDisableEviction,
    /// `rollgate rbac --read-only`: plan, preflight, monitor, runs, status.
    Reader,
    /// `rollgate rbac --control`: pause, resume and abort live runs, read their status.
    Controller,
}

/// The state namespace rollgate uses by default (the shipped RBAC's).
pub const STATE_NAMESPACE: &str = "rollgate-system";

impl Identity {
    /// The ServiceAccount's name (and the prefix of its roles).
    pub fn name(self) -> &'static str {
        match self {
            Identity::Runner => "rollgate-test-runner",
            Identity::RunnerDisableEviction => "rollgate-test-evict",
            Identity::Reader => "rollgate-test-reader",
            Identity::Controller => "rollgate-test-control",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Identity::Runner => &[],
            Identity::RunnerDisableEviction => &["--disable-eviction"],
            Identity::Reader => &["--read-only"],
            Identity::Controller => &["--control"],
        }
    }
}

/// The shipped RBAC as `rollgate rbac --name NAME FLAGS...` prints it.
pub fn shipped_rbac(name: &str, flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .env_remove("ROLLGATE_CONFIG")
        .args(["rbac", "--name", name])
        .args(flags)
        .output()
        .expect("run rollgate rbac");
    assert!(
        out.status.success(),
        "rollgate rbac: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A kubeconfig for the ServiceAccount `name` in the state namespace (a TokenRequest token
/// valid 3 h), once `kubectl auth can-i` answers yes for each of `can_i` (RBAC is cached).
pub fn service_account_kubeconfig(name: &str, can_i: &[&[&str]]) -> PathBuf {
    let token = kubectl_ok(&[
        "-n",
        STATE_NAMESPACE,
        "create",
        "token",
        name,
        "--duration",
        "3h",
    ]);
    let admin = std::fs::read_to_string(&env().kubeconfig).expect("read the admin kubeconfig");
    let text: String = admin
        .lines()
        .map(|l| match l.split_once("token: ") {
            Some((indent, _)) => format!("{indent}token: {}\n", token.trim()),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(
        text.contains(token.trim()),
        "the admin kubeconfig has no token line"
    );
    let path = std::env::temp_dir().join(format!(
        "rollgate-test-{}-{name}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for can in can_i {
        while !Command::new(&env().kubectl)
            .arg("--kubeconfig")
            .arg(&path)
            .args(["auth", "can-i"])
            .args(*can)
            .output()
            .expect("run kubectl auth can-i")
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "ServiceAccount {name} still may not {can:?} after 20 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    path
}

/// What the runner may do once its bindings are effective: a Role rule and a ClusterRole rule.
pub const RUNNER_CAN: &[&[&str]] = &[
    &[
        "update",
        "leases.coordination.k8s.io",
        "-n",
        STATE_NAMESPACE,
    ],
    &["patch", "nodes"],
];

/// The kubeconfig of `identity`'s ServiceAccount: the shipped RBAC applied and a token made
/// once per test process.
pub fn kubeconfig_of(identity: Identity) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static MADE: OnceLock<Mutex<HashMap<Identity, PathBuf>>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    made.entry(identity)
        .or_insert_with(|| {
            kubectl_apply(&shipped_rbac(identity.name(), identity.flags()));
            let can_i: &[&[&str]] = match identity {
                Identity::Reader => &[
                    &["list", "configmaps", "-n", STATE_NAMESPACE],
                    &["list", "nodes"],
                ],
                Identity::Runner => RUNNER_CAN,
                Identity::RunnerDisableEviction => {
                    &[RUNNER_CAN[0], RUNNER_CAN[1], &["delete", "pods", "-A"]]
                }
                Identity::Controller => &[
                    &["patch", "configmaps", "-n", STATE_NAMESPACE],
                    &["get", "leases.coordination.k8s.io", "-n", STATE_NAMESPACE],
                ],
            };
            service_account_kubeconfig(identity.name(), can_i)
        })
        .clone()
}

/// Binds the shipped job probes' role in `ns` to [`Identity::Runner`] (`rollgate rbac
/// --job-probe-namespace NS`, applied as printed), for a test whose job probes run there.
pub fn grant_job_probes(ns: &str) {
    let runner = kubeconfig_of(Identity::Runner);
    kubectl_apply(&shipped_rbac(
        Identity::Runner.name(),
        &["--job-probe-namespace", ns],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new(&env().kubectl)
        .arg("--kubeconfig")
        .arg(&runner)
        .args(["auth", "can-i", "create", "jobs.batch", "-n", ns])
        .output()
        .expect("run kubectl")
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the job probes' role is not bound in {ns} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The subcommands that only read: run as [`Identity::Reader`] by [`run_rollgate`] and
/// [`Terminal::start`] (unless the test chose a kubeconfig itself).
const READ_ONLY_COMMANDS: [&str; 6] = ["plan", "preflight", "monitor", "status", "runs", "report"];

/// A command made by [`rollgate`] whose subcommand only reads runs as the reader.
fn as_reader_if_read_only(cmd: &mut Command) {
    let runner = kubeconfig_of(Identity::Runner);
    let as_runner = cmd
        .get_envs()
        .any(|(k, v)| k == "KUBECONFIG" && v == Some(runner.as_os_str()));
    let mut args = cmd.get_args().map(|a| a.to_string_lossy().into_owned());
    let mut subcommand = None;
    while let Some(a) = args.next() {
        if matches!(
            a.as_str(),
            "--state-dir"
                | "--log-format"
                | "--config"
                | "--kubeconfig"
                | "--context"
                | "--ssh-config"
        ) {
            args.next();
        } else if !a.starts_with('-') {
            subcommand = Some(a);
            break;
        }
    }
    if as_runner && subcommand.is_some_and(|s| READ_ONLY_COMMANDS.contains(&s.as_str())) {
        cmd.env("KUBECONFIG", kubeconfig_of(Identity::Reader));
    }
}

/// The rollgate binary, pointed at the test environment, as the ServiceAccount bound to the
/// shipped run roles ([`Identity::Runner`]; read-only subcommands as [`Identity::Reader`]).
pub fn rollgate(state_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    // Environment (not flags) so a test can still override them with the flags.
    cmd.env("KUBECONFIG", kubeconfig_of(Identity::Runner))
        .env("ROLLGATE_SSH_CONFIG", &env().ssh_config)
        // Tests run in parallel over disjoint nodes: each command its own cluster lock.
        .env("ROLLGATE_LOCK_NAME", unique("lock"))
        .arg("--state-dir")
        .arg(state_dir);
    cmd.env_remove("ROLLGATE_CONFIG")
        .env_remove("ROLLGATE_CONTEXT")
        .env("NO_COLOR", "1");
    cmd
}

/// Runs rollgate with a timeout; returns (exit code, stdout, stderr).
pub fn run_rollgate(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    as_reader_if_read_only(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rollgate");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().expect("wait for rollgate");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// JSON events from `--log-format json` output (stderr lines that parse as objects with `event`).
pub fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

/// A minimal HTTP/1.0 client for the environment's loopback services: (status, headers, body).
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_lowercase(), v.to_owned()))
        })
        .collect();
    (status, headers, body.to_owned())
}

pub fn http_get(url: &str) -> String {
    http("GET", url, None, "").2
}

pub fn http_post(url: &str, body: &str) {
    http("POST", url, None, body);
}

/// A loopback HTTP server answering every request with `respond()` = (status, body), for the
/// life of the test process. Returns its port.
pub fn serve_http(respond: impl Fn() -> (u32, String) + Send + 'static) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let (status, body) = respond();
            let _ = write!(
                s,
                "HTTP/1.0 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A /metrics target the test controls: `NAME{suite="SUITE"} VALUE`. Returns its port.
pub fn serve_metric(
    name: &'static str,
    value: std::sync::Arc<std::sync::atomic::AtomicU32>,
    suite: String,
) -> u16 {
    serve_http(move || {
        let v = value.load(std::sync::atomic::Ordering::SeqCst);
        (
            200,
            format!("# TYPE {name} gauge\n{name}{{suite=\"{suite}\"}} {v}\n"),
        )
    })
}

/// Events of one kind from a run's JSON lines.
pub fn named<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// A node's annotations as JSON (Null when it has none).
pub fn annotations(name: &str) -> serde_json::Value {
    let out = kubectl_ok(&[
        "get",
        "node",
        name,
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

/// One annotation of a node ("" when absent).
pub fn annotation(node: &str, key: &str) -> String {
    annotations(node)[key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn unschedulable(name: &str) -> bool {
    kubectl_ok(&["get", "node", name, "-o", "jsonpath={.spec.unschedulable}"]).trim() == "true"
}

/// One pod pinned to `node` (Deployment `held`) whose PodDisruptionBudget allows no disruption:
/// draining the node blocks until the test deletes the PDB.
pub fn held_by_pdb(ns: &str, node: &str) {
    kubectl_apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: held, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: held}}}}\n  template:\n    metadata: {{labels: {{app: held}}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {node}}}\n      containers: [{{name: c, image: db}}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: held, namespace: {ns}}}\nspec:\n  maxUnavailable: 0\n  selector: {{matchLabels: {{app: held}}}}\n"
    ));
    kubectl_ok(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Available",
        "deployment/held",
        "--timeout=60s",
    ]);
}

/// Writes the playbook with the health monitor on (every default signal) and scoped to this
/// test: its nodes (the suite of the `rollgate.test/suite=SUITE` selector in the playbook, or of
/// the first node it lists) and, here, no namespace (use [`write_playbook_in`] when the test
/// has one). Scoped this way, parallel tests' faults cannot stop each other. A playbook with its
/// own `[monitor]` is written as it is.
pub fn write_playbook(dir: &Path, text: &str) -> PathBuf {
    write_monitored(dir, text, None)
}

/// [`write_playbook`] with the monitor also watching the pods of the test's namespace `ns`.
pub fn write_playbook_in(dir: &Path, text: &str, ns: &str) -> PathBuf {
    write_monitored(dir, text, Some(ns))
}

/// Writes the playbook with the monitor watching nothing; `why` (required) says why this test
/// cannot run with it, and lands in the playbook as a comment.
pub fn write_playbook_unmonitored(dir: &Path, text: &str, why: &str) -> PathBuf {
    assert!(!why.trim().is_empty(), "say why the monitor is off");
    let path = dir.join("playbook.toml");
    std::fs::write(
        &path,
        format!("{text}\n# monitor off: {why}\n[monitor]\nnamespaces = [\"rollgate-unwatched\"]\nnode-selector = \"rollgate.test/unwatched\"\n"),
    )
    .unwrap();
    path
}

/// The `[monitor]` section that scopes the monitor to `suite`'s nodes and the namespace `ns`
/// (None: no namespace of the test's; pods are watched in a namespace named after the suite,
/// which has none). `extra` lines (e.g. `pending-after = "5s"`) go into the section.
pub fn monitor_scope(suite: &str, ns: Option<&str>, extra: &str) -> String {
    let ns = ns.map_or_else(|| format!("rollgate-test-{suite}"), str::to_owned);
    format!(
        "\n[monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n{extra}"
    )
}

/// The test suite a playbook's nodes belong to: from its `rollgate.test/suite=` selector, or
/// the label of the first node listed in `nodes = [...]`.
pub fn suite_of_playbook(text: &str) -> String {
    const LABEL: &str = "rollgate.test/suite=";
    if let Some(at) = text.find(LABEL) {
        return text[at + LABEL.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
    }
    let first_node = text
        .split("nodes = [")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_else(|| {
            panic!("cannot scope the monitor: the playbook has no suite selector and lists no node:\n{text}")
        });
    let suite = kubectl_ok(&[
        "get",
        "node",
        first_node,
        "-o",
        "jsonpath={.metadata.labels.rollgate\\.test/suite}",
    ]);
    assert!(
        !suite.trim().is_empty(),
        "node {first_node} has no rollgate.test/suite label"
    );
    suite.trim().to_owned()
}

fn write_monitored(dir: &Path, text: &str, ns: Option<&str>) -> PathBuf {
    let path = dir.join("playbook.toml");
    let monitor = if text.contains("[monitor]") {
        String::new()
    } else {
        monitor_scope(&suite_of_playbook(text), ns, "")
    };
    std::fs::write(&path, format!("{text}{monitor}")).unwrap();
    path
}

/// The latest run's journal events about `node` in `state_dir`, oldest first.
pub fn journal_events(state_dir: &Path, node: &str) -> Vec<serde_json::Value> {
    let runs = state_dir.join("runs");
    let Ok(run_id) = std::fs::read_to_string(runs.join("latest")) else {
        return Vec::new();
    };
    std::fs::read_to_string(runs.join(run_id.trim()).join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["node"] == node)
        .collect()
}

pub fn journal_has(state_dir: &Path, node: &str, event: &str, step: &str) -> bool {
    journal_events(state_dir, node)
        .iter()
        .any(|v| v["event"] == event && v["step"] == step)
}

pub fn last_journal_event(state_dir: &Path, node: &str) -> serde_json::Value {
    journal_events(state_dir, node)
        .pop()
        .unwrap_or(serde_json::Value::Null)
}

/// rollgate at a real pseudo-terminal (util-linux `script`): what a person at a terminal sees,
/// and keys typed as a person types them (the terminal's interrupt character is Ctrl-C).
pub struct Terminal {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    screen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Terminal {
    pub fn start(inner: &Command) -> Self {
        use std::os::unix::process::CommandExt;
        let mut reader = Command::new(inner.get_program());
        reader
            .args(inner.get_args())
            .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
        as_reader_if_read_only(&mut reader);
        let line: Vec<String> = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
            .collect();
        // script(1) runs the line through $SHELL; `exec` makes rollgate the shell's
        // replacement whatever the shell is, so the exit code seen is rollgate's own (dash,
        // waiting on a child, dies of the same SIGINT and reports 130 instead).
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &format!("exec {}", line.join(" ")), "/dev/null"])
            .env("SHELL", "/bin/sh")
            .envs(reader.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(dir) = inner.get_current_dir() {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("start script(1)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stdin,
            screen,
        }
    }

    /// Everything shown so far.
    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until the screen shows `text`; panics after `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.screen().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the terminal did not show {text:?} within {timeout:?}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types Ctrl-C (the terminal's interrupt character: the kernel sends SIGINT to the
    /// terminal's foreground process group).
    pub fn ctrl_c(&mut self) {
        self.stdin.write_all(b"\x03").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Types a line (and Enter), as a person answers a prompt.
    pub fn type_line(&mut self, text: &str) {
        self.stdin
            .write_all(format!("{text}\r").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    /// Closes the terminal: kills script's process group; rollgate, in script's new session,
    /// gets SIGHUP when the terminal goes away.
    pub fn close(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }

    /// Waits for rollgate to exit: (exit code, screen). Kills it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                return (status.code().unwrap_or(-1), self.screen());
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", self.child.id())])
                    .status();
                let _ = self.child.wait();
                panic!(
                    "rollgate did not exit within {timeout:?}:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A non-root user on the test nodes with passwordless sudo (made by `cargo xtask testenv install`).
pub const SUDO_USER: &str = "rollgate-sudo";

/// The test environment's fake config-management run (`xtask/assets/kwok-node-upgrade.sh`).
pub fn upgrade_script() -> String {
    env()
        .state_dir
        .join("bin/kwok-node-upgrade")
        .display()
        .to_string()
}

/// The kubelet version a node reports.
pub fn kubelet(node: &str) -> String {
    kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.nodeInfo.kubeletVersion}",
    ])
    .trim()
    .to_owned()
}

/// The node the first pod labelled `app=APP` in `ns` runs on.
pub fn node_of_app(ns: &str, app: &str) -> String {
    kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[0].spec.nodeName}",
    ])
    .trim()
    .to_owned()
}

/// A crash at exactly one step boundary: starts `rollgate run --yes PLAYBOOK` holding the
/// cluster lock `lock` for 3 s, lets the failpoint hold it right after the first node (`node`)
/// finished `step`, SIGKILLs it there, and returns once the dead runner's lock has expired.
pub async fn crash_run_after(
    state_dir: &Path,
    playbook: &Path,
    lock: &str,
    node: &str,
    step: &str,
) {
    let mut cmd = rollgate(state_dir);
    cmd.args(["--log-format", "json", "run", "--yes"])
        .arg(playbook);
    crash_after(cmd, state_dir, lock, node, step).await
}

/// [`crash_run_after`] for a `rollgate ... run ...` command the test prepared itself (its own
/// config or environment): adds the failpoint, the lock `lock` held for 3 s and no terminal.
pub async fn crash_after(mut cmd: Command, state_dir: &Path, lock: &str, node: &str, step: &str) {
    cmd.env("ROLLGATE_FAILPOINT", format!("pause-after:{step}"))
        .env("ROLLGATE_LOCK_NAME", lock)
        .args(["--lock-duration", "3s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let (state, node, step) = (state_dir.to_owned(), node.to_owned(), step.to_owned());
    eventually(
        &format!("{node} to finish {step}"),
        Duration::from_secs(60),
        || {
            let (state, node, step) = (state.clone(), node.clone(), step.clone());
            async move { journal_has(&state, &node, "step-finished", &step) }
        },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_secs(4)).await; // the dead runner's lock expires
}

/// Prints one line of a benchmark's table and appends it to `$ROLLGATE_BENCH_TABLE` when set
/// (`cargo xtask bench` prints every bench's lines as one table at the end).
pub fn bench_row(line: &str) {
    println!("{line}");
    if let Some(path) = std::env::var_os("ROLLGATE_BENCH_TABLE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the bench table");
        writeln!(f, "{line}").expect("append to the bench table");
    }
}

/// The environment variable the Slack tests hand the stand-in's token in.
pub const SLACK_TOKEN_VAR: &str = "ROLLGATE_TEST_SLACK_TOKEN";

/// A config in `dir` pointing Slack at the stand-in, on a channel of the test's own (the token
/// comes from [`SLACK_TOKEN_VAR`]).
pub fn slack_config(dir: &Path, channel: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[slack]\nchannel = \"{channel}\"\ntoken-env = \"{SLACK_TOKEN_VAR}\"\napi-url = \"{}/api/\"\n",
            env().slack_url
        ),
    )
    .unwrap();
    path
}

/// Every request the Slack stand-in recorded (method, path, authorized, body, failed), in order.
pub fn slack_recorded() -> Vec<serde_json::Value> {
    serde_json::from_str(&http_get(&format!("{}/_recorded", env().slack_url))).unwrap()
}

/// The texts the Slack stand-in recorded (and answered normally) for `channel`.
pub fn slack_texts(channel: &str) -> Vec<String> {
    let recorded: Vec<serde_json::Value> = slack_recorded();
    recorded
        .into_iter()
        .filter(|r| r["body"]["channel"] == channel && r["failed"].is_null())
        .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Waits for a spawned rollgate to exit (killed, and the test failed, after `timeout`): its
/// exit code (None: killed by a signal).
pub fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("rollgate did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the latest run in state directory `dir`.
pub fn latest_run_id(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("runs/latest"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Waits (at most a minute) until node `node` of the latest run in `dir` has started its
/// command (journaled).
pub async fn command_started(dir: &Path, node: &str) {
    let (state, node) = (dir.to_owned(), node.to_owned());
    eventually(
        &format!("{node} to start its command"),
        Duration::from_secs(60),
        || {
            let (state, node) = (state.clone(), node.clone());
            async move { journal_has(&state, &node, "step-started", "command") }
        },
    )
    .await;
}

/// An unattended run in the background, as an operator starts one for the night: `rollgate
/// --config CONFIG --log-format json run --yes` over the nodes labelled with `suite`, in name
/// order, one at a time, with a command that prints a line a second for `seconds` (like a Chef
/// run), a lock of its own, `envs` added (tokens), stderr (its JSON events) in `dir/stderr.log`.
pub fn spawn_printing_run(
    dir: &Path,
    suite: &str,
    config: &Path,
    seconds: u32,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let playbook = write_playbook(
        dir,
        &format!(
            "name = \"{suite}\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n\
             [command]\nrun = 'for i in $(seq 1 {seconds}); do echo upgrading $i; sleep 1; done'\n"
        ),
    );
    let mut cmd = rollgate(dir);
    cmd.arg("--config")
        .arg(config)
        .envs(envs.iter().copied())
        .env("ROLLGATE_LOCK_NAME", unique("lock"))
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    cmd.spawn().unwrap()
}

/// Waits (at most a minute) until node `node` of the latest run in `dir` is done (journaled).
pub async fn node_done(dir: &Path, node: &str) {
    let (state, node) = (dir.to_owned(), node.to_owned());
    eventually(
        &format!("{node} to finish"),
        Duration::from_secs(60),
        || {
            let (state, node) = (state.clone(), node.clone());
            async move {
                journal_events(&state, &node)
                    .iter()
                    .any(|v| v["event"] == "node-done")
            }
        },
    )
    .await;
}
