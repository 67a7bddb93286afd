//! Notifications: telling people about a run, behind one interface.
//!
//! - [`message`]: what to say at each event, as plain data (pure, no IO);
//! - [`delivery`]: per-target queues with bounded retries that never block or change the run,
//!   and the [`Channel`] trait;
//! - channels: [`slack`] (a bot token with threads and updates, or an incoming webhook, through
//!   slack-morphism) and [`webhook`] (a JSON POST for any other receiver).
//!
//! A run resolves its targets' secrets first ([`resolve`]: a missing environment variable
//! refuses the run before it changes anything), then [`start`]s a [`Notifier`]: its
//! [`Notifier::consumer`] takes the run's events, and [`Notifier::finish`] waits for the last
//! deliveries, at most [`FINISH_BOUND`]. Secrets live only in the channels and never appear in
//! `Debug` output, logs or errors.
//!
//! To add a channel: a file here implementing [`Channel`], a variant of
//! [`NotifyKind`] with its keys in `config/notify.rs`, and its arms
//! in [`resolve`] and [`start`].

pub mod delivery;
pub mod message;
pub mod slack;
pub mod slack_control;
pub mod webhook;

pub use delivery::{Channel, FINISH_BOUND, Failure};
pub use message::{Message, Narrator, Place};

use crate::config::{Config, NotifyKind, NotifyTarget};
use crate::report::Consumer;
use crate::vocab::Stamped;
use std::path::Path;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A target's environment variable is not set.
#[derive(Debug, thiserror::Error)]
#[error(
    "error: the config names environment variable {var} for {what}, but it is not set\n  hint: export {var}=... or remove the {origin} {table}"
)]
pub struct NotifyError {
    pub var: String,
    what: &'static str,
    origin: String,
    table: &'static str,
}

/// Slack Socket Mode for the run's buttons: the app-level token and who may act.
#[derive(Clone)]
pub struct SocketMode {
    app_token: String,
    operators: Vec<String>,
}

/// A target with its secrets read from the environment.
#[derive(Clone)]
pub struct Target {
    secret: Secret,
    report_url: Option<String>,
    is_slack: bool,
}

#[derive(Clone)]
enum Secret {
    SlackBot {
        api_url: String,
        token: String,
        channel: String,
        /// Buttons through Socket Mode.
        control: Option<SocketMode>,
    },
    SlackWebhook {
        url: String,
    },
    Webhook {
        url: String,
        token: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.secret {
            Secret::SlackBot {
                api_url,
                channel,
                control,
                ..
            } => write!(
                f,
                "Slack bot ({api_url}, {channel}, token redacted{})",
                if control.is_some() {
                    ", Socket Mode app token redacted"
                } else {
                    ""
                }
            ),
            Secret::SlackWebhook { .. } => write!(f, "Slack incoming webhook (URL redacted)"),
            Secret::Webhook { token, .. } => write!(
                f,
                "JSON webhook (URL redacted{})",
                if token.is_some() {
                    ", token redacted"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Reads every target's secrets from the environment (before the run changes anything).
pub fn resolve(config: &Config) -> Result<Vec<Target>, NotifyError> {
    config.notify_targets().iter().map(resolve_one).collect()
}

fn resolve_one(t: &NotifyTarget) -> Result<Target, NotifyError> {
    let (what, table) = match (&t.kind, t.origin.as_str()) {
        (_, "[slack]") => ("Slack", "table"),
        (NotifyKind::Webhook { .. }, _) => ("a webhook", "entry"),
        _ => ("Slack", "entry"),
    };
    let read = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| NotifyError {
                var: var.into(),
                what,
                origin: t.origin.clone(),
                table,
            })
    };
    let secret = match &t.kind {
        NotifyKind::Slack {
            channel,
            token_env,
            api_url,
            control,
        } => Secret::SlackBot {
            api_url: api_url.clone(),
            token: read(token_env)?,
            channel: channel.clone(),
            control: match control {
                Some(c) => Some(SocketMode {
                    app_token: read(&c.app_token_env)?,
                    operators: c.operators.clone(),
                }),
                None => None,
            },
        },
        NotifyKind::SlackWebhook { url_env } => Secret::SlackWebhook {
            url: read(url_env)?,
        },
        NotifyKind::Webhook { url_env, token_env } => Secret::Webhook {
            url: read(url_env)?,
            token: token_env.as_deref().map(read).transpose()?,
        },
    };
    // Tokens and webhook URLs (whose path is their secret) never reach a record.
    match &secret {
        Secret::SlackBot { token, control, .. } => {
            crate::redact::register([token]);
            crate::redact::register(control.iter().map(|c| &c.app_token));
        }
        Secret::SlackWebhook { url } => {
            crate::redact::register(crate::redact::url_secrets(url, true))
        }
        Secret::Webhook { url, token } => {
            crate::redact::register(crate::redact::url_secrets(url, true));
            crate::redact::register(token.iter());
        }
    }
    Ok(Target {
        secret,
        report_url: t.report_url.clone(),
        is_slack: t.kind.is_slack(),
    })
}

/// The run the notifications are about.
pub struct RunInfo<'a> {
    pub run_id: &'a str,
    pub playbook: &'a crate::playbook::Playbook,
    /// The run report's local path: the final message names it, or the target's report URL.
    pub report_file: &'a Path,
    /// A dry run notifies nobody.
    pub dry_run: bool,
}

/// The report as the final message names it for a target.
fn report_link(report_url: Option<&str>, run: &RunInfo) -> String {
    match report_url {
        Some(base) => {
            let file = run
                .report_file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{}/{}/{file}", base.trim_end_matches('/'), run.run_id)
        }
        None => run.report_file.display().to_string(),
    }
}

/// The run's notifications under way.
pub struct Notifier {
    senders: Vec<mpsc::UnboundedSender<Stamped>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts delivery to every target (none for a dry run; Slack ones only if the playbook's
/// `notify.slack` allows). `failures`: `rollgate_slack_delivery_failures_total`.
pub fn start(targets: &[Target], run: &RunInfo, failures: prometheus::IntCounterVec) -> Notifier {
    let mut notifier = Notifier {
        senders: vec![],
        tasks: vec![],
    };
    if run.dry_run {
        return notifier;
    }
    for t in targets
        .iter()
        .filter(|t| run.playbook.notify.slack || !t.is_slack)
    {
        let mut narrator = Narrator::new(
            run.run_id,
            &run.playbook.name,
            run.playbook.notify.mention.clone(),
            Some(report_link(t.report_url.as_deref(), run)),
        );
        let channel: Box<dyn Channel> = match &t.secret {
            Secret::SlackBot {
                api_url,
                token,
                channel,
                control,
            } => {
                let bot = slack::SlackBot::new(api_url, token, channel);
                if control.is_some() {
                    narrator = narrator.with_buttons();
                    Box::new(bot.with_buttons(run.run_id))
                } else {
                    Box::new(bot)
                }
            }
            Secret::SlackWebhook { url } => Box::new(slack::SlackWebhook::new(url)),
            Secret::Webhook { url, token } => Box::new(webhook::JsonWebhook::new(
                url,
                token.as_deref(),
                run.run_id,
                &run.playbook.name,
            )),
        };
        let (tx, task) = delivery::spawn(channel, narrator, failures.clone());
        notifier.senders.push(tx);
        notifier.tasks.push(task);
    }
    notifier
}

/// Opens the Slack Socket Mode connections for the run's buttons, if a target has them (not
/// for a dry run, nor when the playbook turns Slack off): see [`slack_control`].
pub async fn listen_for_buttons(
    targets: &[Target],
    run: &RunInfo<'_>,
    controller: std::sync::Arc<dyn slack_control::Controller>,
) -> Option<slack_control::Listener> {
    if run.dry_run || !run.playbook.notify.slack {
        return None;
    }
    let (api_url, token, control) = targets.iter().find_map(|t| match &t.secret {
        Secret::SlackBot {
            api_url,
            token,
            control: Some(control),
            ..
        } => Some((api_url, token, control)),
        _ => None,
    })?;
    Some(
        slack_control::listen(
            api_url,
            &control.app_token,
            token,
            run.run_id,
            slack_control::Operators::new(&control.operators),
            controller,
        )
        .await,
    )
}

/// Forwards the run's events to every target's delivery task.
struct Forward(Vec<mpsc::UnboundedSender<Stamped>>);

impl Consumer for Forward {
    fn handle(&mut self, event: &Stamped) {
        for tx in &self.0 {
            let _ = tx.send(event.clone());
        }
    }

    fn finish(&mut self) {
        self.0.clear();
    }
}

impl Notifier {
    /// The consumer that takes the run's events (once: later calls get one that does nothing).
    pub fn consumer(&mut self) -> Box<dyn Consumer> {
        Box::new(Forward(std::mem::take(&mut self.senders)))
    }

    /// Once the events are over (the consumer finished): waits for the last deliveries, at
    /// most [`FINISH_BOUND`] for all targets together.
    pub async fn finish(self) {
        drop(self.senders);
        if self.tasks.is_empty() {
            return;
        }
        let all = futures::future::join_all(self.tasks);
        let _ = tokio::time::timeout(FINISH_BOUND, all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_secret_names_the_variable_and_where_it_is_configured() {
        let config = Config::parse(
            Path::new("c.toml"),
            "[slack]\nchannel = \"#x\"\ntoken-env = \"ROLLGATE_UNIT_UNSET_TOKEN\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve(&config).unwrap_err().to_string(),
            "error: the config names environment variable ROLLGATE_UNIT_UNSET_TOKEN for Slack, but it is not set\n  hint: export ROLLGATE_UNIT_UNSET_TOKEN=... or remove the [slack] table"
        );
        let config = Config::parse(
            Path::new("c.toml"),
            "[[notify]]\nkind = \"webhook\"\nurl-env = \"ROLLGATE_UNIT_UNSET_URL\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve(&config).unwrap_err().to_string(),
            "error: the config names environment variable ROLLGATE_UNIT_UNSET_URL for a webhook, but it is not set\n  hint: export ROLLGATE_UNIT_UNSET_URL=... or remove the [[notify]] #1 entry"
        );
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let targets = [
            Secret::SlackBot {
                api_url: "https://slack.com/api/".into(),
                token: "xoxb-secret".into(),
                channel: "#ops".into(),
                control: Some(SocketMode {
                    app_token: "xapp-secret".into(),
                    operators: vec!["U1".into()],
                }),
            },
            Secret::SlackWebhook {
                url: "https://hooks.slack.com/services/secret".into(),
            },
            Secret::Webhook {
                url: "https://chat.example/hooks/secret".into(),
                token: Some("bearer-secret".into()),
            },
        ];
        for secret in targets {
            let shown = format!(
                "{:?}",
                Target {
                    secret,
                    report_url: None,
                    is_slack: true
                }
            );
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn the_final_message_links_the_report_under_the_targets_url_or_names_its_path() {
        let playbook = crate::playbook::parse(
            Path::new("p.toml"),
            "name = \"p\"\n[[phase]]\nname = \"all\"\nnodes = [\"n1\"]\n[command]\nrun = \"true\"\n",
        )
        .map_err(|e| e.to_string())
        .unwrap();
        let run = RunInfo {
            run_id: "r1",
            playbook: &playbook,
            report_file: Path::new("/state/runs/r1/report.html"),
            dry_run: false,
        };
        assert_eq!(
            report_link(Some("https://reports.example/rollgate/"), &run),
            "https://reports.example/rollgate/r1/report.html"
        );
        assert_eq!(report_link(None, &run), "/state/runs/r1/report.html");
    }
}
