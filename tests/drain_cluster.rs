//! Drains under contention on the real test cluster (issue 10, item 6): many nodes drained at
//! once under one shared PodDisruptionBudget, with the budget's status contended (409) and the
//! evictions throttled by API priority and fairness (429), all finish; every retry cause is
//! reported; a drain that times out names every pod left and why.
//!
//! Both contentions are made certain, and kept local to this test:
//! - budget conflicts: for the first 20 s, a validating webhook of the test answers updates of the
//!   budget's status with the conflict (409) the apiserver gives when another writer got there
//!   first; the apiserver's eviction handler retries it 20 times over 10 s and then answers the
//!   eviction with it, as it does when many concurrent evictions keep winning the race (a race
//!   the shared 2-core test cluster cannot make certain on its own);
//! - throttling: rollgate authenticates as a ServiceAccount of the test's namespace whose
//!   evictions in that namespace a FlowSchema sends to a PriorityLevelConfiguration of about
//!   three seats that rejects the rest (the admin user is exempt from API priority and fairness).

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Cluster-scoped objects of one test (a ClusterRoleBinding, a FlowSchema and its priority
/// level), deleted when dropped.
struct ClusterObjects(Vec<String>);

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for o in &self.0 {
            let _ = kubectl(&["delete", o, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// The runner's kubeconfig (the ServiceAccount bound to the shipped roles), whose evictions in
/// `ns` API priority and fairness limits to a priority level with about three seats and no
/// queue: the rest are rejected with 429. Evictions elsewhere (other tests) are not limited.
fn throttled_identity(ns: &str) -> (std::path::PathBuf, ClusterObjects) {
    let name = format!("{ns}-evictions");
    let objects = ClusterObjects(vec![
        format!("flowschema.flowcontrol.apiserver.k8s.io/{name}"),
        format!("prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/{name}"),
    ]);
    let kubeconfig = kubeconfig_of(Identity::Runner);
    kubectl_apply(&format!(
        r#"
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {{name: {name}}}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    borrowingLimitPercent: 0
    limitResponse: {{type: Reject}}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {name}}}
spec:
  priorityLevelConfiguration: {{name: {name}}}
  matchingPrecedence: 500
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects: [{{kind: ServiceAccount, serviceAccount: {{name: {sa}, namespace: {state}}}}}]
    resourceRules:
    - verbs: [create]
      apiGroups: [""]
      resources: [pods/eviction]
      namespaces: [{ns}]
"#,
        sa = Identity::Runner.name(),
        state = STATE_NAMESPACE,
    ));
    (kubeconfig, objects)
}

/// A validating admission webhook, served by this test over TLS, that answers every update of
/// the status of PodDisruptionBudget `pdb` in `ns` with the apiserver's own conflict (409
/// `Conflict`, "the object has been modified") while `conflict` is set. Evictions read the budget,
/// then update its status; the apiserver's eviction handler retries that conflict 20 times over
/// 10 s, then answers the eviction with it, as it does when concurrent evictions keep winning the
/// race. Returns the webhook configuration (deleted when dropped) and a count of conflicts made.
fn budget_conflicts(
    ns: &str,
    pdb: &str,
    dir: &Path,
    conflict: Arc<AtomicBool>,
) -> (ClusterObjects, Arc<AtomicUsize>) {
    let (cert, key) = (dir.join("webhook.crt"), dir.join("webhook.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use rustls::pki_types::pem::PemObject;
    let cert_pem = std::fs::read(&cert).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(&cert_pem).unwrap()];
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&std::fs::read(&key).unwrap()).unwrap();
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let made = Arc::new(AtomicUsize::new(0));
    let conflict_message = format!(
        "Operation cannot be fulfilled on poddisruptionbudgets.policy \"{pdb}\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (pdb_name, made_by_server) = (pdb.to_owned(), Arc::clone(&made));
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (tls, conflict, made) = (
                Arc::clone(&tls),
                Arc::clone(&conflict),
                Arc::clone(&made_by_server),
            );
            let (message, pdb) = (conflict_message.clone(), pdb_name.clone());
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(tls) else {
                    return;
                };
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                while let Some(body) = read_http_request(&mut stream) {
                    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let request = &review["request"];
                    let ours =
                        request["name"] == pdb.as_str() && request["subResource"] == "status";
                    let response = if ours && conflict.load(Ordering::SeqCst) {
                        made.fetch_add(1, Ordering::SeqCst);
                        serde_json::json!({"uid": request["uid"], "allowed": false, "status": {
                            "code": 409, "reason": "Conflict", "message": message,
                            "details": {"name": pdb, "group": "policy", "kind": "poddisruptionbudgets"}}})
                    } else {
                        serde_json::json!({"uid": request["uid"], "allowed": true})
                    };
                    let body = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream
                        .write_all(reply.as_bytes())
                        .and_then(|_| stream.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let ca = std::process::Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let name = format!("{ns}-budget-conflicts");
    kubectl_apply(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
- name: budget-conflicts.rollgate.test
  clientConfig: {{url: "https://127.0.0.1:{port}/", caBundle: "{ca}"}}
  rules: [{{operations: [UPDATE], apiGroups: [policy], apiVersions: [v1], resources: [poddisruptionbudgets/status], scope: Namespaced}}]
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
"#,
        ca = String::from_utf8_lossy(&ca.stdout).trim()
    ));
    (
        ClusterObjects(vec![format!("validatingwebhookconfiguration/{name}")]),
        made,
    )
}

/// Reads one HTTP/1.1 request with a Content-Length body; None at the end of the connection.
fn read_http_request(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// The pods of Deployment `app` in `ns`, by node.
fn pods_by_node(ns: &str, app: &str) -> BTreeMap<String, usize> {
    let out = kubectl_ok(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut by_node = BTreeMap::new();
    for n in out.lines().filter(|l| !l.is_empty()) {
        *by_node.entry(n.to_owned()).or_default() += 1;
    }
    by_node
}

fn node_log(state: &Path, node: &str) -> String {
    let runs = state.join("runs");
    let id = std::fs::read_to_string(runs.join("latest")).unwrap();
    std::fs::read_to_string(
        runs.join(id.trim())
            .join("nodes")
            .join(format!("{node}.log")),
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_drained_at_once_under_one_budget_all_finish_through_conflicts_and_throttling() {
    let suite = unique("contend");
    let mut nodes = TestNodes::new(&suite);
    let targets: Vec<String> = (1..=10).map(|i| format!("{suite}-n{i}")).collect();
    for n in &targets {
        nodes.add(n, &["rollgate.test/role=target"], &[], "v1.35.4");
    }
    let ns = TestNamespace::new("contend");
    // 50 pods of one Deployment on the ten nodes, one budget allowing 10% of them to be down.
    kubectl_apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 50
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeSelector: {{rollgate.test/suite: "{suite}"}}
      terminationGracePeriodSeconds: 0
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers: [{{name: c, image: web}}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: {ns}}}
spec:
  maxUnavailable: "10%"
  selector: {{matchLabels: {{app: web}}}}
"#,
        ns = ns.0
    ));
    kubectl_ok(&[
        "-n",
        &ns.0,
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=120s",
    ]);
    let before = pods_by_node(&ns.0, "web");
    assert!(
        targets
            .iter()
            .all(|n| before.get(n).copied().unwrap_or(0) >= 2),
        "several pods on every node before the run: {before:?}"
    );
    eventually("the budget to allow 5 disruptions", MINUTE, || async {
        kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ])
        .trim()
            == "5"
    })
    .await;
    // Two spare nodes that join after placement take the replacements.
    for i in 1..=2 {
        nodes.add(&format!("{suite}-spare{i}"), &[], &[], "v1.35.4");
    }

    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _cluster_objects) = throttled_identity(&ns.0);
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"drains under contention\"\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}, rollgate.test/role=target\"\nconcurrency = 10\n\
             [drain]\ntimeout = \"100s\"\n\
             [command]\nrun = 'echo \"upgrading $ROLLGATE_NODE\"; sleep 1; echo done'\ntimeout = \"1m\"\n\
             [ready]\ntimeout = \"1m\"\n[settle]\ntimeout = \"2m\"\n\
             [monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n",
            ns = ns.0
        ),
    );

    // The budget's status conflicts for the first 20 s of the run.
    let conflict = Arc::new(AtomicBool::new(true));
    let (_webhook, conflicts) = budget_conflicts(&ns.0, "web", dir.path(), Arc::clone(&conflict));
    let stopper = {
        let conflict = Arc::clone(&conflict);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            conflict.store(false, Ordering::SeqCst);
        })
    };
    let mut cmd = rollgate(dir.path());
    cmd.env("KUBECONFIG", &kubeconfig)
        .args(["--log-format", "json", "run", "--yes", "--show-output"])
        .arg(&playbook);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run_rollgate(cmd, 6 * MINUTE))
        .await
        .unwrap();
    stopper.abort();
    let conflicts = conflicts.load(Ordering::SeqCst);
    let events = events(&stderr);

    let failed = named(&events, "node-failed");
    assert!(failed.is_empty(), "no node fails: {failed:#?}\n{stderr}");
    assert_eq!(code, 0, "{stderr}");
    let done: BTreeSet<&str> = named(&events, "node-done")
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(done.len(), 10, "every node is done: {done:?}");
    let started = named(&events, "node-started").len();
    assert_eq!(started, 10);

    // Every pod left its node through an accepted eviction, none through a guess.
    let evicted: BTreeSet<&str> = named(&events, "pod-evicted")
        .iter()
        .map(|e| e["pod"].as_str().unwrap())
        .collect();
    let on_targets: usize = targets.iter().map(|n| before[n]).sum();
    assert_eq!(evicted.len(), on_targets, "every pod was evicted once");
    let after = pods_by_node(&ns.0, "web");
    assert_eq!(after.values().sum::<usize>(), 50, "{after:?}");

    // Both causes were met, retried and reported once per pod and cause.
    let retried = named(&events, "eviction-retried");
    let causes: BTreeSet<&str> = retried
        .iter()
        .map(|e| e["cause"].as_str().unwrap())
        .collect();
    assert!(
        causes.contains("budget-conflict"),
        "a budget conflict was met ({conflicts} conflicting status updates): {causes:?}\n{stderr}"
    );
    assert!(
        causes.contains("throttled"),
        "throttling was met: {causes:?}"
    );
    let mut seen = BTreeSet::new();
    for e in &retried {
        let key = (e["pod"].as_str().unwrap(), e["cause"].as_str().unwrap());
        assert!(seen.insert(key), "{key:?} reported once: {retried:#?}");
        if e["cause"] == "budget-conflict" {
            assert_eq!(e["pdb"], format!("{}/web", ns.0), "{e}");
        }
    }
    let by_cause = |c: &str| retried.iter().filter(|e| e["cause"] == c).count();
    eprintln!(
        "10 nodes, {on_targets} pods: {} budget-conflict and {} throttled retry reports, {} PDB blocks, {conflicts} conflicting budget status updates",
        by_cause("budget-conflict"),
        by_cause("throttled"),
        named(&events, "eviction-blocked").len()
    );
    let mut blocked = BTreeSet::new();
    for e in named(&events, "eviction-blocked") {
        assert!(
            blocked.insert(e["pod"].as_str().unwrap()),
            "one report per pod: {e}"
        );
    }
    // Each is in the per-node log of its node, and on the terminal.
    let conflict = retried
        .iter()
        .find(|e| e["cause"] == "budget-conflict")
        .unwrap();
    let node = conflict["node"].as_str().unwrap();
    let log = node_log(dir.path(), node);
    assert!(
        log.contains("\"event\":\"eviction-retried\"") && log.contains("budget-conflict"),
        "{node}.log:\n{log}"
    );
}

#[tokio::test]
async fn a_drain_timeout_names_each_pod_left_and_why() {
    let suite = unique("left");
    let mut nodes = TestNodes::new(&suite);
    let n1 = format!("{suite}-n1");
    nodes.add(&n1, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("left");
    // A pod a budget holds, and a pod a finalizer keeps after its eviction.
    held_by_pdb(&ns.0, &n1);
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sticky, namespace: {}, finalizers: [rollgate.test/hold]}}\nspec: {{nodeName: {n1}, containers: [{{name: c, image: app}}]}}\n",
        ns.0
    ));
    let release = || {
        let _ = kubectl(&[
            "-n",
            &ns.0,
            "patch",
            "pod",
            "sticky",
            "--type=merge",
            "-p",
            "{\"metadata\":{\"finalizers\":null}}",
        ]);
    };
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"left\"\n[[phase]]\nname = \"all\"\nnodes = [\"{n1}\"]\n\
             [drain]\ntimeout = \"8s\"\nforce = true\n\
             [command]\nrun = 'echo never'\n\
             [monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n",
            ns = ns.0
        ),
    );
    let mut cmd = rollgate(dir.path());
    // The held pod's budget never allows its eviction and the pod is pinned to n1 by hostname:
    // true drain-blockers and capacity blockers, built on purpose (the drain's timeout is
    // under test).
    cmd.args(["--log-format", "json", "run", "--yes"])
        .args(["--ignore-preflight", "drain-blockers"])
        .args(["--ignore-preflight", "capacity"])
        .arg(&playbook);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run_rollgate(cmd, 2 * MINUTE))
        .await
        .unwrap();
    release();
    let events = events(&stderr);
    assert_eq!(code, 4, "{stderr}");
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    let reason = failed[0]["reason"].as_str().unwrap();
    let sticky = format!("{}/sticky (evicted ", ns.0);
    assert!(
        reason.contains("2 pod(s) still on the node")
            && reason.contains(&sticky)
            && reason.contains("held by finalizer(s) rollgate.test/hold")
            && reason.contains(&format!("blocked by PodDisruptionBudget {}/held", ns.0)),
        "names each pod and why: {reason}"
    );
    let log = node_log(dir.path(), &n1);
    assert!(
        log.contains("held by finalizer(s) rollgate.test/hold"),
        "{log}"
    );
}

/// Issue 13, item 1: a refused eviction is retried as soon as its budget allows one again, not
/// only after the fixed 5 s retry. Six pods of one Deployment on the drained node, a budget of
/// `maxUnavailable: 1`: each replacement started on the other node frees the budget within a
/// second or two (kwok starts pods at once), and the drain says how many retries the budget's
/// status woke.
#[tokio::test]
async fn a_refused_eviction_is_retried_as_soon_as_its_budget_allows_one() {
    let suite = unique("pdbwake");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("pdbwake");
    // All six pods on n1: n2 is cordoned while they are scheduled.
    kubectl_ok(&["cordon", &names[1]]);
    deployment_with_pdb(&ns.0, "web", &suite, 6, 1);
    kubectl_ok(&["uncordon", &names[1]]);
    assert_eq!(pods_by_node(&ns.0, "web").get(&names[0]), Some(&6));
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"pdbwake\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\"]\n\
             [drain]\ntimeout = \"2m\"\n[command]\nrun = 'echo upgrading; sleep 1'\n",
            names[0]
        ),
        &ns.0,
    );
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run_rollgate(cmd, 3 * MINUTE))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let events = events(&stderr);
    assert!(
        !named(&events, "eviction-blocked").is_empty(),
        "the budget refused evictions: {stderr}"
    );
    let drained = named(&events, "step-finished")
        .into_iter()
        .find(|e| e["step"] == "drain")
        .expect("the drain finished");
    let detail = drained["detail"].as_str().unwrap();
    let woken: u32 = detail
        .split(", ")
        .find_map(|part| {
            part.strip_suffix(" refused eviction(s) retried as soon as their budget allowed")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry woken by the budget: {detail}"));
    assert!(woken >= 1, "{detail}");
    assert!(detail.starts_with("6 evicted"), "{detail}");
    assert_eq!(pods_by_node(&ns.0, "web").get(&names[1]), Some(&6));
    eprintln!(
        "drain: {detail} in {} ms",
        drained["elapsed_ms"].as_u64().unwrap()
    );
}
