//! The test environment itself (issue 2): kwok nodes with addresses and sshd, on-demand faults,
//! the Slack stand-in, and Prometheus alerts that fire and clear.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use support::*;

fn ssh(address: &str, known_hosts: Option<&std::path::Path>, remote: &str) -> std::process::Output {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg(&env().ssh_config)
        .args(["-o", "BatchMode=yes"]);
    if let Some(kh) = known_hosts {
        cmd.arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()));
    }
    cmd.arg(address).arg(remote).output().expect("run ssh")
}

#[tokio::test]
async fn nodes_have_addresses_pod_cidrs_and_their_own_sshd_with_strict_host_keys() {
    let suite = unique("env");
    let mut nodes = TestNodes::new(&suite);
    let name = format!("{suite}-n1");
    let ip = nodes.add(
        &name,
        &["topology.kubernetes.io/zone=a"],
        &["dedicated=db:NoSchedule"],
        "v1.35.4",
    );
    assert!(ip.starts_with("127.0."), "{ip}");
    let client = client().await;
    eventually("the node to be Ready", Duration::from_secs(20), || {
        let client = client.clone();
        let name = name.clone();
        async move { rollgate::cluster::is_ready(&node(&client, &name).await) }
    })
    .await;
    let n = node(&client, &name).await;
    let spec = n.spec.clone().unwrap();
    // 127.0.1.N -> 127.2.N.0/24; past the first 254 nodes 127.0.B.N -> 127.(8+B).N.0/24.
    let octets: Vec<u32> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    let want = match octets[2] {
        1 => format!("127.2.{}.0/24", octets[3]),
        block => format!("127.{}.{}.0/24", 8 + block, octets[3]),
    };
    assert_eq!(spec.pod_cidr.as_deref(), Some(want.as_str()));
    assert_eq!(spec.taints.unwrap()[0].key, "dedicated");
    assert_eq!(rollgate::cluster::kubelet_version(&n), "v1.35.4");
    assert_eq!(
        n.metadata.labels.unwrap()["topology.kubernetes.io/zone"],
        "a"
    );

    let out = ssh(&ip, None, "echo reached $SSH_CONNECTION");
    assert!(
        out.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{ip} 22")),
        "sshd answers on the node's own address"
    );

    // Strict host key checking: an unknown host key is refused.
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = ssh(&ip, Some(empty.path()), "true");
    assert!(
        !out.status.success(),
        "ssh with an empty known_hosts must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn faults_on_demand_crashloop_with_rising_restarts_and_node_not_ready() {
    let suite = unique("fault");
    let mut nodes = TestNodes::new(&suite);
    let name = format!("{suite}-n1");
    nodes.add(&name, &[], &[], "v1.35.4");
    let ns = TestNamespace::new("fault");
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: crashy, namespace: {ns}, labels: {{rollgate.test/crashloop: \"true\"}}}}\n\
         spec: {{nodeName: {name}, containers: [{{name: c, image: app}}]}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: steady, namespace: {ns}}}\n\
         spec: {{nodeName: {name}, containers: [{{name: c, image: app}}]}}\n",
        ns = ns.0
    ));
    let client = client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.0);
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count)
            .unwrap_or(0)
    };
    let waiting = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
            .unwrap_or_default()
    };
    eventually("CrashLoopBackOff", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            pods.get("crashy")
                .await
                .map(|p| waiting(&p) == "CrashLoopBackOff")
                .unwrap_or(false)
        }
    })
    .await;
    let first = restarts(&pods.get("crashy").await.unwrap());
    eventually("restarts to rise", Duration::from_secs(20), || {
        let pods = pods.clone();
        async move {
            pods.get("crashy")
                .await
                .map(|p| restarts(&p) > first)
                .unwrap_or(false)
        }
    })
    .await;

    kubectl_ok(&["label", "node", &name, "rollgate.test/not-ready=true"]);
    let is_ready = |want: bool| {
        let client = client.clone();
        let name = name.clone();
        move || {
            let client = client.clone();
            let name = name.clone();
            async move { rollgate::cluster::is_ready(&node(&client, &name).await) == want }
        }
    };
    eventually(
        "the node to turn NotReady",
        Duration::from_secs(20),
        is_ready(false),
    )
    .await;
    let steady_ready = |want: bool| {
        let pods = pods.clone();
        move || {
            let pods = pods.clone();
            async move {
                pods.get("steady").await.is_ok_and(|p| {
                    p.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && (c.status == "True") == want)
                })
            }
        }
    };
    kubectl_ok(&["label", "node", &name, "rollgate.test/not-ready-"]);
    eventually(
        "the node to be Ready again",
        Duration::from_secs(20),
        is_ready(true),
    )
    .await;
    // The node lifecycle controller marks a down node's pods not Ready (as it did, racing a
    // node's return, in a demo run); like a kubelet's next status sync, kwok reports them Ready
    // again.
    kubectl_ok(&[
        "-n",
        &ns.0,
        "patch",
        "pod",
        "steady",
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    assert!(steady_ready(false)().await, "marked not Ready");
    eventually(
        "the steady pod to be Ready again",
        Duration::from_secs(30),
        steady_ready(true),
    )
    .await;
}

#[test]
fn slack_standin_speaks_the_web_api_checks_tokens_fails_on_request_and_records() {
    let e = env();
    let channel = unique("#standin");
    let url = format!("{}/api/chat.postMessage", e.slack_url);
    let (status, _, body) = http(
        "POST",
        &url,
        Some(&e.slack_token),
        &format!(r#"{{"channel":"{channel}","text":"hello"}}"#),
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true);
    let ts = v["ts"].as_str().unwrap().to_owned();
    let (_, _, body) = http(
        "POST",
        &format!("{}/api/chat.update", e.slack_url),
        Some(&e.slack_token),
        &format!(r#"{{"channel":"C1","ts":"{ts}","text":"edited {channel}"}}"#),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ok"],
        true
    );
    let (_, _, body) = http(
        "POST",
        &url,
        Some("xoxb-wrong"),
        &format!(r#"{{"channel":"{channel}","text":"x"}}"#),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "invalid_auth"
    );
    let (_, _, body) = http(
        "POST",
        &url,
        None,
        &format!(r#"{{"channel":"{channel}","text":"x"}}"#),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "not_authed"
    );

    // Told to fail: a 429 with Retry-After, then a 500, then normal again.
    http(
        "POST",
        &format!("{}/_fail", e.slack_url),
        None,
        r#"{"status":429,"retry_after":3}"#,
    );
    let (status, headers, _) = http(
        "POST",
        &url,
        Some(&e.slack_token),
        &format!(r#"{{"channel":"{channel}","text":"limited"}}"#),
    );
    assert_eq!(status, 429);
    assert!(
        headers.contains(&("retry-after".into(), "3".into())),
        "{headers:?}"
    );
    http(
        "POST",
        &format!("{}/_fail", e.slack_url),
        None,
        r#"{"status":500}"#,
    );
    let (status, _, _) = http(
        "POST",
        &url,
        Some(&e.slack_token),
        &format!(r#"{{"channel":"{channel}","text":"broken"}}"#),
    );
    assert_eq!(status, 500);
    let (_, _, body) = http(
        "POST",
        &format!("{}/services/T1/B1/secret", e.slack_url),
        None,
        &format!(r#"{{"text":"webhook {channel}"}}"#),
    );
    assert_eq!(body, "ok");

    let (_, _, body) = http("GET", &format!("{}/_recorded", e.slack_url), None, "");
    let recorded: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mine: Vec<&serde_json::Value> = recorded
        .iter()
        .filter(|r| r.to_string().contains(&channel))
        .collect();
    assert_eq!(mine.len(), 7, "every request is recorded: {mine:#?}");
    assert_eq!(mine[0]["authorized"], true);
    assert_eq!(mine[2]["authorized"], false);
}

#[tokio::test]
async fn prometheus_scrapes_a_test_target_and_its_alert_fires_and_clears() {
    let e = env();
    let suite = unique("prom").replace('-', "_");
    let value = Arc::new(AtomicU32::new(0));
    let port = serve_metric("rollgate_test_broken", Arc::clone(&value), suite.clone());
    std::fs::write(
        e.prometheus_targets_dir.join(format!("{suite}.json")),
        format!(r#"[{{"targets":["127.0.0.1:{port}"],"labels":{{"suite":"{suite}"}}}}]"#),
    )
    .unwrap();
    std::fs::write(
        e.prometheus_rules_dir.join(format!("{suite}.yml")),
        format!("groups:\n- name: {suite}\n  rules:\n  - alert: TestBroken_{suite}\n    expr: rollgate_test_broken{{suite=\"{suite}\"}} > 0\n    for: 0s\n"),
    )
    .unwrap();
    let prom = e.prometheus_url.clone();
    let (status, _, _) = http("POST", &format!("{prom}/-/reload"), None, "");
    assert_eq!(status, 200);
    let alert_state = || {
        let (_, _, body) = http("GET", &format!("{prom}/api/v1/alerts"), None, "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == format!("TestBroken_{suite}"))
            .map(|a| a["state"].as_str().unwrap().to_owned())
    };
    // Scraped and healthy first: the alert does not fire.
    eventually("the target to be scraped", Duration::from_secs(30), || {
        let (_, _, body) = http(
            "GET",
            &format!("{prom}/api/v1/query?query=rollgate_test_broken%7Bsuite%3D%22{suite}%22%7D"),
            None,
            "",
        );
        async move { body.contains("\"result\":[{") }
    })
    .await;
    assert_eq!(alert_state(), None);
    value.store(1, Ordering::SeqCst);
    eventually("the alert to fire", Duration::from_secs(30), || {
        let s = alert_state();
        async move { s.as_deref() == Some("firing") }
    })
    .await;
    value.store(0, Ordering::SeqCst);
    eventually("the alert to clear", Duration::from_secs(30), || {
        let s = alert_state();
        async move { s.is_none() }
    })
    .await;
    let _ = std::fs::remove_file(e.prometheus_rules_dir.join(format!("{suite}.yml")));
    let _ = std::fs::remove_file(e.prometheus_targets_dir.join(format!("{suite}.json")));
    http("POST", &format!("{prom}/-/reload"), None, "");
}
