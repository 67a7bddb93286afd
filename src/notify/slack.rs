//! Slack channels through slack-morphism: a bot token (one message per run, updated with the
//! progress, replies threaded under it) and an incoming webhook (the same messages, without
//! threads or updates).
//!
//! slack-morphism's default connector is https-only; its hyper connector takes any connector,
//! so this one allows plain http too (a local Slack stand-in, a proxy) and honours `api-url`.
//! It is the hyper/rustls stack kube already brings. The token only ever goes in the
//! Authorization header and the webhook URL is logged redacted by slack-morphism; neither
//! appears in errors.

use super::delivery::{Channel, Failure, REQUEST_TIMEOUT};
use super::message::{Message, Place};
use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::HttpConnector;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use std::time::Duration;

pub(super) type Connector = SlackClientHyperConnector<hyper_rustls::HttpsConnector<HttpConnector>>;

/// An HTTP(S) connector: native roots (none if the system has none, then https fails per
/// request and http still works), connect timeout [`REQUEST_TIMEOUT`], Web API at `api_url`.
pub(super) fn client(api_url: &str) -> SlackClient<Connector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REQUEST_TIMEOUT));
    let provider = rustls::crypto::ring::default_provider();
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no TLS root certificates found: notifications over https will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        });
    let https = tls
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // slack-morphism joins the base and the method with a `/`.
    SlackClient::new(
        SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(api_url.trim_end_matches('/')),
    )
}

/// What a Slack error means for delivery. Never includes the token or a webhook URL.
fn failure(e: SlackClientError) -> Failure {
    match e {
        SlackClientError::RateLimitError(r) => {
            let after = r.retry_after.unwrap_or(Duration::from_secs(1));
            Failure::Retry {
                why: format!("rate limited (Retry-After {}s)", after.as_secs()),
                after: Some(after),
            }
        }
        SlackClientError::HttpError(h) if h.status_code.is_server_error() => {
            Failure::retry(format!("HTTP {}", h.status_code))
        }
        SlackClientError::HttpError(h) => Failure::Refused(format!("HTTP {}", h.status_code)),
        SlackClientError::ApiError(a) => Failure::Refused(format!("Slack error {:?}", a.code)),
        SlackClientError::ProtocolError(p) => {
            Failure::Refused(format!("unexpected answer: {}", p.json_error))
        }
        SlackClientError::HttpProtocolError(p) => Failure::retry(format!(
            "request failed: {}",
            p.cause
                .as_deref()
                .map(|c| error_chain(c))
                .unwrap_or_else(|| "unknown cause".into())
        )),
        other => Failure::retry(format!("request failed: {other}")),
    }
}

/// An error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A bot token: the run's message is posted once, then updated; replies go in its thread.
pub struct SlackBot {
    client: SlackClient<Connector>,
    token: SlackApiToken,
    channel: String,
    /// The run's message, once posted: its ts is the thread, its channel id the one to update.
    root: Option<(SlackTs, SlackChannelId)>,
    /// The run whose buttons the message carries (None: no buttons, Socket Mode is off).
    buttons_for: Option<String>,
}

impl SlackBot {
    pub fn new(api_url: &str, token: &str, channel: &str) -> Self {
        Self {
            client: client(api_url),
            token: SlackApiToken::new(SlackApiTokenValue::new(token.to_owned())),
            channel: channel.to_owned(),
            root: None,
            buttons_for: None,
        }
    }

    /// The run's message carries the buttons its state offers (see
    /// [`super::slack_control::buttons`]).
    pub fn with_buttons(mut self, run_id: &str) -> Self {
        self.buttons_for = Some(run_id.to_owned());
        self
    }

    /// The message as Slack gets it: the text, and with buttons, the text as a section and
    /// the buttons under it (`text` stays the notification's fallback).
    fn content(&self, message: &Message) -> SlackMessageContent {
        let content = SlackMessageContent::new().with_text(message.text.clone());
        match &self.buttons_for {
            Some(run_id) if matches!(message.place, Place::Root | Place::UpdateRoot) => {
                // A section's text holds at most 3 000 characters.
                let text: String = message.text.chars().take(3000).collect();
                let mut blocks = vec![SlackBlock::Section(
                    SlackSectionBlock::new()
                        .with_text(SlackBlockText::from(SlackBlockMarkDownText::new(text))),
                )];
                if !message.buttons.is_empty() {
                    blocks.push(super::slack_control::buttons(run_id, &message.buttons));
                }
                content.with_blocks(blocks)
            }
            _ => content,
        }
    }
}

/// The answer to `chat.update`, read leniently (only whether it worked matters).
#[derive(serde::Deserialize)]
struct Updated {}

impl Channel for SlackBot {
    fn name(&self) -> &'static str {
        "Slack"
    }

    fn send<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let session = self.client.open_session(&self.token);
            let content = self.content(message);
            let channel = SlackChannelId::new(self.channel.clone());
            match message.place {
                Place::Root => {
                    let request = SlackApiChatPostMessageRequest::new(channel, content);
                    let posted = session.chat_post_message(&request).await.map_err(failure)?;
                    self.root = Some((posted.ts, posted.channel));
                }
                Place::Reply => {
                    let request = SlackApiChatPostMessageRequest::new(channel, content)
                        .opt_thread_ts(self.root.as_ref().map(|(ts, _)| ts.clone()));
                    session.chat_post_message(&request).await.map_err(failure)?;
                }
                Place::UpdateRoot => {
                    // Nothing to update before the run's message is posted.
                    let Some((ts, channel_id)) = &self.root else {
                        return Ok(());
                    };
                    let request =
                        SlackApiChatUpdateRequest::new(channel_id.clone(), content, ts.clone());
                    session
                        .http_session_api
                        .http_post::<_, Updated>("chat.update", &request, None)
                        .await
                        .map_err(failure)?;
                }
            }
            Ok(())
        })
    }
}

/// An incoming webhook: no threads, no updates.
pub struct SlackWebhook {
    client: SlackClient<Connector>,
    /// None: the environment variable does not hold a URL (each message is refused).
    url: Option<url::Url>,
}

impl SlackWebhook {
    pub fn new(url: &str) -> Self {
        Self {
            // A webhook posts to its own URL, never to the Web API.
            client: client(crate::config::SLACK_API_URL),
            url: url::Url::parse(url).ok(),
        }
    }
}

impl Channel for SlackWebhook {
    fn name(&self) -> &'static str {
        "Slack"
    }

    fn send<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if message.place == Place::UpdateRoot {
                return Ok(());
            }
            let Some(url) = &self.url else {
                return Err(Failure::Refused(
                    "the webhook URL in the environment is not a URL".into(),
                ));
            };
            let request = SlackApiPostWebhookMessageRequest::new(
                SlackMessageContent::new().with_text(message.text.clone()),
            );
            self.client
                .post_webhook_message(url, &request)
                .await
                .map(|_| ())
                .map_err(failure)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_rate_limits_are_retried_refusals_are_not() {
        let http = |code: u16| {
            failure(SlackClientError::HttpError(
                slack_morphism::errors::SlackClientHttpError::new(
                    reqwest::StatusCode::from_u16(code).unwrap(),
                ),
            ))
        };
        assert_eq!(http(503), Failure::retry("HTTP 503 Service Unavailable"));
        assert_eq!(http(404), Failure::Refused("HTTP 404 Not Found".into()));
        assert_eq!(
            failure(SlackClientError::RateLimitError(
                slack_morphism::errors::SlackRateLimitError::new()
                    .with_retry_after(Duration::from_secs(7))
            )),
            Failure::Retry {
                why: "rate limited (Retry-After 7s)".into(),
                after: Some(Duration::from_secs(7)),
            }
        );
        assert_eq!(
            failure(SlackClientError::ApiError(
                slack_morphism::errors::SlackClientApiError::new("invalid_auth".into())
            )),
            Failure::Refused("Slack error \"invalid_auth\"".into())
        );
    }
}
