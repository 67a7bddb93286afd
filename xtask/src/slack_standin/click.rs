//! What a click on a message button sends over Socket Mode: finding the button among the
//! remembered messages, and Slack's `interactive` envelope with its `block_actions` payload
//! (shapes from <https://api.slack.com/reference/interaction-payloads/block-actions>).

use super::api::{Memory, StoredMessage};
use serde_json::{Value, json};

pub const TEAM_ID: &str = "T0ROLLGATE";
pub const APP_ID: &str = "A0ROLLGATE";
pub const BOT_ID: &str = "B0ROLLGATE";
pub const BOT_USER_ID: &str = "U0ROLLGATE";
/// The (deprecated) verification token Slack puts in payloads: a fixed test value, no secret.
pub const VERIFICATION_TOKEN: &str = "RollgateStandinVerifTok0";

/// A button found in a message: the message, the `block_id` of the block holding it, the button.
#[derive(Debug, PartialEq)]
pub struct Found<'a> {
    pub message: &'a StoredMessage,
    pub block_id: Value,
    pub button: &'a Value,
}

/// The most recent message (post or update) offering a button with `action_id == action` and
/// `value == value`.
pub fn find_button<'a>(memory: &'a Memory, action: &str, value: &str) -> Option<Found<'a>> {
    memory.latest_first().into_iter().find_map(|message| {
        message.blocks.as_array()?.iter().find_map(|block| {
            let button = buttons_in(block).into_iter().find(|b| {
                b["action_id"].as_str() == Some(action) && b["value"].as_str() == Some(value)
            })?;
            Some(Found {
                message,
                block_id: block["block_id"].clone(),
                button,
            })
        })
    })
}

/// Every button element inside `block` (an `actions` block's elements, a section's accessory...).
fn buttons_in(block: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack = vec![block];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(obj) => {
                if obj.get("type").and_then(Value::as_str) == Some("button") {
                    out.push(v);
                } else {
                    stack.extend(obj.values());
                }
            }
            Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    out
}

/// Who clicks, and the ids of this click.
pub struct Click<'a> {
    pub user: &'a str,
    pub username: &'a str,
    pub trigger_id: &'a str,
    pub action_ts: &'a str,
    pub response_url: &'a str,
}

/// The `block_actions` payload Slack sends when `click.user` presses `found.button`.
pub fn block_actions_payload(found: &Found, click: &Click) -> Value {
    let m = found.message;
    let mut message = json!({
        "type": "message", "ts": m.ts, "text": m.text, "user": BOT_USER_ID, "bot_id": BOT_ID,
        "app_id": APP_ID, "team": TEAM_ID,
    });
    if m.blocks.is_array() {
        message["blocks"] = m.blocks.clone();
    }
    let mut action = json!({
        "type": "button",
        "action_id": found.button["action_id"],
        "text": found.button["text"],
        "value": found.button["value"],
        "action_ts": click.action_ts,
    });
    if !found.block_id.is_null() {
        action["block_id"] = found.block_id.clone();
    }
    json!({
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "rollgate-test"},
        "user": {"id": click.user, "username": click.username, "name": click.username, "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {"type": "message", "message_ts": m.ts, "channel_id": m.channel_id, "is_ephemeral": false},
        "trigger_id": click.trigger_id,
        "channel": {"id": m.channel_id, "name": m.channel_name},
        "message": message,
        "state": {"values": {}},
        "response_url": click.response_url,
        "actions": [action],
    })
}

/// Socket Mode's envelope around an interaction payload.
pub fn interactive_envelope(envelope_id: &str, payload: Value) -> Value {
    json!({
        "envelope_id": envelope_id,
        "type": "interactive",
        "accepts_response_payload": false,
        "payload": payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slack_standin::api;

    /// Blocks as rollgate's run message carries them (a section and an actions block).
    pub fn run_blocks(run: &str, actions: &[&str]) -> Value {
        let elements: Vec<Value> = actions
            .iter()
            .map(|a| {
                json!({"type": "button", "action_id": a, "value": run,
                       "text": {"type": "plain_text", "text": a.to_uppercase()}})
            })
            .collect();
        json!([
            {"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": "*rollout*"}},
            {"type": "actions", "block_id": "controls", "elements": elements},
        ])
    }

    fn memory() -> Memory {
        let mut m = Memory::default();
        let post = |m: &mut Memory, ts: &str, run: &str, actions: &[&str]| {
            let body =
                json!({"channel": "#ops", "text": "run", "blocks": run_blocks(run, actions)});
            api::call("/api/chat.postMessage", &body, ts, m);
        };
        post(&mut m, "1.1", "RUN1", &["pause", "abort"]);
        post(&mut m, "1.2", "RUN2", &["pause", "abort"]);
        // RUN1 paused: its message now offers resume and abort.
        let body = json!({"channel": "#ops", "ts": "1.1", "text": "paused",
                          "blocks": run_blocks("RUN1", &["resume", "abort"])});
        api::call("/api/chat.update", &body, "x", &mut m);
        m
    }

    #[test]
    fn the_button_is_found_in_the_most_recent_message_offering_it() {
        let m = memory();
        let found = find_button(&m, "abort", "RUN1").expect("abort RUN1");
        assert_eq!(found.message.ts, "1.1");
        assert_eq!(found.block_id, "controls");
        assert_eq!(found.button["text"]["text"], "ABORT");
        assert!(find_button(&m, "pause", "RUN1").is_none(), "updated away");
        assert!(find_button(&m, "resume", "RUN1").is_some());
        assert_eq!(find_button(&m, "pause", "RUN2").unwrap().message.ts, "1.2");
        assert!(find_button(&m, "pause", "RUN3").is_none());
        // A section's accessory button counts too; a block without block_id gives none.
        let mut m = Memory::default();
        let blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "x"},
            "accessory": {"type": "button", "action_id": "pause", "value": "R", "text": {"type": "plain_text", "text": "Pause"}}}]);
        api::call(
            "/api/chat.postMessage",
            &json!({"channel": "C1", "blocks": blocks}),
            "3.3",
            &mut m,
        );
        assert_eq!(find_button(&m, "pause", "R").unwrap().block_id, Value::Null);
    }

    pub fn sample_envelope() -> Value {
        let m = memory();
        let found = find_button(&m, "resume", "RUN1").unwrap();
        let click = Click {
            user: "U0ALICE",
            username: "alice",
            trigger_id: "1.2.abc",
            action_ts: "1764000001.000100",
            response_url: "http://127.0.0.1:1/_response/x",
        };
        interactive_envelope("e-1", block_actions_payload(&found, &click))
    }

    #[test]
    fn the_payload_has_slacks_block_actions_shape() {
        let e = sample_envelope();
        assert_eq!(e["type"], "interactive");
        let p = &e["payload"];
        assert_eq!(p["type"], "block_actions");
        assert_eq!(p["user"]["id"], "U0ALICE");
        assert_eq!(p["user"]["username"], "alice");
        assert_eq!(p["container"]["message_ts"], "1.1");
        assert_eq!(p["channel"], json!({"id": "C0ROLLGATE", "name": "ops"}));
        assert_eq!(p["message"]["text"], "paused");
        assert_eq!(
            p["message"]["blocks"],
            run_blocks("RUN1", &["resume", "abort"])
        );
        let a = &p["actions"][0];
        assert_eq!(a["action_id"], "resume");
        assert_eq!(a["block_id"], "controls");
        assert_eq!(a["value"], "RUN1");
        assert_eq!(a["text"]["text"], "RESUME");
    }

    /// slack-morphism 2.31's `SlackSocketModeEvent` (models/socket_mode) is not reachable from
    /// outside the crate (its `socket_mode` module is shadowed by the listener's); this mirrors it
    /// field for field, with slack-morphism's own payload and hello/disconnect field types.
    #[derive(serde::Deserialize, Debug)]
    #[serde(tag = "type")]
    #[allow(clippy::large_enum_variant)] // As slack-morphism's own.
    enum SocketModeEvent {
        #[serde(rename = "hello")]
        Hello {
            connection_info: ConnectionInfo,
            num_connections: u32,
            #[allow(dead_code)]
            debug_info: DebugInfo,
        },
        #[serde(rename = "disconnect")]
        Disconnect {
            reason: String,
            #[allow(dead_code)]
            debug_info: DebugInfo,
        },
        #[serde(rename = "interactive")]
        Interactive {
            envelope_id: String,
            accepts_response_payload: bool,
            payload: slack_morphism::prelude::SlackInteractionEvent,
        },
    }

    #[derive(serde::Deserialize, Debug)]
    struct ConnectionInfo {
        app_id: slack_morphism::prelude::SlackAppId,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct DebugInfo {
        host: String,
        started: Option<String>,
        build_number: Option<u64>,
        approximate_connection_time: Option<u64>,
    }

    #[test]
    fn the_envelope_deserializes_with_slack_morphism() {
        use slack_morphism::prelude::*;
        let text = sample_envelope().to_string();
        let event: SocketModeEvent = serde_json::from_str(&text).expect("slack-morphism parses");
        let SocketModeEvent::Interactive {
            envelope_id,
            accepts_response_payload,
            payload,
        } = event
        else {
            panic!("not interactive: {event:?}")
        };
        assert_eq!(envelope_id, "e-1");
        assert!(!accepts_response_payload);
        let SlackInteractionEvent::BlockActions(actions) = payload else {
            panic!("not block_actions: {payload:?}")
        };
        assert_eq!(actions.user.unwrap().id.0, "U0ALICE");
        assert_eq!(actions.api_app_id.0, APP_ID);
        let action = &actions.actions.unwrap()[0];
        assert_eq!(action.action_id.0, "resume");
        assert_eq!(action.value.as_deref(), Some("RUN1"));
        assert_eq!(action.block_id.as_ref().unwrap().0, "controls");
        let message = actions.message.unwrap();
        assert_eq!(message.origin.ts.0, "1.1");
        assert_eq!(message.content.blocks.unwrap().len(), 2);
        assert_eq!(actions.channel.unwrap().id.0, "C0ROLLGATE");
        match actions.container {
            SlackInteractionActionContainer::Message(c) => assert_eq!(c.message_ts.0, "1.1"),
            other => panic!("container {other:?}"),
        }
    }

    #[test]
    fn hello_and_disconnect_deserialize_with_slack_morphism() {
        let hello = crate::slack_standin::socket::hello(2).to_string();
        match serde_json::from_str::<SocketModeEvent>(&hello).unwrap() {
            SocketModeEvent::Hello {
                connection_info,
                num_connections,
                ..
            } => assert_eq!(
                (connection_info.app_id.0.as_str(), num_connections),
                (APP_ID, 2)
            ),
            other => panic!("{other:?}"),
        }
        let bye = crate::slack_standin::socket::disconnect_envelope("warning").to_string();
        assert!(matches!(
            serde_json::from_str::<SocketModeEvent>(&bye).unwrap(),
            SocketModeEvent::Disconnect { reason, .. } if reason == "warning"
        ));
    }
}
