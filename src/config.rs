//! The config file: *where and how* (cluster context, SSH, notification targets, Prometheus,
//! metrics, state directory, logs). The playbook says what to do; this says where. Secrets are
//! never read from the file: it names the environment variable that holds them.
//!
//! Precedence for every setting: command-line flag > environment > config file > default.

use crate::diagnostics::{Source, SourceError, SourceErrors, closest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod notify;
pub use notify::{NotifyKind, NotifyTarget, SLACK_API_URL};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsPolicy {
    /// Unknown or changed host keys are refused (the default).
    Strict,
    /// Unknown host keys are added, changed ones refused.
    AcceptNew,
}

/// How a node's SSH address is derived from its Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSource {
    InternalIp,
    Hostname,
    /// `{name}` is replaced by the node name, e.g. `{name}.nodes.example.com`.
    Template(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub config_file: Option<PathBuf>,
    pub identity_file: Option<PathBuf>,
    pub jump_host: Option<String>,
    pub known_hosts: KnownHostsPolicy,
    pub known_hosts_file: Option<PathBuf>,
    pub address: AddressSource,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub channel: String,
    /// Name of the environment variable holding the bot token.
    pub token_env: Option<String>,
    /// Name of the environment variable holding an incoming-webhook URL.
    pub webhook_url_env: Option<String>,
    pub api_url: String,
    /// Base URL where the runs directory is published: the final message links
    /// `REPORT_URL/RUN_ID/report.html` instead of the local path.
    pub report_url: Option<String>,
    /// Pause / Resume / Abort buttons through Socket Mode (None: messages have no buttons).
    pub control: Option<SlackControlConfig>,
}

/// `[slack] app-token-env` and `operators`: who may act on the run's buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackControlConfig {
    /// Name of the environment variable holding the app-level token (`xapp-...`,
    /// `connections:write`) that opens the Socket Mode connection.
    pub app_token_env: String,
    /// Slack user IDs (`U...`, `W...`) and user group IDs (`S...`) allowed to act.
    pub operators: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (None: defaults only).
    pub source: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub ssh: SshConfig,
    pub slack: Option<SlackConfig>,
    /// `[[notify]]` entries; [`Config::notify_targets`] adds `[slack]` in front.
    pub notify: Vec<NotifyTarget>,
    pub prometheus_url: Option<String>,
    pub metrics_listen: String,
    /// A Pushgateway that gets the run's final metrics (runs can end between two scrapes).
    pub pushgateway: Option<String>,
    pub state_dir: PathBuf,
    /// How many runs' copies (ConfigMaps) to keep in the cluster per lock name; older ones are
    /// deleted at the end of a run.
    pub keep_runs: usize,
    /// The namespace of the cluster lock (Lease) and the runs' copies (ConfigMaps):
    /// `state.namespace`, default [`DEFAULT_STATE_NAMESPACE`].
    pub state_namespace: String,
    /// None: automatic (text on a terminal, JSON lines otherwise).
    pub log_format: Option<LogFormat>,
    /// The cluster's maintenance window, for playbooks without their own `[window]`.
    pub window: Option<crate::window::Window>,
}

/// Values from flags and the environment that override the file (flag > env is clap's job).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub ssh_config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    ssh: RawSsh,
    slack: Option<RawSlack>,
    #[serde(default)]
    notify: Vec<notify::RawTarget>,
    #[serde(default)]
    prometheus: RawPrometheus,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    log: RawLog,
    window: Option<Spanned<crate::window::RawWindow>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCluster {
    kubeconfig: Option<String>,
    context: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSsh {
    user: Option<String>,
    port: Option<u16>,
    config_file: Option<String>,
    identity_file: Option<String>,
    jump_host: Option<String>,
    known_hosts: Option<Spanned<String>>,
    known_hosts_file: Option<String>,
    address: Option<Spanned<String>>,
    address_template: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSlack {
    channel: Spanned<String>,
    token_env: Option<Spanned<String>>,
    webhook_url_env: Option<Spanned<String>>,
    /// Rejected with a hint: tokens never live in files.
    token: Option<Spanned<String>>,
    api_url: Option<String>,
    report_url: Option<String>,
    app_token_env: Option<Spanned<String>>,
    operators: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPrometheus {
    url: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    pushgateway: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawState {
    dir: Option<String>,
    keep_runs: Option<Spanned<i64>>,
    namespace: Option<Spanned<String>>,
}

/// Where the lock and the run copies live unless `state.namespace` says otherwise: a namespace
/// of rollgate's own, so its Role grants writes to nothing else (kube-system holds cluster
/// configuration: kube-proxy's, CoreDNS's, kubeadm's ConfigMaps).
pub const DEFAULT_STATE_NAMESPACE: &str = "rollgate-system";

/// Whether `name` is a valid namespace name (an RFC 1123 label).
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLog {
    format: Option<Spanned<String>>,
}

/// Expands a leading `~/` with $HOME.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("rollgate");
    }
    expand_home("~/.local/state/rollgate")
}

impl Config {
    /// Loads the config file (if any) and applies overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, SourceErrors> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    SourceErrors(vec![SourceError {
                        file: path.to_path_buf(),
                        line: 0,
                        column: 0,
                        key: String::new(),
                        message: format!("cannot read the config file: {e}"),
                        hint: Some("see config.example.toml for a complete example".into()),
                    }])
                })?;
                Self::parse(path, &text)?
            }
            None => Self::parse(Path::new("(defaults)"), "")?,
        };
        config.source = path.map(Path::to_path_buf);
        if let Some(k) = &overrides.kubeconfig {
            config.kubeconfig = Some(k.clone());
        }
        if let Some(c) = &overrides.context {
            config.context = Some(c.clone());
        }
        if let Some(d) = &overrides.state_dir {
            config.state_dir = d.clone();
        }
        if let Some(f) = overrides.log_format {
            config.log_format = Some(f);
        }
        if let Some(s) = &overrides.ssh_config {
            config.ssh.config_file = Some(s.clone());
        }
        Ok(config)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, SourceErrors> {
        let src = Source::new(path, text);
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| SourceErrors(vec![src.from_toml(&e)]))?;
        let mut errors = Vec::new();
        let mut err = |span: std::ops::Range<usize>, msg: String, hint: String| {
            errors.push(src.error_at(Some(span), msg, Some(hint)))
        };

        let known_hosts = match raw
            .ssh
            .known_hosts
            .as_ref()
            .map(|k| (k.get_ref().as_str(), k.span()))
        {
            None | Some(("strict", _)) => KnownHostsPolicy::Strict,
            Some(("accept-new", _)) => KnownHostsPolicy::AcceptNew,
            Some((other, span)) => {
                err(
                    span,
                    format!("unknown known-hosts policy {other:?}"),
                    "use \"strict\" (default) or \"accept-new\"".into(),
                );
                KnownHostsPolicy::Strict
            }
        };
        let address = match (
            raw.ssh
                .address
                .as_ref()
                .map(|a| (a.get_ref().as_str(), a.span())),
            &raw.ssh.address_template,
        ) {
            (None | Some(("internal-ip", _)), None) => AddressSource::InternalIp,
            (Some(("hostname", _)), None) => AddressSource::Hostname,
            (None | Some(("template", _)), Some(t)) if t.get_ref().contains("{name}") => {
                AddressSource::Template(t.get_ref().clone())
            }
            (_, Some(t)) if !t.get_ref().contains("{name}") => {
                err(
                    t.span(),
                    "the address template does not contain {name}".into(),
                    "e.g. address-template = \"{name}.nodes.example.com\"".into(),
                );
                AddressSource::InternalIp
            }
            (Some(("template", span)), None) => {
                err(
                    span,
                    "address = \"template\" needs `address-template`".into(),
                    "e.g. address-template = \"{name}.nodes.example.com\"".into(),
                );
                AddressSource::InternalIp
            }
            (None, Some(_)) => AddressSource::InternalIp,
            (Some((other, span)), _) => {
                let hint = match closest(other, &["internal-ip", "hostname", "template"]) {
                    Some(best) => format!("did you mean \"{best}\"?"),
                    None => "use \"internal-ip\" (default), \"hostname\" or \"template\"".into(),
                };
                err(span, format!("unknown address source {other:?}"), hint);
                AddressSource::InternalIp
            }
        };
        let connect_timeout = match &raw.ssh.connect_timeout {
            None => Duration::from_secs(10),
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(600) => d,
                Ok(_) => {
                    err(
                        t.span(),
                        format!("connect-timeout {:?} is out of range", t.get_ref()),
                        "use a value between 1s and 10m".into(),
                    );
                    Duration::from_secs(10)
                }
                Err(e) => {
                    err(
                        t.span(),
                        format!("{:?} is not a duration: {e}", t.get_ref()),
                        "write durations like \"10s\"".into(),
                    );
                    Duration::from_secs(10)
                }
            },
        };
        let slack = raw.slack.map(|s| {
            if let Some(t) = &s.token {
                err(t.span(), "Slack tokens are never written in the config file".into(), "put the token in an environment variable and name it: token-env = \"ROLLGATE_SLACK_TOKEN\"".into());
            }
            if s.token_env.is_none() && s.webhook_url_env.is_none() {
                err(s.channel.span(), "Slack needs `token-env` (a bot token) or `webhook-url-env` (an incoming webhook)".into(), "e.g. token-env = \"ROLLGATE_SLACK_TOKEN\"".into());
            }
            let control = notify::slack_control(&s, &mut err);
            SlackConfig {
                control,
                channel: s.channel.into_inner(),
                token_env: s.token_env.map(|t| t.into_inner()),
                webhook_url_env: s.webhook_url_env.map(|w| w.into_inner()),
                api_url: s.api_url.unwrap_or_else(|| SLACK_API_URL.into()),
                report_url: s.report_url,
            }
        });
        let notify = notify::targets(raw.notify, &mut err);
        if let Some(url) = &raw.prometheus.url
            && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
        {
            err(
                url.span(),
                format!("{:?} is not an http(s) URL", url.get_ref()),
                "e.g. url = \"http://prometheus.monitoring:9090\"".into(),
            );
        }
        let metrics_listen = match &raw.metrics.listen {
            None => "127.0.0.1:9797".to_owned(),
            Some(l) if l.get_ref().parse::<std::net::SocketAddr>().is_ok() => l.get_ref().clone(),
            Some(l) => {
                err(
                    l.span(),
                    format!("{:?} is not an address:port", l.get_ref()),
                    "e.g. listen = \"127.0.0.1:9797\"".into(),
                );
                "127.0.0.1:9797".to_owned()
            }
        };
        let keep_runs = match &raw.state.keep_runs {
            None => 50,
            Some(k) if (1..=10_000).contains(k.get_ref()) => *k.get_ref() as usize,
            Some(k) => {
                err(
                    k.span(),
                    format!("keep-runs = {} is out of range", k.get_ref()),
                    "keep between 1 and 10000 runs' copies in the cluster (default 50)".into(),
                );
                50
            }
        };
        let state_namespace = match raw.state.namespace {
            None => DEFAULT_STATE_NAMESPACE.to_owned(),
            Some(n) if valid_namespace(n.get_ref()) => n.into_inner(),
            Some(n) => {
                let hint = "lower-case letters, digits and '-', at most 63 characters";
                err(
                    n.span(),
                    format!("{:?} is not a namespace name", n.get_ref()),
                    hint.into(),
                );
                DEFAULT_STATE_NAMESPACE.to_owned()
            }
        };
        let pushgateway = raw.metrics.pushgateway.map(|u| {
            if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://")) {
                err(
                    u.span(),
                    format!("{:?} is not an http(s) URL", u.get_ref()),
                    "e.g. pushgateway = \"http://pushgateway.monitoring:9091\"".into(),
                );
            }
            u.into_inner()
        });
        let log_format = match raw
            .log
            .format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None => None,
            Some(("text", _)) => Some(LogFormat::Text),
            Some(("json", _)) => Some(LogFormat::Json),
            Some((other, span)) => {
                err(
                    span,
                    format!("unknown log format {other:?}"),
                    "use \"text\" or \"json\"".into(),
                );
                None
            }
        };
        let window = raw.window.and_then(|w| {
            let whole = w.span();
            w.into_inner()
                .validate(whole)
                .map_err(|problems| {
                    for (span, message, hint) in problems {
                        err(span, message, hint);
                    }
                })
                .ok()
        });
        if !errors.is_empty() {
            return Err(SourceErrors(errors));
        }
        Ok(Config {
            source: Some(path.to_path_buf()),
            kubeconfig: raw.cluster.kubeconfig.as_deref().map(expand_home),
            context: raw.cluster.context,
            ssh: SshConfig {
                user: raw.ssh.user,
                port: raw.ssh.port,
                config_file: raw.ssh.config_file.as_deref().map(expand_home),
                identity_file: raw.ssh.identity_file.as_deref().map(expand_home),
                jump_host: raw.ssh.jump_host,
                known_hosts,
                known_hosts_file: raw.ssh.known_hosts_file.as_deref().map(expand_home),
                address,
                connect_timeout,
            },
            slack,
            notify,
            prometheus_url: raw.prometheus.url.map(|u| u.into_inner()),
            metrics_listen,
            pushgateway,
            keep_runs,
            state_namespace,
            state_dir: raw
                .state
                .dir
                .as_deref()
                .map(expand_home)
                .unwrap_or_else(default_state_dir),
            log_format,
            window,
        })
    }
}

impl Config {
    /// Registers the secrets the config holds ([`crate::redact`]): credentials in the
    /// Prometheus and Pushgateway URLs. (Tokens and webhook URLs are read from the environment
    /// by [`crate::notify`], which registers them.)
    pub fn register_secrets(&self) {
        for url in [&self.prometheus_url, &self.pushgateway]
            .into_iter()
            .flatten()
        {
            crate::redact::register(crate::redact::url_secrets(url, false));
        }
    }
}

#[cfg(test)]
mod tests;
