//! The stand-in served in-process on ephemeral ports, driven like rollgate drives it: Web API
//! calls over HTTP, Socket Mode over a real websocket client.

use super::*;
use crate::paths::{SLACK_APP_TOKEN, SLACK_TOKEN};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;
use tungstenite::stream::MaybeTlsStream;

type Client = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// Starts a stand-in on 127.0.0.1:0; returns its `http://ADDR`.
fn standin(ack_timeout: Duration) -> String {
    let (server, standin) = start(
        "127.0.0.1:0",
        SLACK_TOKEN.into(),
        SLACK_APP_TOKEN.into(),
        ack_timeout,
    )
    .expect("start the stand-in");
    let base = standin.base_url.clone();
    std::thread::spawn(move || run(server, standin));
    base
}

/// A minimal HTTP/1.1 client: `(status, JSON body)`.
fn http(base: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let addr = base.strip_prefix("http://").expect("http URL");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    http(base, "POST", path, None, &body.to_string())
}

fn api(base: &str, method: &str, token: &str, body: Value) -> Value {
    http(
        base,
        "POST",
        &format!("/api/{method}"),
        Some(token),
        &body.to_string(),
    )
    .1
}

/// `apps.connections.open` then a websocket client on its URL; returns it after `hello`.
fn connect(base: &str) -> (Client, Value) {
    let opened = api(base, "apps.connections.open", SLACK_APP_TOKEN, json!({}));
    assert_eq!(opened["ok"], true, "{opened}");
    let url = opened["url"].as_str().expect("url");
    let mut ws = ws_connect(url).expect("websocket connect");
    let hello = read_json(&mut ws);
    (ws, hello)
}

/// A websocket client on `url` (reads time out after 10 s, so a test fails rather than hangs).
fn ws_connect(url: &str) -> tungstenite::Result<Client> {
    let (ws, _) = tungstenite::connect(url)?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
    }
    Ok(ws)
}

fn read_json(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("a frame") {
            tungstenite::Message::Text(t) => {
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn wait_for(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = http(base, "GET", "/_sockets", None, "").1;
        if check(&counts) {
            return counts;
        }
        assert!(Instant::now() < deadline, "{what}: still {counts}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn post_run_message(base: &str, run: &str, actions: &[&str]) -> String {
    let buttons: Vec<Value> = actions
        .iter()
        .map(|a| json!({"type": "button", "action_id": a, "value": run, "text": {"type": "plain_text", "text": a}}))
        .collect();
    let blocks = json!([{"type": "section", "block_id": "s", "text": {"type": "mrkdwn", "text": "run"}},
                        {"type": "actions", "block_id": "controls", "elements": buttons}]);
    let posted = api(
        base,
        "chat.postMessage",
        SLACK_TOKEN,
        json!({"channel": "#ops", "text": "run", "blocks": blocks}),
    );
    posted["ts"].as_str().expect("ts").to_owned()
}

#[test]
fn tokens_are_checked_per_method_like_slack() {
    let base = standin(ACK_TIMEOUT);
    let open = |token| api(&base, "apps.connections.open", token, json!({}));
    assert_eq!(open(SLACK_TOKEN)["error"], "not_allowed_token_type");
    assert_eq!(open("xapp-wrong")["error"], "invalid_auth");
    let url = open(SLACK_APP_TOKEN)["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.contains("/link/?ticket="),
        "{url}"
    );
    assert!(url.ends_with("&app_id=A0ROLLGATE"), "{url}");
    let app_elsewhere = api(
        &base,
        "chat.postMessage",
        SLACK_APP_TOKEN,
        json!({"channel": "#x"}),
    );
    assert_eq!(app_elsewhere["error"], "not_allowed_token_type");
    let unauthenticated = http(&base, "POST", "/api/apps.connections.open", None, "{}").1;
    assert_eq!(unauthenticated["error"], "not_authed");
    let recorded = http(&base, "GET", "/_recorded", None, "").1;
    let authorized: Vec<_> = recorded
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["authorized"].clone())
        .collect();
    assert_eq!(
        authorized,
        vec![
            json!(false),
            json!(false),
            json!(true),
            json!(false),
            json!(false)
        ]
    );
    // Query-string GET, as slack-morphism calls usergroups.users.list.
    post(
        &base,
        "/_usergroup",
        json!({"id": "S0OPS", "users": ["U0ALICE"]}),
    );
    let (_, users) = http(
        &base,
        "GET",
        "/api/usergroups.users.list?usergroup=S0OPS",
        Some(SLACK_TOKEN),
        "",
    );
    assert_eq!(users, json!({"ok": true, "users": ["U0ALICE"]}));
    // A failure without a method spares apps.connections.open; one for that method only.
    post(&base, "/_fail", json!({"status": 500}));
    let open_status = |token| {
        http(
            &base,
            "POST",
            "/api/apps.connections.open",
            Some(token),
            "{}",
        )
        .0
    };
    assert_eq!(open_status(SLACK_APP_TOKEN), 200);
    assert_eq!(
        http(&base, "POST", "/api/auth.test", Some(SLACK_TOKEN), "{}").0,
        500
    );
    post(
        &base,
        "/_fail",
        json!({"status": 500, "method": "apps.connections.open"}),
    );
    assert_eq!(api(&base, "auth.test", SLACK_TOKEN, json!({}))["ok"], true);
    assert_eq!(
        http(
            &base,
            "POST",
            "/api/apps.connections.open",
            Some(SLACK_APP_TOKEN),
            "{}"
        )
        .0,
        500
    );
}

#[test]
fn a_click_travels_as_an_interactive_envelope_and_waits_for_its_ack() {
    let base = standin(Duration::from_millis(500));
    let ts = post_run_message(&base, "RUN1", &["pause", "abort"]);
    let click =
        json!({"user": "U0ALICE", "username": "alice", "action": "pause", "run_id": "RUN1"});
    assert_eq!(
        post(&base, "/_click", click.clone()),
        (409, json!({"ok": false, "error": "no_socket"}))
    );

    let (mut ws, hello) = connect(&base);
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["num_connections"], 1);
    assert_eq!(hello["connection_info"]["app_id"], "A0ROLLGATE");
    // Tickets are single-use.
    let reused = api(&base, "apps.connections.open", SLACK_APP_TOKEN, json!({}));
    let url = reused["url"].as_str().unwrap();
    let mut second = ws_connect(url).expect("first use");
    assert_eq!(read_json(&mut second)["num_connections"], 2);
    match ws_connect(url) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a used ticket must be refused: {:?}", other.map(|_| ())),
    }

    let clicking = {
        let (base, click) = (base.clone(), click.clone());
        std::thread::spawn(move || post(&base, "/_click", click))
    };
    // Envelopes go to the live sockets in turn, the oldest first.
    let envelope = read_json(&mut ws);
    assert_eq!(envelope["type"], "interactive");
    let payload = &envelope["payload"];
    assert_eq!(payload["type"], "block_actions");
    assert_eq!(payload["user"]["id"], "U0ALICE");
    assert_eq!(payload["container"]["message_ts"], ts.as_str());
    assert_eq!(payload["actions"][0]["action_id"], "pause");
    assert_eq!(payload["actions"][0]["block_id"], "controls");
    assert_eq!(payload["actions"][0]["value"], "RUN1");
    let id = envelope["envelope_id"].as_str().unwrap().to_owned();
    ws.send(tungstenite::Message::text(
        json!({"envelope_id": id}).to_string(),
    ))
    .unwrap();
    let (status, answer) = clicking.join().unwrap();
    assert_eq!(
        (status, &answer),
        (
            200,
            &json!({"ok": true, "envelope_id": id, "acknowledged": true})
        )
    );
    // The next click goes to the other socket.
    let clicking = {
        let base = base.clone();
        let abort = json!({"user": "U0ALICE", "action": "abort", "run_id": "RUN1"});
        std::thread::spawn(move || post(&base, "/_click", abort))
    };
    let envelope = read_json(&mut second);
    assert_eq!(envelope["payload"]["actions"][0]["action_id"], "abort");
    assert_eq!(envelope["payload"]["user"]["username"], "u0alice");
    let ack = json!({"envelope_id": envelope["envelope_id"]});
    second
        .send(tungstenite::Message::text(ack.to_string()))
        .unwrap();
    assert_eq!(clicking.join().unwrap().0, 200);
    // The response URL accepts posts, recorded.
    let response_path = payload["response_url"]
        .as_str()
        .unwrap()
        .strip_prefix(&base)
        .unwrap()
        .to_owned();
    assert_eq!(post(&base, &response_path, json!({"text": "ok"})).0, 200);

    // No such button; a click nobody acknowledges.
    let abort = json!({"user": "U0BOB", "action": "resume", "run_id": "RUN1"});
    assert_eq!(
        post(&base, "/_click", abort),
        (404, json!({"ok": false, "error": "no_such_button"}))
    );
    drop(second);
    wait_for(&base, "the second socket gone", |c| c["live"] == 1);
    let (status, answer) = post(&base, "/_click", click);
    assert_eq!(
        (status, answer["error"].as_str()),
        (504, Some("not_acknowledged"))
    );
    let recorded = http(&base, "GET", "/_recorded", None, "").1;
    let clicks: Vec<_> = recorded
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/_click")
        .collect();
    let statuses: Vec<_> = clicks
        .iter()
        .map(|c| c["outcome"]["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        vec![json!(409), json!(200), json!(200), json!(404), json!(504)]
    );
    assert!(
        recorded
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == response_path.as_str())
    );
}

#[test]
fn disconnect_envelopes_precede_the_close_and_drops_cut_silently() {
    let base = standin(ACK_TIMEOUT);
    let (mut a, _) = connect(&base);
    let (mut b, hello) = connect(&base);
    assert_eq!(hello["num_connections"], 2);
    // Pings are answered (slack-morphism gives up on a socket without pongs).
    a.send(tungstenite::Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        match a.read().expect("a frame") {
            tungstenite::Message::Pong(p) => break assert_eq!(&p[..], b"are you there"),
            tungstenite::Message::Ping(_) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    let asked = Instant::now();
    assert_eq!(
        post(&base, "/_disconnect", json!({"reason": "warning"})).1["affected"],
        2
    );
    // Told to go, they take no more envelopes and no longer count as live.
    assert_eq!(http(&base, "GET", "/_sockets", None, "").1["live"], 0);
    post_run_message(&base, "RUN9", &["pause"]);
    let click = json!({"user": "U0ALICE", "action": "pause", "run_id": "RUN9"});
    assert_eq!(post(&base, "/_click", click).0, 409);
    for ws in [&mut a, &mut b] {
        let bye = read_json(ws);
        assert_eq!(
            bye,
            json!({"type": "disconnect", "reason": "warning", "debug_info": {"host": "applink-standin"}})
        );
        match ws.read() {
            Ok(tungstenite::Message::Close(_)) => {}
            other => panic!("expected the server's close frame, got {other:?}"),
        }
        assert!(
            asked.elapsed() >= Duration::from_millis(900),
            "closed before a second"
        );
    }
    wait_for(&base, "both closed", |c| {
        c["live"] == 0 && c["connected_total"] == 2
    });

    // /_reset keeps sockets; a drop cuts them without envelope or close frame.
    let (mut c, _) = connect(&base);
    post(&base, "/_reset", json!({}));
    assert_eq!(
        wait_for(&base, "one live", |c| c["live"] == 1)["connected_total"],
        3
    );
    assert_eq!(
        post(&base, "/_disconnect", json!({"drop": true})).1["affected"],
        1
    );
    match c.read() {
        Err(tungstenite::Error::Protocol(_)) | Err(tungstenite::Error::Io(_)) => {}
        other => panic!("expected a cut connection, got {other:?}"),
    }
    wait_for(&base, "the dropped socket gone", |c| c["live"] == 0);
    let _reconnected = connect(&base);
    wait_for(&base, "reconnected", |c| {
        c["live"] == 1 && c["connected_total"] == 4
    });
}
