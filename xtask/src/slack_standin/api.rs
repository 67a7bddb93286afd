//! The stand-in's Web API methods (bot token), request bodies as Slack accepts them (JSON,
//! form-encoded, query string) and what the stand-in remembers between calls: the messages
//! posted or updated (for `/_click`) and the user groups set by `/_usergroup`.

use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// A message as last posted or updated through `chat.postMessage` / `chat.update`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub ts: String,
    pub channel_id: String,
    /// The channel's name when it was given as `#name`, else `rollgate`.
    pub channel_name: String,
    pub text: Value,
    /// `blocks` as sent (a JSON array; `Null` when none), parsed when form-encoded as a string.
    pub blocks: Value,
    /// Increases with every post or update: the highest is the most recent message.
    pub seq: u64,
}

/// What the Web API methods read and change (forgotten by `/_reset`).
#[derive(Default)]
pub struct Memory {
    pub messages: HashMap<String, StoredMessage>,
    pub groups: HashMap<String, Vec<String>>,
    seq: u64,
}

impl Memory {
    fn remember(&mut self, ts: &str, channel: &str, body: &Value) {
        self.seq += 1;
        let blocks = match &body["blocks"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            other => other.clone(),
        };
        let channel_name = channel.strip_prefix('#').unwrap_or("rollgate").to_owned();
        self.messages.insert(
            ts.to_owned(),
            StoredMessage {
                ts: ts.to_owned(),
                channel_id: channel_id(channel),
                channel_name,
                text: body["text"].clone(),
                blocks,
                seq: self.seq,
            },
        );
    }

    /// Messages, most recent (post or update) first.
    pub fn latest_first(&self) -> Vec<&StoredMessage> {
        let mut all: Vec<_> = self.messages.values().collect();
        all.sort_by_key(|m| std::cmp::Reverse(m.seq));
        all
    }
}

/// A request body as Slack reads it: form-encoded (`a=b&c=d`) or JSON; the query string's
/// parameters are added to it (GET methods such as `usergroups.users.list` send only those).
pub fn parse_body(content_type: &str, raw: &str, query: &str) -> Value {
    let mut body = if content_type.starts_with("application/x-www-form-urlencoded") {
        Value::Object(parse_form(raw))
    } else {
        serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    };
    let params = parse_form(query);
    if !params.is_empty() {
        if !body.is_object() {
            body = Value::Object(Map::new());
        }
        let obj = body.as_object_mut().expect("an object");
        for (k, v) in params {
            obj.entry(k).or_insert(v);
        }
    }
    body
}

fn parse_form(raw: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(url_decode(k), Value::String(url_decode(v)));
    }
    map
}

pub fn url_decode(s: &str) -> String {
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

pub fn channel_id(channel: &str) -> String {
    if channel.starts_with('C') {
        channel.to_owned()
    } else {
        "C0ROLLGATE".to_owned()
    }
}

/// Answers a Web API method called with the bot token (`ts`: the timestamp a new message gets).
pub fn call(path: &str, body: &Value, ts: &str, memory: &mut Memory) -> Value {
    let channel = body["channel"].as_str().unwrap_or("");
    match path {
        "/api/auth.test" => {
            json!({"ok": true, "url": "https://rollgate-test.slack.com/", "team": "rollgate",
                   "user": "rollgate", "team_id": "T0ROLLGATE", "user_id": "U0ROLLGATE", "bot_id": "B0ROLLGATE"})
        }
        "/api/chat.postMessage" if channel.is_empty() => {
            json!({"ok": false, "error": "channel_not_found"})
        }
        "/api/chat.postMessage" => {
            memory.remember(ts, channel, body);
            json!({
                "ok": true, "channel": channel_id(channel), "ts": ts,
                "message": {"type": "message", "bot_id": "B0ROLLGATE", "text": body["text"], "ts": ts,
                            "thread_ts": body["thread_ts"]},
            })
        }
        "/api/chat.update" => match body["ts"].as_str() {
            None => json!({"ok": false, "error": "message_not_found"}),
            Some(updated) => {
                memory.remember(updated, channel, body);
                json!({"ok": true, "channel": channel_id(channel), "ts": updated, "text": body["text"]})
            }
        },
        "/api/chat.postEphemeral" if channel.is_empty() => {
            json!({"ok": false, "error": "channel_not_found"})
        }
        "/api/chat.postEphemeral" if body["user"].as_str().unwrap_or("").is_empty() => {
            json!({"ok": false, "error": "user_not_found"})
        }
        "/api/chat.postEphemeral" => json!({"ok": true, "message_ts": ts}),
        "/api/usergroups.users.list" => {
            let group = body["usergroup"].as_str().unwrap_or("");
            match memory.groups.get(group) {
                Some(users) => json!({"ok": true, "users": users}),
                None => json!({"ok": false, "error": "no_such_subteam"}),
            }
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
            "",
        );
        assert_eq!(v["channel"], "#ops");
        assert_eq!(v["text"], "hello world");
        assert_eq!(parse_body("application/json", r#"{"a":1}"#, "")["a"], 1);
        let get = parse_body("", "", "usergroup=S0OPS&include_disabled=false");
        assert_eq!(get["usergroup"], "S0OPS");
        assert_eq!(parse_body("", "", ""), Value::String(String::new()));
    }

    #[test]
    fn api_calls_answer_in_slack_shapes() {
        let mut m = Memory::default();
        let ok = call(
            "/api/chat.postMessage",
            &json!({"channel": "#ops", "text": "hi"}),
            "1.000001",
            &mut m,
        );
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["ts"], "1.000001");
        let no_channel = call("/api/chat.postMessage", &json!({"text": "hi"}), "1", &mut m);
        assert_eq!(no_channel["error"], "channel_not_found");
        let no_ts = call("/api/chat.update", &json!({"channel": "C1"}), "1", &mut m);
        assert_eq!(no_ts["error"], "message_not_found");
        assert_eq!(
            call("/api/nope", &json!({}), "1", &mut m)["error"],
            "unknown_method"
        );
        let eph = |body| {
            call(
                "/api/chat.postEphemeral",
                &body,
                "2.5",
                &mut Memory::default(),
            )
        };
        assert_eq!(
            eph(json!({"channel": "C1", "user": "U1"}))["message_ts"],
            "2.5"
        );
        assert_eq!(eph(json!({"user": "U1"}))["error"], "channel_not_found");
        assert_eq!(eph(json!({"channel": "C1"}))["error"], "user_not_found");
        m.groups.insert("S0OPS".into(), vec!["U0ALICE".into()]);
        let list = |g: &str, m: &mut Memory| {
            call(
                "/api/usergroups.users.list",
                &json!({"usergroup": g}),
                "1",
                m,
            )
        };
        assert_eq!(
            list("S0OPS", &mut m),
            json!({"ok": true, "users": ["U0ALICE"]})
        );
        assert_eq!(list("S0NOPE", &mut m)["error"], "no_such_subteam");
    }

    #[test]
    fn posts_and_updates_are_remembered_with_blocks_as_sent() {
        let mut m = Memory::default();
        let blocks = json!([{"type": "actions", "elements": []}]);
        call(
            "/api/chat.postMessage",
            &json!({"channel": "#ops", "text": "a", "blocks": blocks}),
            "1.1",
            &mut m,
        );
        call(
            "/api/chat.postMessage",
            &json!({"channel": "C9", "text": "b"}),
            "1.2",
            &mut m,
        );
        // Form-encoded: blocks is a JSON string.
        let form = parse_body(
            "application/x-www-form-urlencoded",
            "channel=%23ops&ts=1.1&text=a2&blocks=%5B%7B%22type%22%3A%22divider%22%7D%5D",
            "",
        );
        call("/api/chat.update", &form, "9", &mut m);
        let latest = m.latest_first();
        assert_eq!(latest[0].ts, "1.1");
        assert_eq!(latest[0].text, "a2");
        assert_eq!(latest[0].blocks, json!([{"type": "divider"}]));
        assert_eq!(latest[0].channel_name, "ops");
        assert_eq!(latest[0].channel_id, "C0ROLLGATE");
        assert_eq!(latest[1].ts, "1.2");
        assert_eq!(latest[1].channel_id, "C9");
        assert_eq!(latest[1].blocks, Value::Null);
    }
}
