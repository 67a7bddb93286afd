//! A local stand-in for the Slack Web API and Socket Mode (Slack itself cannot be reached from
//! test machines).
//!
//! Web API (`POST /api/METHOD`, JSON or form-encoded; query-string parameters too), with Slack's
//! response shapes: `chat.postMessage`, `chat.update`, `chat.postEphemeral`, `auth.test`,
//! `usergroups.users.list` with the bot token; `apps.connections.open` with the app-level token
//! only (each token elsewhere: `not_allowed_token_type`); a missing or unknown token: HTTP 200
//! with `ok: false, error: not_authed | invalid_auth`, like Slack. Incoming webhooks:
//! `POST /services/...`. `apps.connections.open` returns a single-use `ws://127.0.0.1:PORT/link/`
//! URL on an ephemeral port (see [`socket`]): `hello` on connect, pings answered, envelopes
//! acknowledged by `{"envelope_id": ...}`.
//!
//! Control endpoints for tests:
//! - `GET /_recorded`: every request received, as a JSON array (method, path, authorized, body;
//!   clicks with their `outcome`, `response_url` posts);
//! - `POST /_fail` `{"status": 500 | 429, "retry_after": 1, "delay_ms": 0, "count": 1, "channel": "#x",
//!   "method": "apps.connections.open"}`: fail the next `count` API requests (for that channel or
//!   method, when given; `apps.connections.open` only when named) that way (`delay_ms` alone
//!   simulates a slow Slack / timeout; such requests are recorded with `failed: 0`);
//! - `POST /_click` `{"user": "U0ALICE", "username": "alice", "action": "pause", "run_id": "RUN"}`:
//!   the user presses the button (`action_id`, `value`) of the most recent message offering it
//!   (404 `no_such_button`); its `block_actions` payload goes in an `interactive` envelope to one
//!   live socket (409 `no_socket`), acknowledged within 5 s (504 `not_acknowledged`), else 200
//!   `{"ok": true, "envelope_id", "acknowledged": true}`; the payload's `response_url` is
//!   `/_response/ID` (posts recorded);
//! - `POST /_usergroup` `{"id": "S0OPS", "users": ["U0ALICE"]}`: the group's members for
//!   `usergroups.users.list`;
//! - `POST /_disconnect` `{"reason": "refresh_requested" | "warning" | "link_disabled"}`: a
//!   `disconnect` envelope to every live socket, closed a second later; `{"drop": true}`: cut them
//!   without a word (a network drop). Answers `{"ok": true, "affected": n}`;
//! - `GET /_sockets`: `{"live": n, "connected_total": m}` (live: open and not sent a `disconnect`;
//!   only those get envelopes);
//! - `POST /_reset`: forget recordings, messages, user groups and pending failures (sockets stay).

mod api;
mod click;
mod socket;

use crate::{Context, Result};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiny_http::{Header, Request, Response, Server};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: String,
    /// The bot token API calls must present as `Authorization: Bearer TOKEN`.
    #[arg(long, default_value = crate::paths::SLACK_TOKEN)]
    token: String,
    /// The app-level token `apps.connections.open` (Socket Mode) must present.
    #[arg(long, default_value = crate::paths::SLACK_APP_TOKEN)]
    app_token: String,
}

/// How long `/_click` waits for the envelope's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Failure {
    status: u16,
    retry_after: u64,
    delay_ms: u64,
    /// Only requests for this channel fail (so parallel tests do not take each other's failures).
    channel: Option<String>,
    /// Only calls of this method fail. `apps.connections.open` fails only when named here, so
    /// that Socket Mode clients reconnecting in parallel tests never take others' failures.
    method: Option<String>,
}

impl Failure {
    fn applies(&self, path: &str, channel: Option<&str>) -> bool {
        let method = path.strip_prefix("/api/");
        (self.channel.is_none() || self.channel.as_deref() == channel)
            && match self.method.as_deref() {
                Some(wanted) => method == Some(wanted),
                None => method != Some("apps.connections.open"),
            }
    }
}

#[derive(Default)]
struct State {
    recorded: Vec<Value>,
    failures: VecDeque<Failure>,
    next_ts: u64,
    memory: api::Memory,
}

struct Standin {
    state: Mutex<State>,
    sockets: Arc<socket::Sockets>,
    token: String,
    app_token: String,
    /// `http://ADDR` of this server (for response URLs).
    base_url: String,
    /// How long `/_click` waits for an acknowledgement ([`ACK_TIMEOUT`]; shorter in tests).
    ack_timeout: Duration,
}

pub fn serve(args: Args) -> Result<ExitCode> {
    let (server, standin) = start(&args.listen, args.token, args.app_token, ACK_TIMEOUT)?;
    eprintln!("slack stand-in listening on {}", standin.base_url);
    run(server, standin);
    Ok(ExitCode::SUCCESS)
}

fn start(
    listen: &str,
    token: String,
    app_token: String,
    ack_timeout: Duration,
) -> Result<(Server, Arc<Standin>)> {
    let server = Server::http(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("listen on {listen}: not an IP address"))?;
    let sockets = socket::Sockets::start().context("listen for Socket Mode connections")?;
    let standin = Arc::new(Standin {
        state: Mutex::new(State::default()),
        sockets,
        token,
        app_token,
        base_url: format!("http://{addr}"),
        ack_timeout,
    });
    Ok((server, standin))
}

fn run(server: Server, standin: Arc<Standin>) {
    for request in server.incoming_requests() {
        let standin = Arc::clone(&standin);
        std::thread::spawn(move || {
            if let Err(e) = handle(request, &standin) {
                eprintln!("slack stand-in: {e}");
            }
        });
    }
}

/// A random hex id shaped like a UUID (envelope ids, tickets, trigger ids).
fn random_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    let b = RandomState::new().hash_one(a);
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Now as a Slack timestamp (`seconds.micros`).
fn now_ts() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(
            Header::from_bytes("Content-Type", "application/json; charset=utf-8")
                .expect("valid header"),
        )
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

/// Which token a request presents.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Token {
    Missing,
    Invalid,
    Bot,
    App,
}

fn handle(mut request: Request, standin: &Standin) -> Result<()> {
    let method = request.method().as_str().to_owned();
    let (path, query) = match request.url().split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (request.url().to_owned(), String::new()),
    };
    let content_type = header(&request, "Content-Type").unwrap_or_default();
    let auth = header(&request, "Authorization");
    let mut raw = String::new();
    request
        .as_reader()
        .read_to_string(&mut raw)
        .context("read body")?;
    let body = api::parse_body(&content_type, &raw, &query);

    if let Some((status, answer)) = control(&method, &path, &raw, standin) {
        return request
            .respond(json_response(status, &answer))
            .context("respond");
    }

    let token_given = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| body["token"].as_str().map(str::to_owned));
    let token = match token_given.as_deref() {
        None => Token::Missing,
        Some(t) if t == standin.token => Token::Bot,
        Some(t) if t == standin.app_token => Token::App,
        Some(_) => Token::Invalid,
    };
    let is_webhook = path.starts_with("/services/");
    let opens_connection = path == "/api/apps.connections.open";
    let authorized = if is_webhook {
        None
    } else {
        Some(
            token
                == if opens_connection {
                    Token::App
                } else {
                    Token::Bot
                },
        )
    };
    let (failure, ts) = {
        let mut s = standin.state.lock().expect("lock");
        s.next_ts += 1;
        let mut redacted = body.clone();
        if let Some(obj) = redacted.as_object_mut() {
            obj.remove("token");
        }
        let channel = body["channel"].as_str();
        let failure = s
            .failures
            .iter()
            .position(|f| f.applies(&path, channel))
            .and_then(|i| s.failures.remove(i));
        // `failed`: the status this request was answered with by an injected failure.
        s.recorded.push(json!({"method": method, "path": path, "authorized": authorized, "body": redacted,
                               "failed": failure.as_ref().map(|f| if f.delay_ms > 0 && f.status < 400 { 0 } else { f.status })}));
        (failure, format!("1764000000.{:06}", s.next_ts))
    };
    if let Some(f) = failure {
        std::thread::sleep(Duration::from_millis(f.delay_ms));
        if f.status == 429 {
            let response = json_response(429, &json!({"ok": false, "error": "ratelimited"}))
                .with_header(
                    Header::from_bytes("Retry-After", f.retry_after.to_string())
                        .expect("valid header"),
                );
            return request.respond(response).context("respond");
        }
        if f.status >= 400 {
            return request
                .respond(Response::from_string("internal error").with_status_code(f.status))
                .context("respond");
        }
    }
    if is_webhook {
        return request
            .respond(Response::from_string("ok"))
            .context("respond");
    }
    let response = match token {
        Token::Missing => json!({"ok": false, "error": "not_authed"}),
        Token::Invalid => json!({"ok": false, "error": "invalid_auth"}),
        Token::App if opens_connection => {
            json!({"ok": true, "url": standin.sockets.open_url()})
        }
        Token::Bot if !opens_connection => {
            let mut s = standin.state.lock().expect("lock");
            api::call(&path, &body, &ts, &mut s.memory)
        }
        Token::Bot | Token::App => json!({"ok": false, "error": "not_allowed_token_type"}),
    };
    request
        .respond(json_response(200, &response))
        .context("respond")
}

/// Answers a control endpoint (`/_...`): `(status, body)`, or `None` for other paths.
fn control(method: &str, path: &str, raw: &str, standin: &Standin) -> Option<(u16, Value)> {
    let body: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let ok = |extra: Value| {
        let mut answer = json!({"ok": true});
        if let (Some(a), Some(e)) = (answer.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        (200, answer)
    };
    let state = || standin.state.lock().expect("lock");
    Some(match (method, path) {
        ("GET", "/_recorded") => (200, Value::Array(state().recorded.clone())),
        ("GET", "/_sockets") => (200, standin.sockets.counts()),
        ("POST", "/_reset") => {
            *state() = State::default();
            ok(json!({}))
        }
        ("POST", "/_fail") => {
            let failure = Failure {
                status: body["status"].as_u64().unwrap_or(500) as u16,
                retry_after: body["retry_after"].as_u64().unwrap_or(1),
                delay_ms: body["delay_ms"].as_u64().unwrap_or(0),
                channel: body["channel"].as_str().map(str::to_owned),
                method: body["method"].as_str().map(str::to_owned),
            };
            let count = body["count"].as_u64().unwrap_or(1);
            let mut s = state();
            s.failures
                .extend(std::iter::repeat_n(failure, count as usize));
            ok(json!({"pending": s.failures.len()}))
        }
        ("POST", "/_usergroup") => match (body["id"].as_str(), body["users"].as_array()) {
            (Some(id), Some(users)) => {
                let users = users.iter().filter_map(|u| u.as_str().map(str::to_owned));
                state().memory.groups.insert(id.to_owned(), users.collect());
                ok(json!({}))
            }
            _ => (
                400,
                json!({"ok": false, "error": "expected {\"id\": \"S...\", \"users\": [\"U...\"]}"}),
            ),
        },
        ("POST", "/_disconnect") => {
            let reason = if body["drop"] == true {
                None
            } else {
                Some(body["reason"].as_str().unwrap_or("refresh_requested"))
            };
            ok(json!({"affected": standin.sockets.disconnect_all(reason)}))
        }
        ("POST", "/_click") => click(&body, standin),
        ("POST", p) if p.starts_with("/_response/") => {
            state()
                .recorded
                .push(json!({"method": method, "path": path, "body": body}));
            ok(json!({}))
        }
        _ => return None,
    })
}

/// `POST /_click`: see the module doc.
fn click(body: &Value, standin: &Standin) -> (u16, Value) {
    let field = |k: &str| body[k].as_str().filter(|v| !v.is_empty());
    let (Some(user), Some(action), Some(run_id)) =
        (field("user"), field("action"), field("run_id"))
    else {
        let error = "expected {\"user\": \"U...\", \"action\": \"pause\", \"run_id\": \"...\"}";
        return (400, json!({"ok": false, "error": error}));
    };
    let username = field("username").map_or_else(|| user.to_lowercase(), str::to_owned);
    let envelope_id = random_id();
    let envelope = {
        let mut s = standin.state.lock().expect("lock");
        let envelope = click::find_button(&s.memory, action, run_id).map(|found| {
            let response_url = format!("{}/_response/{envelope_id}", standin.base_url);
            let trigger_id = format!("{}.{}", now_ts().replace('.', ""), &envelope_id[..8]);
            let click = click::Click {
                user,
                username: &username,
                trigger_id: &trigger_id,
                action_ts: &now_ts(),
                response_url: &response_url,
            };
            click::interactive_envelope(&envelope_id, click::block_actions_payload(&found, &click))
        });
        s.recorded
            .push(json!({"method": "POST", "path": "/_click", "body": body,
                               "envelope_id": envelope_id, "outcome": null}));
        envelope
    };
    let (status, answer) = match envelope {
        None => (404, json!({"ok": false, "error": "no_such_button"})),
        Some(envelope) => {
            match standin
                .sockets
                .deliver(&envelope_id, &envelope, standin.ack_timeout)
            {
                socket::Delivery::NoSocket => (409, json!({"ok": false, "error": "no_socket"})),
                socket::Delivery::NotAcknowledged => {
                    (504, json!({"ok": false, "error": "not_acknowledged"}))
                }
                socket::Delivery::Acknowledged => (
                    200,
                    json!({"ok": true, "envelope_id": envelope_id, "acknowledged": true}),
                ),
            }
        }
    };
    let mut s = standin.state.lock().expect("lock");
    if let Some(entry) = s
        .recorded
        .iter_mut()
        .rev()
        .find(|r| r["envelope_id"] == envelope_id.as_str())
    {
        entry["outcome"] = json!({"status": status, "answer": answer});
    }
    (status, answer)
}

#[cfg(test)]
mod tests;
