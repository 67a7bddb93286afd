//! Notifications through the generic JSON webhook channel, in a real run against the test
//! cluster (monitor on), received by a small HTTP server in the test.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    authorization: Option<String>,
    /// The status it was answered with.
    status: u16,
    body: Value,
}

/// A loopback HTTP/1.1 receiver that records every request (one per connection), answering the
/// first `fail_first` of them with 503 and the rest with 200. Returns its base URL.
fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (mut length, mut authorization) = (0usize, None);
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "authorization" => authorization = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut log = log.lock().unwrap();
            let status = if log.len() < fail_first { 503 } else { 200 };
            log.push(Received {
                path,
                authorization,
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            drop(log);
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (url, received)
}

#[test]
fn a_json_webhook_gets_the_run_started_each_node_done_and_the_end_and_no_secret_leaks() {
    let suite = unique("hookjson");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    // The first request fails: the delivery retries it and keeps the order.
    let (base, received) = receiver(1);
    let secret_path = format!("/hooks/{suite}-secret-path");
    let token = format!("hook-token-{suite}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[notify]]\nkind = \"webhook\"\nurl-env = \"ROLLGATE_TEST_HOOK_URL\"\ntoken-env = \"ROLLGATE_TEST_HOOK_TOKEN\"\n",
    )
    .unwrap();
    let playbook = write_playbook(
        dir.path(),
        &format!(
            "name = \"hooked json\"\n[[phase]]\nname = \"all\"\nnodes = [\"{}\", \"{}\"]\n\
             [command]\nrun = \"{}\"\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n",
            names[0],
            names[1],
            upgrade_script()
        ),
    );
    let mut cmd = rollgate(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .env("ROLLGATE_TEST_HOOK_URL", format!("{base}{secret_path}"))
        .env("ROLLGATE_TEST_HOOK_TOKEN", &token)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, stdout, stderr) = run_rollgate(cmd, Duration::from_secs(180));
    assert_eq!(code, 0, "{stderr}");
    let events = events(&stderr);
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let received = received.lock().unwrap().clone();
    assert_eq!(received[0].status, 503, "{received:#?}");
    assert!(
        received.iter().all(|r| r.path == secret_path
            && r.authorization.as_deref() == Some(&format!("Bearer {token}"))),
        "every post goes to the URL from the environment with the token: {received:#?}"
    );
    let delivered: Vec<&Value> = received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| &r.body)
        .collect();
    let kinds: Vec<&str> = delivered
        .iter()
        .map(|b| b["event"].as_str().unwrap())
        .collect();
    // The failed first post (the run's message) is retried first; updates are not posted.
    assert_eq!(received[0].body, *delivered[0], "{received:#?}");
    assert_eq!(
        kinds,
        ["run-started", "node-done", "node-done", "run-finished"],
        "{delivered:#?}"
    );
    assert!(
        delivered
            .iter()
            .all(|b| b["run_id"] == run_id.as_str() && b["playbook"] == "hooked json"),
        "{delivered:#?}"
    );
    let started = delivered[0];
    assert_eq!(started["fields"]["total"], "2", "{started}");
    // The pre-flight summary goes with the run's first message: each check's verdict.
    assert_eq!(
        started["fields"]["preflight"],
        "drain-blockers ok, capacity ok, ssh ok, eta ok, version-skew skipped",
        "{started}"
    );
    assert!(
        started["text"]
            .as_str()
            .unwrap()
            .contains("\npre-flight: drain-blockers *ok*"),
        "{started}"
    );
    assert!(
        started["text"]
            .as_str()
            .unwrap()
            .contains(&format!("rollgate run `{run_id}`: *hooked json* (running)")),
        "{started}"
    );
    let mut done_nodes: Vec<&str> = delivered[1..3]
        .iter()
        .map(|b| b["fields"]["node"].as_str().unwrap())
        .collect();
    done_nodes.sort();
    assert_eq!(done_nodes, [names[0].as_str(), names[1].as_str()]);
    for done in &delivered[1..3] {
        let node = done["fields"]["node"].as_str().unwrap();
        assert!(
            done["text"]
                .as_str()
                .unwrap()
                .starts_with(&format!("node `{node}` upgraded in ")),
            "{done}"
        );
        assert!(
            done["fields"]["elapsed_ms"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1000,
            "{done}"
        );
    }
    let finished = delivered[3];
    assert_eq!(finished["fields"]["outcome"], "succeeded", "{finished}");
    assert_eq!(finished["fields"]["done"], "2", "{finished}");
    assert_eq!(finished["fields"]["failed"], "0", "{finished}");
    let report = dir.path().join("runs").join(&run_id).join("report.html");
    assert_eq!(
        finished["fields"]["report"],
        report.display().to_string(),
        "{finished}"
    );
    assert!(
        finished["text"]
            .as_str()
            .unwrap()
            .starts_with("run finished after "),
        "{finished}"
    );

    // Neither the URL nor the token appears in the output or in anything the run recorded.
    for (what, text) in [("stderr", &stderr), ("stdout", &stdout)] {
        assert!(
            !text.contains(&secret_path) && !text.contains(&token),
            "a secret in {what}:\n{text}"
        );
    }
    let mut files = vec![dir.path().to_path_buf()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&secret_path) && !text.contains(&token),
                "a secret in {}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "the journal, the report and the node logs were checked"
    );
    let copy = kubectl_ok(&["get", "configmaps", "-A", "-o", "json"]);
    assert!(
        copy.contains(&run_id) && !copy.contains(&secret_path) && !copy.contains(&token),
        "the run's copy in the cluster holds no secret"
    );
}
