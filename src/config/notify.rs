//! Notification targets in the config: `[[notify]]` entries, and the older `[slack]` table,
//! which stays valid and becomes one target. Secrets (tokens, webhook URLs) are never written
//! in the file: a target names the environment variable that holds them.

use super::{Config, RawSlack, SlackConfig, SlackControlConfig};
use crate::diagnostics::closest;
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

/// The Slack Web API, unless a target says otherwise.
pub const SLACK_API_URL: &str = "https://slack.com/api/";

/// One place the run's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub kind: NotifyKind,
    /// Base URL where the runs directory is published: the final message links
    /// `REPORT_URL/RUN_ID/report.html` instead of the local path.
    pub report_url: Option<String>,
    /// Where it is configured, for messages: `[slack]` or `[[notify]] #2`.
    pub origin: String,
}

/// What a target is, with the names of the environment variables holding its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyKind {
    /// A bot token: one message per run, updated, with threaded replies.
    Slack {
        channel: String,
        token_env: String,
        api_url: String,
        /// Buttons through Socket Mode (`[slack]` only).
        control: Option<SlackControlConfig>,
    },
    /// A Slack incoming webhook: the same messages, without threads or updates.
    SlackWebhook { url_env: String },
    /// Any receiver of a JSON POST (`run_id`, `event`, `text`, `fields`): Mattermost, Teams
    /// workflows, Google Chat, an in-house bot. `token_env`: sent as `Authorization: Bearer`.
    Webhook {
        url_env: String,
        token_env: Option<String>,
    },
}

impl NotifyKind {
    /// A Slack target (the playbook's `notify.slack = false` turns these off).
    pub fn is_slack(&self) -> bool {
        matches!(
            self,
            NotifyKind::Slack { .. } | NotifyKind::SlackWebhook { .. }
        )
    }
}

impl SlackConfig {
    /// The `[slack]` table as a target (a bot token wins over a webhook, as it always did).
    pub fn target(&self) -> Option<NotifyTarget> {
        let kind = match (&self.token_env, &self.webhook_url_env) {
            (Some(token_env), _) => NotifyKind::Slack {
                channel: self.channel.clone(),
                token_env: token_env.clone(),
                api_url: self.api_url.clone(),
                control: self.control.clone(),
            },
            (None, Some(url_env)) => NotifyKind::SlackWebhook {
                url_env: url_env.clone(),
            },
            (None, None) => return None,
        };
        Some(NotifyTarget {
            kind,
            report_url: self.report_url.clone(),
            origin: "[slack]".into(),
        })
    }
}

/// Whether `id` looks like a Slack user (`U...`, `W...`) or user group (`S...`) ID.
fn is_slack_id(id: &str) -> bool {
    id.len() >= 3
        && id.starts_with(['U', 'W', 'S'])
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// `[slack] app-token-env` and `operators`, checked: buttons need the bot token (to post the
/// message that carries them and to answer refusals) and someone allowed to press them.
pub(super) fn slack_control(
    s: &RawSlack,
    err: &mut impl FnMut(Range<usize>, String, String),
) -> Option<SlackControlConfig> {
    let (app_token_env, operators) = match (&s.app_token_env, &s.operators) {
        (None, None) => return None,
        (None, Some(ops)) => {
            err(
                ops.span(),
                "`operators` has no effect without `app-token-env`: there are no buttons to press".into(),
                "add app-token-env = \"ROLLGATE_SLACK_APP_TOKEN\" (an app-level token with connections:write) or remove operators".into(),
            );
            return None;
        }
        (Some(app), ops) => (app, ops),
    };
    if s.token_env.is_none() {
        err(
            app_token_env.span(),
            "Slack buttons need a bot token (`token-env`): the app token only opens the socket".into(),
            "add token-env = \"ROLLGATE_SLACK_TOKEN\" (a bot token with chat:write and usergroups:read)".into(),
        );
    }
    let operators = match operators {
        Some(ops) if !ops.get_ref().is_empty() => ops,
        _ => {
            err(
                app_token_env.span(),
                "Slack buttons need `operators`: nobody could pause, resume or abort".into(),
                "list the Slack user IDs or user group IDs allowed to act, e.g. operators = [\"U012AB3CD\", \"S0OPSTEAM\"]".into(),
            );
            return None;
        }
    };
    for id in operators.get_ref() {
        if !is_slack_id(id.get_ref()) {
            err(
                id.span(),
                format!("{:?} is not a Slack user or user group ID", id.get_ref()),
                "use IDs, not names: a member's ID is in their profile (⋮ > Copy member ID, U...), a user group's in its URL (S...)".into(),
            );
        }
    }
    Some(SlackControlConfig {
        app_token_env: app_token_env.get_ref().clone(),
        operators: operators
            .get_ref()
            .iter()
            .map(|o| o.get_ref().clone())
            .collect(),
    })
}

impl Config {
    /// Every notification target: `[slack]` first, then the `[[notify]]` entries in order.
    pub fn notify_targets(&self) -> Vec<NotifyTarget> {
        self.slack
            .iter()
            .filter_map(SlackConfig::target)
            .chain(self.notify.iter().cloned())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTarget {
    kind: Spanned<String>,
    channel: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
    report_url: Option<Spanned<String>>,
    /// Rejected with a hint: secrets never live in files.
    token: Option<Spanned<String>>,
    /// Rejected with a hint: webhook URLs are secrets.
    url: Option<Spanned<String>>,
}

const KINDS: [&str; 3] = ["slack", "slack-webhook", "webhook"];

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Checks the `[[notify]]` entries; problems go to `err(span, message, hint)`.
pub(super) fn targets(
    raw: Vec<RawTarget>,
    err: &mut impl FnMut(Range<usize>, String, String),
) -> Vec<NotifyTarget> {
    let mut targets = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let origin = format!("[[notify]] #{}", i + 1);
        if let Some(token) = &t.token {
            err(
                token.span(),
                "tokens are never written in the config file".into(),
                "put the token in an environment variable and name it: token-env = \"ROLLGATE_SLACK_TOKEN\"".into(),
            );
        }
        if let Some(url) = &t.url {
            err(
                url.span(),
                "webhook URLs are secrets and never written in the config file".into(),
                "put the URL in an environment variable and name it: url-env = \"ROLLGATE_WEBHOOK_URL\"".into(),
            );
        }
        let kind = t.kind.get_ref().as_str();
        // Keys that this kind does not use, with why.
        let unused: Vec<(&str, &Option<Spanned<String>>, &str)> = match kind {
            "slack" => vec![(
                "url-env",
                &t.url_env,
                "a bot posts with `token-env`; for an incoming webhook use kind = \"slack-webhook\"",
            )],
            "slack-webhook" => vec![
                (
                    "channel",
                    &t.channel,
                    "an incoming webhook posts to the channel it was created for",
                ),
                (
                    "token-env",
                    &t.token_env,
                    "an incoming webhook needs only `url-env`; for a bot token use kind = \"slack\"",
                ),
                (
                    "api-url",
                    &t.api_url,
                    "only kind = \"slack\" calls the Web API",
                ),
            ],
            "webhook" => vec![
                (
                    "channel",
                    &t.channel,
                    "the webhook's receiver decides where its messages go",
                ),
                (
                    "api-url",
                    &t.api_url,
                    "only kind = \"slack\" calls the Web API",
                ),
            ],
            _ => vec![],
        };
        for (key, value, why) in unused {
            if let Some(v) = value {
                err(
                    v.span(),
                    format!("`{key}` is not used by kind = \"{kind}\""),
                    format!("{why}; remove `{key}`"),
                );
            }
        }
        let needs = |key: &str,
                     value: &Option<Spanned<String>>,
                     err: &mut dyn FnMut(Range<usize>, String, String),
                     example: &str| {
            if value.is_none() {
                err(
                    t.kind.span(),
                    format!("kind = \"{kind}\" needs `{key}`"),
                    format!("e.g. {key} = {example}"),
                );
            }
            value
                .as_ref()
                .map(|v| v.get_ref().clone())
                .unwrap_or_default()
        };
        let report_url = t.report_url.as_ref().map(|u| {
            if !is_http(u.get_ref()) {
                err(
                    u.span(),
                    format!("{:?} is not an http(s) URL", u.get_ref()),
                    "e.g. report-url = \"https://reports.example.com/rollgate\"".into(),
                );
            }
            u.get_ref().clone()
        });
        let parsed = match kind {
            "slack" => {
                let channel = needs("channel", &t.channel, err, "\"#ops\"");
                let token_env = needs("token-env", &t.token_env, err, "\"ROLLGATE_SLACK_TOKEN\"");
                let api_url = match &t.api_url {
                    None => SLACK_API_URL.to_owned(),
                    Some(u) if is_http(u.get_ref()) => u.get_ref().clone(),
                    Some(u) => {
                        err(
                            u.span(),
                            format!("{:?} is not an http(s) URL", u.get_ref()),
                            format!("leave it out for Slack itself ({SLACK_API_URL})"),
                        );
                        SLACK_API_URL.to_owned()
                    }
                };
                NotifyKind::Slack {
                    channel,
                    token_env,
                    api_url,
                    control: None,
                }
            }
            "slack-webhook" => NotifyKind::SlackWebhook {
                url_env: needs("url-env", &t.url_env, err, "\"ROLLGATE_SLACK_WEBHOOK\""),
            },
            "webhook" => NotifyKind::Webhook {
                url_env: needs("url-env", &t.url_env, err, "\"ROLLGATE_WEBHOOK_URL\""),
                token_env: t.token_env.as_ref().map(|v| v.get_ref().clone()),
            },
            other => {
                let hint = match closest(other, &KINDS) {
                    Some(best) => format!("did you mean \"{best}\"?"),
                    None => "use \"slack\" (a bot token), \"slack-webhook\" or \"webhook\" (JSON)"
                        .into(),
                };
                err(
                    t.kind.span(),
                    format!("unknown notification kind {other:?}"),
                    hint,
                );
                continue;
            }
        };
        targets.push(NotifyTarget {
            kind: parsed,
            report_url,
            origin,
        });
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(Path::new("c.toml"), text)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn the_slack_table_and_notify_entries_are_targets_in_order() {
        let c = parse(
            "[slack]\nchannel = \"#ops\"\ntoken-env = \"T\"\nreport-url = \"https://r.example\"\n\
             [[notify]]\nkind = \"webhook\"\nurl-env = \"HOOK\"\ntoken-env = \"HOOK_TOKEN\"\n\
             [[notify]]\nkind = \"slack-webhook\"\nurl-env = \"SW\"\n\
             [[notify]]\nkind = \"slack\"\nchannel = \"#oncall\"\ntoken-env = \"T2\"\napi-url = \"http://127.0.0.1:1/api/\"\n",
        )
        .unwrap();
        let targets = c.notify_targets();
        assert_eq!(
            targets.iter().map(|t| t.kind.clone()).collect::<Vec<_>>(),
            vec![
                NotifyKind::Slack {
                    channel: "#ops".into(),
                    token_env: "T".into(),
                    api_url: SLACK_API_URL.into(),
                    control: None,
                },
                NotifyKind::Webhook {
                    url_env: "HOOK".into(),
                    token_env: Some("HOOK_TOKEN".into())
                },
                NotifyKind::SlackWebhook {
                    url_env: "SW".into()
                },
                NotifyKind::Slack {
                    channel: "#oncall".into(),
                    token_env: "T2".into(),
                    api_url: "http://127.0.0.1:1/api/".into(),
                    control: None,
                },
            ]
        );
        assert_eq!(targets[0].report_url.as_deref(), Some("https://r.example"));
        assert_eq!(targets[0].origin, "[slack]");
        assert_eq!(targets[2].origin, "[[notify]] #2");
        assert!(parse("").unwrap().notify_targets().is_empty());
        let hook_only = parse("[slack]\nchannel = \"#x\"\nwebhook-url-env = \"W\"\n").unwrap();
        assert_eq!(
            hook_only.notify_targets()[0].kind,
            NotifyKind::SlackWebhook {
                url_env: "W".into()
            }
        );
    }

    #[test]
    fn notify_errors_name_file_line_key_and_hint() {
        let cases = [
            (
                "[[notify]]\nkind = \"slak\"\n",
                "c.toml:2:8: `notify[1].kind`: unknown notification kind \"slak\"\n  hint: did you mean \"slack\"?",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example/secret\"\n",
                "c.toml:3:7: `notify[1].url`: webhook URLs are secrets and never written in the config file\n  hint: put the URL in an environment variable and name it: url-env = \"ROLLGATE_WEBHOOK_URL\"",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl-env = \"H\"\n[[notify]]\nkind = \"slack\"\nchannel = \"#x\"\ntoken = \"xoxb-1\"\n",
                "c.toml:7:9: `notify[2].token`: tokens are never written in the config file",
            ),
            (
                "[[notify]]\nkind = \"slack\"\ntoken-env = \"T\"\n",
                "c.toml:2:8: `notify[1].kind`: kind = \"slack\" needs `channel`\n  hint: e.g. channel = \"#ops\"",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\n",
                "`notify[1].kind`: kind = \"webhook\" needs `url-env`\n  hint: e.g. url-env = \"ROLLGATE_WEBHOOK_URL\"",
            ),
            (
                "[[notify]]\nkind = \"slack-webhook\"\nurl-env = \"W\"\nchannel = \"#x\"\n",
                "c.toml:4:11: `notify[1].channel`: `channel` is not used by kind = \"slack-webhook\"\n  hint: an incoming webhook posts to the channel it was created for; remove `channel`",
            ),
            (
                "[[notify]]\nkind = \"slack\"\nchannel = \"#x\"\ntoken-env = \"T\"\napi-url = \"slack.com/api\"\n",
                "`notify[1].api-url`: \"slack.com/api\" is not an http(s) URL",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl-env = \"H\"\nreport-url = \"reports\"\n",
                "`notify[1].report-url`: \"reports\" is not an http(s) URL",
            ),
            (
                "[[notify]]\nkind = \"webhook\"\nurl_env = \"H\"\n",
                "`notify[1].url_env`: unknown field `url_env`\n  hint: did you mean `url-env`?",
            ),
        ];
        for (text, want) in cases {
            let errs = parse(text).map(|_| vec![]).unwrap_or_else(|e| e);
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "want {want:?}\n  in {errs:#?}\n  for:\n{text}"
            );
        }
    }
}
