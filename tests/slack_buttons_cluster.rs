//! The run's Slack buttons through Socket Mode, against the Slack stand-in (which speaks
//! Socket Mode: `apps.connections.open`, hello, interactive envelopes, acknowledgements,
//! disconnects) and the real cluster: a click by an operator pauses, resumes or aborts the run
//! on the same path as `rollgate pause`; anyone else is refused, told so in private, and the
//! refusal is recorded; the socket dropping or Slack asking to reconnect does not lose a later
//! click; Slack unreachable throughout changes nothing. The health monitor is on.
//!
//! Slack delivers a click to any one of the app's open connections, so two runs with buttons
//! on the same app would take each other's clicks (the run then tells the clicker): the tests
//! here that connect take turns.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const APP_TOKEN_VAR: &str = "ROLLGATE_TEST_SLACK_APP_TOKEN";

/// One connected run at a time (see the module doc).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A config with Slack at `api_url`, buttons on, operators: U0ALICE and the group S0OPS.
fn buttons_config(dir: &Path, channel: &str, api_url: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[slack]\nchannel = \"{channel}\"\ntoken-env = \"{SLACK_TOKEN_VAR}\"\napi-url = \"{api_url}\"\n\
             app-token-env = \"{APP_TOKEN_VAR}\"\noperators = [\"U0ALICE\", \"S0OPS\"]\n"
        ),
    )
    .unwrap();
    path
}

fn standin(path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = http(
        "POST",
        &format!("{}{path}", env().slack_url),
        None,
        &body.to_string(),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The stand-in's sockets: (live, connected since it started).
fn sockets() -> (u64, u64) {
    let v: Value =
        serde_json::from_str(&http_get(&format!("{}/_sockets", env().slack_url))).unwrap();
    (
        v["live"].as_u64().unwrap_or(0),
        v["connected_total"].as_u64().unwrap_or(0),
    )
}

/// Waits until at least one socket is live and more than `since` were ever connected.
async fn connected_after(since: u64) {
    eventually("the run's Socket Mode connection", MINUTE, || async move {
        let (live, total) = sockets();
        live > 0 && total > since
    })
    .await;
}

/// Clicks `action` on run `run`'s message as `user`: the stand-in's answer.
fn click(user: &str, action: &str, run: &str) -> (u16, Value) {
    standin(
        "/_click",
        json!({"user": user, "username": user.trim_start_matches("U0").to_lowercase(), "action": action, "run_id": run}),
    )
}

/// The texts of the ephemeral messages `user` got.
fn ephemerals(user: &str) -> Vec<String> {
    let recorded: Vec<Value> = slack_recorded();
    recorded
        .into_iter()
        .filter(|r| r["path"] == "/api/chat.postEphemeral" && r["body"]["user"] == user)
        .filter_map(|r| r["body"]["text"].as_str().map(str::to_owned))
        .collect()
}

async fn ephemeral_for(user: &str, containing: &str) {
    let (user, containing) = (user.to_owned(), containing.to_owned());
    eventually(&format!("{user} to be told {containing:?}"), MINUTE, || {
        let (user, containing) = (user.clone(), containing.clone());
        async move { ephemerals(&user).iter().any(|t| t.contains(&containing)) }
    })
    .await;
}

fn run_events(dir: &Path, run: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("runs").join(run).join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operators_click_pauses_and_resumes_others_are_refused_and_a_dropped_socket_reconnects()
{
    let _turn = TURN.lock().await;
    let suite = unique("btn-pause");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let dir = tempfile::tempdir().unwrap();
    let channel = format!("#{suite}");
    standin("/_usergroup", json!({"id": "S0OPS", "users": ["U0BOB"]}));
    let before = sockets().1;
    let config = buttons_config(dir.path(), &channel, &format!("{}/api/", env().slack_url));
    let mut child = spawn_printing_run(
        dir.path(),
        &suite,
        &config,
        4,
        &[
            (SLACK_TOKEN_VAR, &env().slack_token),
            (APP_TOKEN_VAR, &env().slack_app_token),
        ],
    );
    command_started(dir.path(), &names[0]).await;
    connected_after(before).await;
    let run = latest_run_id(dir.path());

    // Not an operator: refused in private, recorded, the run goes on.
    let (status, answer) = click("U0MALLORY", "pause", &run);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["acknowledged"], true, "{answer}");
    ephemeral_for("U0MALLORY", "You may not pause run").await;
    let refused: Vec<Value> = run_events(dir.path(), &run)
        .into_iter()
        .filter(|e| e["event"] == "control-refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["by"], "mallory (Slack U0MALLORY)");
    assert_eq!(refused[0]["reason"], "not among [slack] operators");

    // A member of the operators' user group: paused, on the cluster path, and told so.
    let clicked = std::time::Instant::now();
    let (status, answer) = click("U0BOB", "pause", &run);
    assert_eq!(status, 200, "{answer}");
    ephemeral_for("U0BOB", "paused: no new node starts").await;
    eprintln!(
        "click -> paused -> answer in Slack: {:?} (acknowledged in {:?})",
        clicked.elapsed(),
        answer["acknowledged"]
    );
    // The message now offers Resume and Abort, not Pause.
    eventually("the message to offer Resume", MINUTE, || {
        let run = run.clone();
        async move { click("U0NOBODY", "pause", &run).0 == 404 }
    })
    .await;

    // The socket drops (no close frame): the run reconnects and a later click still works.
    let before = sockets().1;
    let (_, dropped) = standin("/_disconnect", json!({"drop": true}));
    eprintln!("dropped: {dropped}");
    connected_after(before).await;
    let (status, answer) = click("U0ALICE", "resume", &run);
    assert_eq!(status, 200, "{answer}");
    ephemeral_for("U0ALICE", "resumed").await;

    assert_eq!(wait_exit(&mut child, 2 * MINUTE), Some(0));
    for n in &names {
        assert!(!unschedulable(n), "{n}");
    }
    let events = run_events(dir.path(), &run);
    let decision = events
        .iter()
        .find(|e| e["event"] == "gate-decision")
        .expect("the pause is a gate decision by the operator");
    assert_eq!(decision["decision"]["signal"], "operator");
    assert_eq!(
        decision["decision"]["evidence"],
        "paused by bob (Slack U0BOB)"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "resumed" && e["by"] == "alice (Slack U0ALICE)"),
        "{events:?}"
    );
    // The thread says who did what; the report lists it.
    let texts = slack_texts(&channel).join("\n");
    for said in [
        "refused a request to pause by mallory (Slack U0MALLORY): not among [slack] operators",
        "paused by bob (Slack U0BOB)",
        "resumed by alice (Slack U0ALICE)",
    ] {
        assert!(texts.contains(said), "{said:?} in\n{texts}");
    }
    let report = std::fs::read_to_string(dir.path().join("runs").join(&run).join("report.md"))
        .unwrap_or_default();
    assert!(
        report.contains("## Operator requests")
            && report.contains("paused by bob (Slack U0BOB)")
            && report.contains("refused: pause by mallory"),
        "{report}"
    );
    // The finished run's message offers no button.
    assert_eq!(click("U0ALICE", "resume", &run).0, 404);
    assert_eq!(click("U0ALICE", "abort", &run).0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abort_click_after_slack_asks_to_reconnect_stops_the_node_at_its_safe_point() {
    let _turn = TURN.lock().await;
    let suite = unique("btn-abort");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let dir = tempfile::tempdir().unwrap();
    let channel = format!("#{suite}");
    let before = sockets().1;
    let config = buttons_config(dir.path(), &channel, &format!("{}/api/", env().slack_url));
    let mut child = spawn_printing_run(
        dir.path(),
        &suite,
        &config,
        5,
        &[
            (SLACK_TOKEN_VAR, &env().slack_token),
            (APP_TOKEN_VAR, &env().slack_app_token),
        ],
    );
    command_started(dir.path(), &names[0]).await;
    connected_after(before).await;
    let run = latest_run_id(dir.path());
    // Slack's routine "refresh" disconnect: the run opens a new connection.
    let before = sockets().1;
    standin("/_disconnect", json!({"reason": "refresh_requested"}));
    connected_after(before).await;
    let (status, answer) = click("U0ALICE", "abort", &run);
    assert_eq!(status, 200, "{answer}");
    ephemeral_for("U0ALICE", "aborting").await;
    assert_eq!(wait_exit(&mut child, 2 * MINUTE), Some(5), "exit 5");
    let events = run_events(dir.path(), &run);
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "node-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["node"], names[0].as_str());
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("an operator aborted the run: aborted by alice (Slack U0ALICE)"),
        "{failed:?}"
    );
    assert!(
        unschedulable(&names[0]),
        "the node in flight stays cordoned"
    );
    assert!(
        !events.iter().any(|e| e["node"] == names[1].as_str()),
        "node 2 never started"
    );
    let texts = slack_texts(&channel).join("\n");
    assert!(texts.contains("ABORTED by an operator"), "{texts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_unreachable_throughout_changes_nothing() {
    let suite = unique("btn-down");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: no message, no socket, ever.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/", closed.local_addr().unwrap());
    drop(closed);
    let config = buttons_config(dir.path(), &format!("#{suite}"), &url);
    let mut child = spawn_printing_run(
        dir.path(),
        &suite,
        &config,
        2,
        &[
            (SLACK_TOKEN_VAR, &env().slack_token),
            (APP_TOKEN_VAR, &env().slack_app_token),
        ],
    );
    assert_eq!(wait_exit(&mut child, 3 * MINUTE), Some(0));
    let events = run_events(dir.path(), &latest_run_id(dir.path()));
    for n in &names {
        assert!(!unschedulable(n), "{n}");
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "node-done" && e["node"] == n.as_str()),
            "{n} upgraded"
        );
    }
    assert!(
        !events.iter().any(|e| e["event"] == "control-refused"),
        "{events:?}"
    );
}
