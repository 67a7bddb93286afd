//! Issue 14, items 4 and 5, on the test cluster (monitor on): secrets never reach a record, and
//! a hostile SSH destination on a Node is refused without running anything.
//!
//! The secrets test plants a distinct value in every place a user can put one, runs a full
//! rollout with a gate decision and a failed node, then searches every artifact: the state
//! directory (every file), the run's ConfigMap in the cluster, the Slack stand-in's recorded
//! requests, the webhook receiver's bodies, the Pushgateway, stdout and stderr.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const SLACK_TOKEN_VAR: &str = "ROLLGATE_TEST_SLACK_TOKEN";

/// A loopback receiver for the JSON webhook: records each request's body (the path and the
/// Authorization header are where the webhook's secrets legitimately go).
fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    break;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (url, bodies)
}

/// Every file under `dir`, with its text (binary files lossily; a gzip journal copy is read by
/// the ConfigMap check).
fn files_under(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("the journal copy decompresses");
    String::from_utf8_lossy(&out).into_owned()
}

/// Fails naming each (secret, place) where a planted value was found.
fn assert_no_secret(secrets: &[(&str, String)], places: &[(String, String)]) {
    let mut found = Vec::new();
    for (what, value) in secrets {
        for (place, text) in places {
            if let Some(at) = text.find(value.as_str()) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                found.push(format!(
                    "{what} ({value}) in {place}: {}",
                    &text[line_start..line_end]
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "secrets reached a record:\n  {}",
        found.join("\n  ")
    );
}

#[tokio::test]
async fn no_planted_secret_reaches_any_record_of_a_rollout_with_a_gate_decision_and_a_failed_node()
{
    let suite = unique("secrets");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let n1 = &names[0];
    // The planted values, each distinct and each in a place a user can put one.
    let runner_secret = format!("runner-secret-{suite}-Zq9");
    // A PEM-like value over several lines, as a Chef validation key is.
    let runner_value =
        format!("-----BEGIN RSA PRIVATE KEY-----\n{runner_secret}\n-----END RSA PRIVATE KEY-----");
    let cmd_env_secret = format!("cmdenv-secret-{suite}-Wx4");
    let probe_pass = format!("probepass-{suite}-Kk2");
    let probe_token = format!("probetoken-{suite}-Jj7");
    let header_secret = format!("header-secret-{suite}-Hh5");
    let prom_pass = format!("prompass-{suite}-Pp3");
    let hook_path = format!("/hooks/hookpath-{suite}-Vv8");
    let hook_key = format!("hookkey-{suite}-Uu1");
    let hook_token = format!("hooktoken-{suite}-Tt6");
    let slack_token = env().slack_token.clone();
    let channel = format!("#{suite}");

    // The HTTP probe's target answers 503: the probe fails, its gate decides (warn).
    let probe_port = serve_http(|| (503, "down for maintenance".into()));
    let (hook_base, hook_bodies) = webhook_receiver();
    let prometheus = env()
        .prometheus_url
        .replacen("://", &format!("://prom-user:{prom_pass}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[slack]\nchannel = \"{channel}\"\ntoken-env = \"{SLACK_TOKEN_VAR}\"\napi-url = \"{}/api/\"\n\
             app-token-env = \"ROLLGATE_TEST_SLACK_APP_TOKEN\"\noperators = [\"U0ALICE\"]\n\
             [prometheus]\nurl = \"{prometheus}\"\n\
             [[notify]]\nkind = \"webhook\"\nurl-env = \"ROLLGATE_TEST_HOOK_URL\"\ntoken-env = \"ROLLGATE_TEST_HOOK_TOKEN\"\n",
            env().slack_url
        ),
    )
    .unwrap();
    // n1's command fails (within the failure budget); every command proves it got the
    // env-from-runner value (a hash of it) and prints the value itself, which the records
    // must scrub.
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"secrets\"\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\nconcurrency = 2\nfailure-budget = 1\n\
             [command]\nrun = 'echo \"key-hash=$(printf %s \"$RG_TEST_CHEF_KEY\" | sha256sum | cut -c1-16)\"; echo \"leaked: $RG_TEST_CHEF_KEY\"; {script}'\n\
             timeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\", FAKE_UPGRADE_FAIL = \"{n1}\", API_PASSWORD = \"{cmd_env_secret}\" }}\n\
             env-from-runner = [\"RG_TEST_CHEF_KEY\"]\n\
             [ready]\ntimeout = \"30s\"\n\
             [[probe]]\nname = \"api\"\nkind = \"http\"\nurl = \"http://probe-user:{probe_pass}@127.0.0.1:{probe_port}/health?access_token={probe_token}\"\n\
             headers = {{ Authorization = \"Bearer {header_secret}\" }}\ntimeout = \"5s\"\nwhen = [\"after-uncordon\"]\n\
             [[probe]]\nname = \"prom\"\nkind = \"prometheus\"\nquery = \"vector(1)\"\nmax = 0.5\nwhen = [\"after-uncordon\"]\n\
             [[gate]]\nsignal = \"probe:api\"\non-fail = \"warn\"\n\
             [[gate]]\nsignal = \"probe:prom\"\non-fail = \"warn\"\n",
            script = upgrade_script(),
        ),
    );
    let mut cmd = rollgate(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .env(SLACK_TOKEN_VAR, &slack_token)
        .env("ROLLGATE_TEST_SLACK_APP_TOKEN", &env().slack_app_token)
        .env("RG_TEST_CHEF_KEY", &runner_value)
        .env(
            "ROLLGATE_TEST_HOOK_URL",
            format!("{hook_base}{hook_path}?key={hook_key}"),
        )
        .env("ROLLGATE_TEST_HOOK_TOKEN", &hook_token)
        .env("ROLLGATE_PUSHGATEWAY", &env().pushgateway_url)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, stdout, stderr) = run_rollgate(cmd, 4 * MINUTE);
    let events = events(&stderr);

    // The rollout happened as planned: n1 failed, n2 and n3 done, gates decided.
    assert_eq!(code, 0, "the run goes on past n1's failure:\n{stderr}");
    let failed: Vec<&str> = named(&events, "node-failed")
        .iter()
        .filter_map(|e| e["node"].as_str())
        .collect();
    assert_eq!(failed, [n1.as_str()], "{stderr}");
    assert_eq!(named(&events, "node-done").len(), 2, "{stderr}");
    let decisions = named(&events, "gate-decision");
    assert!(!decisions.is_empty(), "a gate decided: {stderr}");
    let evidence = serde_json::to_string(&decisions).unwrap();
    assert!(
        evidence.contains(&format!(
            "http://REDACTED@127.0.0.1:{probe_port}/health?access_token=REDACTED"
        )),
        "the evidence names the probe's URL, redacted: {evidence}"
    );
    // Every command got the env-from-runner value whole (its hash), on the node.
    let hash = {
        use std::process::{Command, Stdio};
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(runner_value.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()[..16].to_owned()
    };
    let outputs: Vec<&str> = named(&events, "command-output")
        .iter()
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert_eq!(
        outputs
            .iter()
            .filter(|l| **l == format!("key-hash={hash}"))
            .count(),
        3,
        "each node's command got the secret: {outputs:?}"
    );
    assert!(
        outputs
            .iter()
            .any(|l| l.starts_with("leaked: ") && l.contains("REDACTED")),
        "what the command printed of it is scrubbed: {outputs:?}"
    );

    // Every artifact.
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut places: Vec<(String, String)> = vec![
        ("stdout".into(), stdout.clone()),
        ("stderr".into(), stderr.clone()),
    ];
    files_under(dir.path(), &mut places);
    places.retain(|(p, _)| {
        // The test's own inputs (the playbook and config it wrote) hold the values by design.
        !p.ends_with("/playbook.toml") || p.contains("/runs/")
    });
    places.retain(|(p, _)| !p.ends_with("/config.toml"));
    assert!(
        places
            .iter()
            .any(|(p, _)| p.contains(&run_id) && p.ends_with("playbook.toml")),
        "the run's playbook copy is searched: {:?}",
        places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(
        places
            .iter()
            .any(|(p, _)| p.contains(&run_id) && p.contains("nodes")),
        "the node logs are searched"
    );
    let cm: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "configmaps",
        "-A",
        "-l",
        "app.kubernetes.io/managed-by=rollgate",
        "-o",
        "json",
    ]))
    .unwrap();
    let ours: Vec<&Value> = cm["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(&run_id))
        })
        .collect();
    assert_eq!(ours.len(), 1, "the run's ConfigMap");
    places.push(("the run's ConfigMap".into(), ours[0].to_string()));
    let journal = ours[0]["binaryData"]["journal.jsonl.gz"]
        .as_str()
        .expect("the ConfigMap holds the journal");
    let journal = gunzip(&base64_decode(journal));
    assert!(
        journal.contains("gate-decision"),
        "the journal copy is the run's"
    );
    places.push(("the ConfigMap's journal".into(), journal));
    // The Nodes themselves: the failed node's `rollgate.dev/reason` quotes its command's output.
    let failed_node = kubectl_ok(&["get", "node", n1, "-o", "json"]);
    assert!(failed_node.contains("rollgate.dev/reason"), "{failed_node}");
    places.push((format!("node {n1}"), failed_node));
    let slack: Vec<Value> = slack_recorded();
    let slack_bodies: Vec<String> = slack.iter().map(|r| r["body"].to_string()).collect();
    assert!(
        slack_bodies.iter().any(|b| b.contains(&channel)),
        "Slack was told about the run"
    );
    places.push((
        "the Slack stand-in's requests".into(),
        slack_bodies.join("\n"),
    ));
    let hooks = hook_bodies.lock().unwrap().join("\n");
    assert!(
        hooks.contains(&run_id),
        "the webhook was told about the run: {hooks}"
    );
    places.push(("the webhook's bodies".into(), hooks));
    let pushed = http_get(&format!("{}/metrics", env().pushgateway_url));
    assert!(pushed.contains(&run_id), "the run pushed its metrics");
    places.push(("the Pushgateway".into(), pushed));

    let secrets = [
        ("the env-from-runner value", runner_secret.clone()),
        ("the command.env value", cmd_env_secret),
        ("the probe URL's password", probe_pass),
        ("the probe URL's token parameter", probe_token),
        ("the probe's header value", header_secret),
        ("the Prometheus URL's password", prom_pass),
        ("the webhook URL's path", hook_path),
        ("the webhook URL's key parameter", hook_key),
        ("the webhook token", hook_token),
        ("the Slack token", slack_token),
        ("the Slack app-level token", env().slack_app_token.clone()),
    ];
    assert_no_secret(&secrets, &places);
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Issue 14, item 5: a Node whose address is hostile (`-oProxyCommand=...`, which `ssh` would
/// take as an option and run) fails with a clear error, nothing runs (the file the option would
/// create never appears), pre-flight's ssh check names it, and the other nodes are upgraded.
#[tokio::test]
async fn a_node_with_a_hostile_address_fails_clearly_runs_nothing_and_the_others_are_upgraded() {
    let suite = unique("hostile");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let (good, evil) = (&names[0], &names[1]);
    let pwned = std::env::temp_dir().join(format!("pwned-{suite}"));
    let _ = std::fs::remove_file(&pwned);
    let hostile = format!("-oProxyCommand=touch {}", pwned.display());
    // The Node's InternalIP (what rollgate connects to by default) says the hostile text.
    kubectl_ok(&[
        "patch",
        "node",
        evil,
        "--subresource=status",
        "--type=json",
        "-p",
        &serde_json::json!([{"op": "replace", "path": "/status/addresses", "value": [
            {"type": "InternalIP", "address": hostile},
            {"type": "Hostname", "address": evil},
        ]}])
        .to_string(),
    ]);
    let addresses = kubectl_ok(&[
        "get",
        "node",
        evil,
        "-o",
        "jsonpath={.status.addresses[0].address}",
    ]);
    assert_eq!(addresses, hostile, "the apiserver kept the hostile address");
    let dir = tempfile::tempdir().unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"hostile\"\ntarget-kubelet-version = \"v1.36.3\"\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\nconcurrency = 2\nfailure-budget = 1\n\
             [command]\nrun = '{}'\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n[ready]\ntimeout = \"30s\"\n",
            upgrade_script()
        ),
    );

    // Pre-flight's ssh check names the node and why.
    let mut cmd = rollgate(dir.path());
    cmd.arg("preflight").arg(&playbook).args(["-o", "json"]);
    let (_, report, stderr) = run_rollgate(cmd, 2 * MINUTE);
    let ssh_findings = report
        .lines()
        .filter(|l| l.contains("ssh"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        report.contains(evil)
            && report.contains("is not a valid SSH destination")
            && report.contains("starts with '-'"),
        "pre-flight names the hostile address: {report}\n{stderr}\n{ssh_findings}"
    );

    // The run (ssh check waived, the node is what this test is about): the evil node fails with
    // the clear error, the good one is upgraded.
    let mut cmd = rollgate(dir.path());
    cmd.args([
        "--log-format",
        "json",
        "run",
        "--yes",
        "--ignore-preflight",
        "ssh",
    ])
    .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    assert_eq!(code, 0, "the run goes on past the refused node:\n{stderr}");
    let events = events(&stderr);
    let failed = named(&events, "node-failed");
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["node"], evil.as_str());
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("is not a valid SSH destination")
            && reason.contains("starts with '-'")
            && reason.contains("IP address or a DNS name"),
        "{reason}"
    );
    assert_eq!(named(&events, "node-done").len(), 1, "{stderr}");
    assert_eq!(kubelet(good), "v1.36.3");
    assert!(
        !pwned.exists(),
        "the hostile ProxyCommand ran: {} exists",
        pwned.display()
    );
}
