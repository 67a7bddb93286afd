//! Pause / Resume / Abort from the run's Slack message, through Socket Mode.
//!
//! The run opens Socket Mode connections with the app-level token (slack-morphism's
//! `SlackClientSocketModeListener`: `apps.connections.open`, then a websocket; no public
//! endpoint on the runner's host). A button click arrives as a `block_actions` envelope, is
//! acknowledged at once, and is handled beside the run:
//! - a button of another run (another run on the same Slack app): the clicker is told so;
//! - a user not among `[slack] operators` (IDs, or members of a listed user group, looked up at
//!   each click): refused with an ephemeral message, and the refusal recorded by the
//!   [`Controller`] (journal, report, thread);
//! - anyone else: the [`Controller`] asks the run (the same request `rollgate pause` writes, so
//!   it is recorded with who, when and from where) and the clicker gets the run's answer as an
//!   ephemeral message.
//!
//! Slack trouble never blocks or changes the run: connections retry on their own, a click
//! that cannot be answered is only logged, and [`Listener::stop`] ends it all at the run's end.

use super::delivery::REQUEST_TIMEOUT;
use super::slack::{Connector, client};
use crate::vocab::ControlAction;
use futures::future::BoxFuture;
use slack_morphism::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The id of the message block holding the buttons.
pub const BLOCK_ID: &str = "rollgate-control";

/// What the buttons act on: the live run.
pub trait Controller: Send + Sync {
    /// Asks the run for `action` on behalf of `by`: the run's answer (done, in words), or why
    /// it could not be asked.
    fn request(
        &self,
        action: ControlAction,
        by: String,
    ) -> BoxFuture<'static, Result<(bool, String), String>>;
    /// Records a refused request (who, what, why).
    fn refused(&self, action: ControlAction, by: String, reason: String);
    /// Tells the operator something about the buttons (not connected, a click not answered).
    fn warn(&self, message: String);
}

/// A user group's members, or why they could not be read.
type Members = BoxFuture<'static, Result<Vec<String>, String>>;

/// Who may act: user IDs, and user group IDs whose members may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operators {
    users: BTreeSet<String>,
    groups: Vec<String>,
}

impl Operators {
    pub fn new(ids: &[String]) -> Self {
        let (groups, users): (Vec<_>, Vec<_>) =
            ids.iter().cloned().partition(|i| i.starts_with('S'));
        Self {
            users: users.into_iter().collect(),
            groups,
        }
    }

    /// Whether `user` may act: listed, or a member of a listed group (`members` looks a group
    /// up; a failed lookup refuses, naming the group).
    async fn allow(&self, user: &str, members: impl Fn(&str) -> Members) -> Result<(), String> {
        if self.users.contains(user) {
            return Ok(());
        }
        let mut trouble = vec![];
        for group in &self.groups {
            match members(group).await {
                Ok(users) if users.iter().any(|u| u == user) => return Ok(()),
                Ok(_) => {}
                Err(e) => trouble.push(format!("user group {group} could not be read: {e}")),
            }
        }
        let mut why = "not among [slack] operators".to_owned();
        if !trouble.is_empty() {
            why.push_str(&format!(" ({})", trouble.join("; ")));
        }
        Err(why)
    }
}

/// The buttons the run's message offers, as Block Kit: one `actions` block whose buttons carry
/// the action as `action_id` and the run id as `value`. Abort asks for confirmation.
pub fn buttons(run_id: &str, offers: &[ControlAction]) -> SlackBlock {
    let elements = offers
        .iter()
        .map(|a| {
            let label = match a {
                ControlAction::Pause => "Pause",
                ControlAction::Resume => "Resume",
                ControlAction::Abort => "Abort",
            };
            let mut button = SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from(label))
                .with_action_id(SlackActionId::new(a.name().into()))
                .with_value(run_id.into());
            match a {
                ControlAction::Resume => button = button.with_style(SlackBlockButtonStyle::Primary),
                ControlAction::Abort => {
                    button = button.with_style(SlackBlockButtonStyle::Danger).with_confirm(
                        SlackBlockConfirmItem::new(
                            SlackBlockPlainTextOnly::from("Abort the run?"),
                            SlackBlockText::from(SlackBlockPlainText::new(
                                format!("No new node starts; nodes in flight stop at their next safe point and stay cordoned. `rollgate resume {run_id}` continues later.")
                            )),
                            SlackBlockPlainTextOnly::from("Abort"),
                            SlackBlockPlainTextOnly::from("Cancel"),
                        ),
                    )
                }
                ControlAction::Pause => {}
            }
            SlackActionBlockElement::Button(button)
        })
        .collect();
    SlackBlock::Actions(
        SlackActionsBlock::new(elements).with_block_id(SlackBlockId::new(BLOCK_ID.into())),
    )
}

/// The controller while the run lasts: [`Listener::stop`] empties it, so connections that
/// slack-morphism's tasks keep open a little longer never keep the run's event sink alive.
type Slot = Arc<std::sync::RwLock<Option<Arc<dyn Controller>>>>;

/// What the callbacks share (slack-morphism hands it to them as user state).
struct Shared {
    run_id: String,
    operators: Operators,
    controller: Slot,
    bot_token: SlackApiToken,
    /// Set by the first `hello`: the buttons work.
    connected: Arc<AtomicBool>,
}

/// The Socket Mode connections of one run.
pub struct Listener {
    listener: SlackClientSocketModeListener<Connector>,
    watchdog: tokio::task::JoinHandle<()>,
    controller: Slot,
}

/// How long after the start a run says its buttons are not connected.
const CONNECT_WARNING_AFTER: Duration = Duration::from_secs(30);

/// Opens the Socket Mode connections (in the background: this returns at once) for run
/// `run_id`'s buttons.
pub async fn listen(
    api_url: &str,
    app_token: &str,
    bot_token: &str,
    run_id: &str,
    operators: Operators,
    controller: Arc<dyn Controller>,
) -> Listener {
    // tokio-tungstenite's TLS (wss://) takes the process's default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let connected = Arc::new(AtomicBool::new(false));
    let slot: Slot = Arc::new(std::sync::RwLock::new(Some(Arc::clone(&controller))));
    let shared = Shared {
        run_id: run_id.into(),
        operators,
        controller: Arc::clone(&slot),
        bot_token: token(bot_token),
        connected: Arc::clone(&connected),
    };
    let environment = Arc::new(
        SlackClientEventsListenerEnvironment::new(Arc::new(client(api_url)))
            .with_error_handler(on_error)
            .with_user_state(shared),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_hello_events(on_hello)
        .with_interaction_events(on_interaction);
    let config = SlackClientSocketModeConfig::new()
        .with_reconnect_timeout_in_seconds(10)
        .with_initial_backoff_in_seconds(1);
    let listener = SlackClientSocketModeListener::new(&config, environment, callbacks);
    let _ = listener.listen_for(&token(app_token)).await;
    listener.start().await;
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(CONNECT_WARNING_AFTER).await;
        if !connected.load(Ordering::Relaxed) {
            controller.warn(format!(
                "the Slack buttons are not connected after {} s (Socket Mode: check the app-level token, that Socket Mode is enabled for the app, and that this host reaches Slack); the run goes on, and `rollgate pause|resume|abort` work from any machine with cluster access",
                CONNECT_WARNING_AFTER.as_secs()
            ));
        }
    });
    Listener {
        listener,
        watchdog,
        controller: slot,
    }
}

impl Listener {
    /// Closes the connections (and stops retrying them).
    pub async fn stop(self) {
        self.watchdog.abort();
        let _ = self.watchdog.await;
        if let Ok(mut slot) = self.controller.write() {
            *slot = None;
        }
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.listener.shutdown()).await;
    }
}

fn token(value: &str) -> SlackApiToken {
    SlackApiToken::new(SlackApiTokenValue::new(value.to_owned()))
}

fn on_error(
    err: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackClient<Connector>>,
    _state: SlackClientEventsUserState,
) -> slack_morphism::listener::HttpStatusCode {
    tracing::warn!(error = %crate::redact::scrub(&err.to_string()), "Slack Socket Mode");
    // Acknowledge anyway: a payload that failed once fails again.
    slack_morphism::listener::HttpStatusCode::OK
}

/// (Generic over the event: slack-morphism does not export the hello event's type.)
async fn on_hello<HelloEvent>(
    _event: HelloEvent,
    _client: Arc<SlackClient<Connector>>,
    state: SlackClientEventsUserState,
) {
    if let Some(shared) = state.read().await.get_user_state::<Shared>() {
        shared.connected.store(true, Ordering::Relaxed);
    }
    tracing::info!("Slack Socket Mode connected: the run's buttons work");
}

/// Acknowledges at once (Slack wants it within 3 s) and handles the click beside the run.
async fn on_interaction(
    event: SlackInteractionEvent,
    client: Arc<SlackClient<Connector>>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackInteractionResponse> {
    if let SlackInteractionEvent::BlockActions(click) = event {
        let guard = state.read().await;
        let click_context = guard.get_user_state::<Shared>().and_then(|shared| {
            Some(Click {
                run_id: shared.run_id.clone(),
                operators: shared.operators.clone(),
                controller: shared.controller.read().ok()?.clone()?,
                bot_token: shared.bot_token.clone(),
            })
        });
        if let Some(context) = click_context {
            tokio::spawn(context.handle(click, client));
        }
    }
    Ok(SlackInteractionResponse::Empty)
}

/// One click being handled.
struct Click {
    run_id: String,
    operators: Operators,
    controller: Arc<dyn Controller>,
    bot_token: SlackApiToken,
}

impl Click {
    async fn handle(
        self,
        click: SlackInteractionBlockActionsEvent,
        client: Arc<SlackClient<Connector>>,
    ) {
        let Some(user) = &click.user else { return };
        let Some((action, run)) = click.actions.iter().flatten().find_map(|a| {
            Some((
                ControlAction::from_name(a.action_id.value())?,
                a.value.clone().unwrap_or_default(),
            ))
        }) else {
            return;
        };
        let channel = click
            .channel
            .as_ref()
            .map(|c| c.id.clone())
            .or(match &click.container {
                SlackInteractionActionContainer::Message(m) => m.channel_id.clone(),
                _ => None,
            });
        let name = user.username.clone().or(user.name.clone());
        let by = match name {
            Some(name) => format!("{name} (Slack {})", user.id.value()),
            None => format!("Slack user {}", user.id.value()),
        };
        let session = client.open_session(&self.bot_token);
        let said = if run != self.run_id {
            format!(
                "This button belongs to run `{run}`, but run `{}` received the click: both use this Slack app. Use `rollgate {} {run}` from a machine with access to its cluster (and one Slack app per cluster).",
                self.run_id,
                action.name()
            )
        } else {
            let members = |group: &str| -> Members {
                let (client, token) = (Arc::clone(&client), self.bot_token.clone());
                let request =
                    SlackApiUserGroupsUsersListRequest::new(SlackUserGroupId::new(group.into()));
                Box::pin(async move {
                    let session = client.open_session(&token);
                    match tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        session.usergroups_users_list(&request),
                    )
                    .await
                    {
                        Ok(Ok(list)) => Ok(list.users.iter().map(|u| u.value().clone()).collect()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
                    }
                })
            };
            match self.operators.allow(user.id.value(), members).await {
                Err(why) => {
                    self.controller.refused(action, by.clone(), why.clone());
                    format!(
                        "You may not {} run `{}`: {why}. Ask one of its operators, or add your Slack ID to `[slack] operators` in rollgate's config.",
                        action.name(),
                        self.run_id
                    )
                }
                Ok(()) => match self.controller.request(action, by).await {
                    Ok((_, said)) => format!("Run `{}`: {said}", self.run_id),
                    Err(e) => format!(
                        "Run `{}` could not be asked to {}: {e}",
                        self.run_id,
                        action.name()
                    ),
                },
            }
        };
        let Some(channel) = channel else { return };
        let request = SlackApiChatPostEphemeralRequest::new(
            channel,
            user.id.clone(),
            SlackMessageContent::new().with_text(said),
        );
        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, session.chat_post_ephemeral(&request))
            .await
            .map_err(|_| "no answer".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            self.controller.warn(format!(
                "the answer to a Slack click could not be posted: {e}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slack_socket_urls_wss_are_supported() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Nothing listens on port 1: the error must be the connection, not "TLS not compiled in".
        let Err(e) = tokio_tungstenite::connect_async("wss://127.0.0.1:1/link").await else {
            panic!("nothing listens there");
        };
        assert!(
            matches!(e, tokio_tungstenite::tungstenite::Error::Io(_)),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn users_are_allowed_by_id_or_by_group_membership() {
        let ops = Operators::new(&["U0ALICE".into(), "S0OPS".into()]);
        let groups = |g: &str| -> Members {
            let answer = match g {
                "S0OPS" => Ok(vec!["U0BOB".into()]),
                _ => Err("no_such_subteam".into()),
            };
            Box::pin(async move { answer })
        };
        assert_eq!(ops.allow("U0ALICE", groups).await, Ok(()));
        assert_eq!(ops.allow("U0BOB", groups).await, Ok(()));
        assert_eq!(
            ops.allow("U0MALLORY", groups).await,
            Err("not among [slack] operators".into())
        );
        let broken = Operators::new(&["S0GONE".into()]);
        assert_eq!(
            broken.allow("U0BOB", groups).await,
            Err("not among [slack] operators (user group S0GONE could not be read: no_such_subteam)".into())
        );
    }

    #[test]
    fn buttons_carry_the_action_and_the_run_and_abort_asks_first() {
        let block = serde_json::to_value(buttons(
            "r1",
            &[ControlAction::Resume, ControlAction::Abort],
        ))
        .unwrap();
        assert_eq!(block["type"], "actions");
        assert_eq!(block["block_id"], BLOCK_ID);
        let elements = block["elements"].as_array().unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[0]["action_id"], "resume");
        assert_eq!(elements[0]["value"], "r1");
        assert_eq!(elements[0]["type"], "button");
        assert_eq!(elements[1]["action_id"], "abort");
        assert_eq!(elements[1]["style"], "danger");
        assert!(elements[1]["confirm"]["title"].is_object());
        assert!(elements[0].get("confirm").is_none());
    }
}
