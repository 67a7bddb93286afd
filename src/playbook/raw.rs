//! The playbook file as written (serde mirror: kebab-case keys, unknown keys rejected) and its
//! conversion into the validated domain types. Semantic checks collect every problem. The
//! checks of the node steps (phases, drain, command) are in `raw/nodes.rs`, those of what
//! watches the run (probes, gates, monitor) in `raw/watch.rs`.

use super::*;
use crate::diagnostics::{Source, SourceError, SourceErrors, closest};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

mod nodes;
mod watch;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlaybook {
    name: Spanned<String>,
    description: Option<String>,
    target_kubelet_version: Option<Spanned<String>>,
    skip_upgraded: Option<Spanned<bool>>,
    max_failed_nodes: Option<u32>,
    #[serde(default)]
    phase: Vec<Spanned<RawPhase>>,
    #[serde(default)]
    drain: RawDrain,
    command: Option<Spanned<RawCommand>>,
    #[serde(default)]
    ready: RawReady,
    #[serde(default)]
    settle: RawSettle,
    #[serde(default)]
    probe: Vec<Spanned<RawProbe>>,
    #[serde(default)]
    gate: Vec<Spanned<RawGate>>,
    #[serde(default)]
    monitor: RawMonitor,
    #[serde(default)]
    notify: RawNotify,
    window: Option<Spanned<crate::window::RawWindow>>,
    deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPhase {
    name: Spanned<String>,
    selector: Option<Spanned<String>>,
    nodes: Option<Spanned<Vec<String>>>,
    concurrency: Option<Spanned<i64>>,
    order: Option<Spanned<String>>,
    failure_budget: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDrain {
    timeout: Option<Spanned<String>>,
    grace_period: Option<Spanned<String>>,
    delete_emptydir_data: Option<bool>,
    ignore_daemonsets: Option<bool>,
    force: Option<bool>,
    pod_selector: Option<Spanned<String>>,
    on_pdb_timeout: Option<Spanned<String>>,
    eviction_concurrency: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCommand {
    run: Spanned<String>,
    user: Option<String>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    env_from_runner: Vec<Spanned<String>>,
    #[serde(default)]
    safe_to_rerun: bool,
    #[serde(default)]
    sudo: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReady {
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    reboot: bool,
    stable_for: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSettle {
    timeout: Option<Spanned<String>>,
    soak: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProbe {
    name: Spanned<String>,
    kind: Spanned<String>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    #[serde(default)]
    when: Vec<Spanned<String>>,
    interval: Option<Spanned<String>>,
    // kind = "command"
    command: Option<Spanned<Vec<String>>>,
    // kind = "http"
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    expect_status: Option<u16>,
    body_contains: Option<String>,
    // kind = "job"
    manifest: Option<Spanned<String>>,
    namespace: Option<String>,
    // kind = "prometheus"
    query: Option<Spanned<String>>,
    min: Option<f64>,
    max: Option<f64>,
    alerts_matching: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGate {
    signal: Spanned<String>,
    on_fail: Option<Spanned<String>>,
    failure_limit: Option<u32>,
    consecutive_errors: Option<u32>,
    on_inconclusive: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMonitor {
    #[serde(default)]
    namespaces: Vec<String>,
    pod_selector: Option<Spanned<String>>,
    node_selector: Option<Spanned<String>>,
    not_ready_after: Option<Spanned<String>>,
    pending_after: Option<Spanned<String>>,
    blind_after: Option<Spanned<String>>,
    ping: Option<RawPing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPing {
    selector: Spanned<String>,
    port: Option<u16>,
    interval: Option<Spanned<String>>,
    misses: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNotify {
    slack: Option<bool>,
    mention: Option<String>,
}

/// Reads and validates a playbook file.
pub fn load(path: &Path) -> Result<Playbook, SourceErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SourceErrors(vec![SourceError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the playbook: {e}"),
            hint: Some("pass the path of a playbook TOML file, e.g. playbooks/demo.toml".into()),
        }])
    })?;
    parse(path, &text)
}

/// Validates a playbook from its text (`path` is used in messages).
pub fn parse(path: &Path, text: &str) -> Result<Playbook, SourceErrors> {
    let src = Source::new(path, text);
    let raw: RawPlaybook =
        toml::from_str(text).map_err(|e| SourceErrors(vec![src.from_toml(&e)]))?;
    let mut v = Validator {
        src: &src,
        errors: Vec::new(),
    };
    let playbook = v.playbook(raw);
    if v.errors.is_empty() {
        Ok(playbook)
    } else {
        Err(SourceErrors(v.errors))
    }
}

/// The playbook's text as records keep it (the copy beside the journal and in the cluster):
/// `command.env` values and HTTP probe header values become `"REDACTED"`, credentials in
/// probe URLs are redacted ([`crate::redact::url`]); everything else (comments, layout) is
/// kept as written. Err when the text does not parse.
pub fn redacted_text(path: &Path, text: &str) -> Result<String, SourceErrors> {
    let src = Source::new(path, text);
    let raw: RawPlaybook =
        toml::from_str(text).map_err(|e| SourceErrors(vec![src.from_toml(&e)]))?;
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    if let Some(c) = &raw.command {
        for v in c.get_ref().env.values() {
            edits.push((v.span(), quoted(crate::redact::REDACTED)));
        }
    }
    for p in &raw.probe {
        let p = p.get_ref();
        for v in p.headers.values() {
            edits.push((v.span(), quoted(crate::redact::REDACTED)));
        }
        if let Some(u) = &p.url {
            let shown = crate::redact::url(u.get_ref());
            if &shown != u.get_ref() {
                edits.push((u.span(), quoted(&shown)));
            }
        }
    }
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut out = text.to_owned();
    for (span, with) in edits {
        out.replace_range(span, &with);
    }
    Ok(out)
}

/// The monitor options of a playbook without a `[monitor]` table.
pub fn default_monitor() -> MonitorOptions {
    let src = Source::new(Path::new("(defaults)"), "");
    Validator {
        src: &src,
        errors: Vec::new(),
    }
    .monitor(RawMonitor::default())
}

struct Validator<'a> {
    src: &'a Source<'a>,
    errors: Vec<SourceError>,
}

/// Bounds for durations, so a typo like `timeout = "5000h"` is caught.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Validator<'_> {
    fn err(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.errors
            .push(self.src.error_at(Some(span), message, hint.into()));
    }

    fn err_key(
        &mut self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.errors
            .push(self.src.error_key(Some(span), key, message, hint.into()));
    }

    fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let span = value.span();
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d < min || d > max => {
                self.err(
                    span,
                    format!("duration {:?} is out of range", value.get_ref()),
                    format!(
                        "use a value between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    span,
                    format!("{:?} is not a duration: {e}", value.get_ref()),
                    "write durations like \"90s\", \"5m\", \"1h 30m\"".to_owned(),
                );
                default
            }
        }
    }

    fn selector(&mut self, value: &Spanned<String>) -> Option<Selector> {
        match Selector::parse(value.get_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(value.span(), e.to_string(), "Kubernetes selector syntax: `key`, `!key`, `key=value`, `key!=value`, `key in (a,b)`, joined by commas".to_owned());
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        value: Option<Spanned<String>>,
        default: T,
        options: &[(&'static str, T)],
    ) -> T {
        let Some(value) = value else { return default };
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == value.get_ref()) {
            return *t;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match closest(value.get_ref(), &names) {
            Some(best) => format!("did you mean \"{best}\"?"),
            None => format!("use one of: {}", names.join(", ")),
        };
        self.err(
            value.span(),
            format!("unknown value {:?}", value.get_ref()),
            hint,
        );
        default
    }

    fn playbook(&mut self, raw: RawPlaybook) -> Playbook {
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            self.err(
                raw.name.span(),
                "the playbook name is empty",
                "name it after what it does, e.g. \"k8s 1.36 upgrade\"".to_owned(),
            );
        }
        if let Some(skip) = &raw.skip_upgraded
            && *skip.get_ref()
            && raw.target_kubelet_version.is_none()
        {
            self.err(
                skip.span(),
                "skip-upgraded = true needs target-kubelet-version",
                "set target-kubelet-version (nodes at it are skipped), or remove skip-upgraded"
                    .to_owned(),
            );
        }
        if let Some(v) = &raw.target_kubelet_version
            && !is_version(v.get_ref())
        {
            self.err(
                v.span(),
                format!("{:?} is not a kubelet version", v.get_ref()),
                "write it as the node reports it, e.g. \"v1.36.3\"".to_owned(),
            );
        }
        let phases = self.phases(raw.phase);
        let drain = self.drain(raw.drain);
        let command = match raw.command {
            Some(c) => self.command(c),
            None => {
                self.errors.push(SourceError {
                    file: self.src.path.to_path_buf(),
                    line: 0,
                    column: 0,
                    key: "command".into(),
                    message: "the playbook has no [command] table".into(),
                    hint: Some("add the remote command that upgrades a node:\n  [command]\n  run = \"sudo chef-client\"".into()),
                });
                RemoteCommand {
                    run: String::new(),
                    user: None,
                    timeout: Duration::ZERO,
                    env: BTreeMap::new(),
                    env_from_runner: Vec::new(),
                    secret_env: SecretEnv::default(),
                    safe_to_rerun: false,
                    sudo: false,
                }
            }
        };
        let ready = ReadyOptions {
            timeout: self.duration(
                raw.ready.timeout,
                Duration::from_secs(600),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            reboot: raw.ready.reboot,
            stable_for: self.duration(
                raw.ready.stable_for,
                Duration::from_secs(5),
                Duration::ZERO,
                MAX_WAIT,
            ),
        };
        let settle = SettleOptions {
            timeout: self.duration(
                raw.settle.timeout,
                Duration::from_secs(300),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            soak: self.duration(raw.settle.soak, Duration::ZERO, Duration::ZERO, MAX_WAIT),
        };
        let probes = self.probes(raw.probe);
        let gates = self.gates(raw.gate, &probes);
        let monitor = self.monitor(raw.monitor);
        let window = raw.window.and_then(|w| {
            let whole = w.span();
            match w.into_inner().validate(whole) {
                Ok(w) => Some(w),
                Err(errors) => {
                    for (span, message, hint) in errors {
                        self.err(span, message, hint);
                    }
                    None
                }
            }
        });
        let deadline = raw.deadline.map(|d| {
            self.duration(
                Some(d),
                Duration::ZERO,
                Duration::from_secs(60),
                Duration::from_secs(7 * 24 * 3600),
            )
        });
        Playbook {
            name,
            description: raw.description,
            target_kubelet_version: raw.target_kubelet_version.map(|v| v.into_inner()),
            skip_upgraded: raw.skip_upgraded.is_some_and(|s| s.into_inner()),
            phases,
            max_failed_nodes: raw.max_failed_nodes,
            drain,
            command,
            ready,
            settle,
            probes,
            gates,
            monitor,
            notify: NotifyOptions {
                slack: raw.notify.slack.unwrap_or(true),
                mention: raw.notify.mention,
            },
            window,
            deadline,
        }
    }
}

fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let core = rest.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}
