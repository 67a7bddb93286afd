//! A generic JSON webhook: one POST per message, for Mattermost, Teams workflows, Google Chat
//! or an in-house bot. The body:
//!
//! ```json
//! {"run_id": "…", "playbook": "…", "event": "node-done", "text": "node `n1` upgraded in 41s",
//!  "fields": {"node": "n1", "elapsed_ms": "41000"}}
//! ```
//!
//! `text` is what people read (receivers that show `text`, like Mattermost and Google Chat,
//! need nothing more); `event` and `fields` are for receivers that read data. Replies and the
//! run's first message are posted; updates of the run's message are not (a webhook cannot
//! edit). An optional token goes in `Authorization: Bearer`. 2xx delivers; 429 and 5xx are
//! retried (Retry-After honoured); other statuses refuse the message. Neither the URL nor the
//! token appear in errors or logs.

use super::delivery::{Channel, Failure, REQUEST_TIMEOUT};
use super::message::{Message, Place};
use futures::future::BoxFuture;
use std::time::Duration;

pub struct JsonWebhook {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    run_id: String,
    playbook: String,
}

impl JsonWebhook {
    pub fn new(url: &str, token: Option<&str>, run_id: &str, playbook: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(REQUEST_TIMEOUT)
                .build()
                .expect("an HTTP client with default settings"),
            url: url.to_owned(),
            token: token.map(str::to_owned),
            run_id: run_id.to_owned(),
            playbook: playbook.to_owned(),
        }
    }
}

/// The JSON body for a message (pure).
pub fn body(run_id: &str, playbook: &str, message: &Message) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = message
        .fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "run_id": run_id,
        "playbook": playbook,
        "event": message.event,
        "text": message.text,
        "fields": fields,
    })
}

impl Channel for JsonWebhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if message.place == Place::UpdateRoot {
                return Ok(());
            }
            let mut request = self
                .http
                .post(&self.url)
                .timeout(REQUEST_TIMEOUT)
                .json(&body(&self.run_id, &self.playbook, message));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| Failure::retry(format!("request failed: {}", e.without_url())))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if status.as_u16() == 429 {
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1u64);
                return Err(Failure::Retry {
                    why: format!("rate limited (Retry-After {after}s)"),
                    after: Some(Duration::from_secs(after)),
                });
            }
            if status.is_server_error() {
                return Err(Failure::retry(format!("HTTP {status}")));
            }
            Err(Failure::Refused(format!("HTTP {status}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_run_the_event_the_text_and_the_fields() {
        let message = Message {
            place: Place::Reply,
            event: "node-failed".into(),
            text: "node `n1` FAILED at drain".into(),
            fields: vec![("node", "n1".into()), ("step", "drain".into())],
            buttons: vec![],
        };
        assert_eq!(
            body("r1", "kernel", &message),
            serde_json::json!({
                "run_id": "r1",
                "playbook": "kernel",
                "event": "node-failed",
                "text": "node `n1` FAILED at drain",
                "fields": {"node": "n1", "step": "drain"},
            })
        );
    }
}
