//! A local stand-in for the Slack Web API (Slack itself cannot be reached from test machines).
//!
//! Answers `chat.postMessage`, `chat.update`, `auth.test` and incoming webhooks
//! (`POST /services/...`) with Slack's response shapes; checks the bearer token like Slack
//! (HTTP 200 with `ok: false, error: not_authed | invalid_auth`). Control endpoints for tests:
//! - `GET /_recorded`: every request received, as a JSON array (method, path, authorized, body);
//! - `POST /_fail` `{"status": 500 | 429, "retry_after": 1, "delay_ms": 0, "count": 1, "channel": "#x"}`:
//!   fail the next `count` API requests (for that channel, when given) that way (`delay_ms` alone
//!   simulates a slow Slack / timeout; such requests are recorded with `failed: 0`);
//! - `POST /_reset`: forget recordings and pending failures.

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
}

#[derive(Clone)]
struct Failure {
    status: u16,
    retry_after: u64,
    delay_ms: u64,
    /// Only requests for this channel fail (so parallel tests do not take each other's failures).
    channel: Option<String>,
}

#[derive(Default)]
struct Standin {
    recorded: Vec<Value>,
    failures: VecDeque<Failure>,
    next_ts: u64,
}

pub fn serve(args: Args) -> Result<ExitCode> {
    let server =
        Server::http(&args.listen).map_err(|e| format!("listen on {}: {e}", args.listen))?;
    eprintln!("slack stand-in listening on http://{}", args.listen);
    let state = Arc::new(Mutex::new(Standin::default()));
    let token = Arc::new(args.token);
    for request in server.incoming_requests() {
        let state = Arc::clone(&state);
        let token = Arc::clone(&token);
        std::thread::spawn(move || {
            if let Err(e) = handle(request, &state, &token) {
                eprintln!("slack stand-in: {e}");
            }
        });
    }
    Ok(ExitCode::SUCCESS)
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

fn parse_body(content_type: &str, raw: &str) -> Value {
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let mut map = serde_json::Map::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(url_decode(k), Value::String(url_decode(v)));
        }
        Value::Object(map)
    } else {
        serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    }
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(mut request: Request, state: &Mutex<Standin>, token: &str) -> Result<()> {
    let method = request.method().as_str().to_owned();
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let content_type = header(&request, "Content-Type").unwrap_or_default();
    let auth = header(&request, "Authorization");
    let mut raw = String::new();
    request
        .as_reader()
        .read_to_string(&mut raw)
        .context("read body")?;
    let body = parse_body(&content_type, &raw);

    // Control endpoints.
    match (method.as_str(), path.as_str()) {
        ("GET", "/_recorded") => {
            let recorded = Value::Array(state.lock().expect("lock").recorded.clone());
            return request
                .respond(json_response(200, &recorded))
                .context("respond");
        }
        ("POST", "/_reset") => {
            *state.lock().expect("lock") = Standin::default();
            return request
                .respond(json_response(200, &json!({"ok": true})))
                .context("respond");
        }
        ("POST", "/_fail") => {
            let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
            let failure = Failure {
                status: body["status"].as_u64().unwrap_or(500) as u16,
                retry_after: body["retry_after"].as_u64().unwrap_or(1),
                delay_ms: body["delay_ms"].as_u64().unwrap_or(0),
                channel: body["channel"].as_str().map(str::to_owned),
            };
            let count = body["count"].as_u64().unwrap_or(1);
            let mut s = state.lock().expect("lock");
            s.failures
                .extend(std::iter::repeat_n(failure, count as usize));
            return request
                .respond(json_response(
                    200,
                    &json!({"ok": true, "pending": s.failures.len()}),
                ))
                .context("respond");
        }
        _ => {}
    }

    let token_given = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or_else(|| body["token"].as_str().map(str::to_owned));
    let is_webhook = path.starts_with("/services/");
    let authorized = if is_webhook {
        None
    } else {
        Some(token_given.as_deref() == Some(token))
    };
    let (failure, ts) = {
        let mut s = state.lock().expect("lock");
        s.next_ts += 1;
        let mut redacted = body.clone();
        if let Some(obj) = redacted.as_object_mut() {
            obj.remove("token");
        }
        let channel = body["channel"].as_str();
        let failure = s
            .failures
            .iter()
            .position(|f| f.channel.is_none() || f.channel.as_deref() == channel)
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
    let response = match authorized {
        Some(false) if token_given.is_none() => json!({"ok": false, "error": "not_authed"}),
        Some(false) => json!({"ok": false, "error": "invalid_auth"}),
        _ => api_call(&path, &body, &ts),
    };
    request
        .respond(json_response(200, &response))
        .context("respond")
}

fn channel_id(channel: &str) -> String {
    if channel.starts_with('C') {
        channel.to_owned()
    } else {
        "C0ROLLGATE".to_owned()
    }
}

fn api_call(path: &str, body: &Value, ts: &str) -> Value {
    let channel = body["channel"].as_str().unwrap_or("");
    match path {
        "/api/auth.test" => {
            json!({"ok": true, "url": "https://rollgate-test.slack.com/", "team": "rollgate",
                                   "user": "rollgate", "team_id": "T0ROLLGATE", "user_id": "U0ROLLGATE", "bot_id": "B0ROLLGATE"})
        }
        "/api/chat.postMessage" if channel.is_empty() => {
            json!({"ok": false, "error": "channel_not_found"})
        }
        "/api/chat.postMessage" => json!({
            "ok": true, "channel": channel_id(channel), "ts": ts,
            "message": {"type": "message", "bot_id": "B0ROLLGATE", "text": body["text"], "ts": ts,
                        "thread_ts": body["thread_ts"]},
        }),
        "/api/chat.update" if body["ts"].as_str().is_none() => {
            json!({"ok": false, "error": "message_not_found"})
        }
        "/api/chat.update" => {
            json!({"ok": true, "channel": channel_id(channel), "ts": body["ts"], "text": body["text"]})
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_decoded_like_slack_does() {
        let v = parse_body(
            "application/x-www-form-urlencoded",
            "channel=%23ops&text=hello+world&token=xoxb-1",
        );
        assert_eq!(v["channel"], "#ops");
        assert_eq!(v["text"], "hello world");
        assert_eq!(parse_body("application/json", r#"{"a":1}"#)["a"], 1);
    }

    #[test]
    fn api_calls_answer_in_slack_shapes() {
        let ok = api_call(
            "/api/chat.postMessage",
            &json!({"channel": "#ops", "text": "hi"}),
            "1.000001",
        );
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["ts"], "1.000001");
        assert_eq!(
            api_call("/api/chat.postMessage", &json!({"text": "hi"}), "1")["error"],
            "channel_not_found"
        );
        assert_eq!(
            api_call("/api/chat.update", &json!({"channel": "C1"}), "1")["error"],
            "message_not_found"
        );
        assert_eq!(
            api_call("/api/nope", &json!({}), "1")["error"],
            "unknown_method"
        );
    }
}
