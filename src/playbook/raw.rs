//! The playbook file as written (serde mirror: kebab-case keys, unknown keys rejected) and its
//! conversion into the validated domain types. Semantic checks collect every problem.

use super::*;
use crate::diagnostics::{Source, SourceError, SourceErrors, closest};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlaybook {
    name: Spanned<String>,
    description: Option<String>,
    target_kubelet_version: Option<Spanned<String>>,
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
    env: BTreeMap<String, String>,
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

    fn phases(&mut self, raw: Vec<Spanned<RawPhase>>) -> Vec<Phase> {
        if raw.is_empty() {
            self.errors.push(SourceError {
                file: self.src.path.to_path_buf(),
                line: 0,
                column: 0,
                key: "phase".into(),
                message: "the playbook has no phases".into(),
                hint: Some("add at least one:\n  [[phase]]\n  name = \"workers\"\n  selector = \"!node-role.kubernetes.io/control-plane\"".into()),
            });
        }
        let mut phases = Vec::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut seen_nodes: HashMap<String, String> = HashMap::new();
        let mut seen_selectors: HashMap<String, String> = HashMap::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let whole = spanned.span();
            let p = spanned.into_inner();
            let key = format!("phase[{}]", i + 1);
            let name = p.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    "the phase name is empty",
                    None,
                );
            } else if let Some(first) = seen_names.insert(name.clone(), i + 1) {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    format!("phase name {name:?} is used twice (also phase[{first}])"),
                    "give each phase its own name".to_owned(),
                );
            }
            let selection = match (&p.selector, &p.nodes) {
                (Some(_), Some(n)) => {
                    self.err_key(
                        n.span(),
                        &format!("{key}.nodes"),
                        "a phase selects nodes by `selector` or by `nodes`, not both",
                        "keep one of them".to_owned(),
                    );
                    None
                }
                (None, None) => {
                    self.err_key(
                        whole.clone(),
                        &key,
                        format!("phase {name:?} selects no nodes"),
                        "add `selector = \"role=worker\"` or `nodes = [\"node-1\"]`".to_owned(),
                    );
                    None
                }
                (Some(sel), None) => {
                    if let Some(other) =
                        seen_selectors.insert(sel.get_ref().trim().to_owned(), name.clone())
                    {
                        self.err_key(
                            sel.span(),
                            &format!("{key}.selector"),
                            format!("phases {other:?} and {name:?} use the same selector"),
                            "a node is upgraded by one phase only: make the selectors disjoint"
                                .to_owned(),
                        );
                    }
                    self.selector(sel).map(NodeSelection::Selector)
                }
                (None, Some(nodes)) => {
                    if nodes.get_ref().is_empty() {
                        self.err_key(
                            nodes.span(),
                            &format!("{key}.nodes"),
                            format!("phase {name:?} has an empty node list"),
                            "list node names, or use `selector`".to_owned(),
                        );
                    }
                    for node in nodes.get_ref() {
                        if let Some(other) = seen_nodes.insert(node.clone(), name.clone()) {
                            let msg = if other == name {
                                format!("node {node:?} is listed twice in phase {name:?}")
                            } else {
                                format!(
                                    "node {node:?} is selected by phases {other:?} and {name:?}"
                                )
                            };
                            self.err_key(
                                nodes.span(),
                                &format!("{key}.nodes"),
                                msg,
                                "a node is upgraded once: keep it in one phase".to_owned(),
                            );
                        }
                    }
                    Some(NodeSelection::Names(nodes.get_ref().clone()))
                }
            };
            let concurrency = match &p.concurrency {
                None => 1,
                Some(c) if *c.get_ref() < 1 => {
                    self.err_key(
                        c.span(),
                        &format!("{key}.concurrency"),
                        format!("concurrency must be at least 1, not {}", c.get_ref()),
                        "1 upgrades one node at a time".to_owned(),
                    );
                    1
                }
                Some(c) if *c.get_ref() > 1000 => {
                    self.err_key(
                        c.span(),
                        &format!("{key}.concurrency"),
                        format!("concurrency {} is out of range", c.get_ref()),
                        "use a value between 1 and 1000".to_owned(),
                    );
                    1
                }
                Some(c) => *c.get_ref() as usize,
            };
            let order = match &p.order {
                None => Ordering::AsListed,
                Some(o) => match o.get_ref().as_str() {
                    "as-listed" => Ordering::AsListed,
                    "name" => Ordering::ByName,
                    other => match other.strip_prefix("label:") {
                        Some(label) if !label.trim().is_empty() => {
                            Ordering::ByLabel(label.trim().to_owned())
                        }
                        _ => {
                            self.err_key(o.span(), &format!("{key}.order"), format!("unknown order {other:?}"), "use \"as-listed\", \"name\" or \"label:KEY\" (e.g. \"label:topology.kubernetes.io/zone\" for zone by zone)".to_owned());
                            Ordering::AsListed
                        }
                    },
                },
            };
            if let Some(selection) = selection {
                phases.push(Phase {
                    name,
                    selection,
                    concurrency,
                    order,
                    failure_budget: p.failure_budget.unwrap_or(0),
                });
            }
        }
        phases
    }

    fn drain(&mut self, raw: RawDrain) -> DrainOptions {
        let eviction_concurrency = match raw.eviction_concurrency {
            None => 16,
            Some(c) if (1..=256).contains(c.get_ref()) => *c.get_ref() as usize,
            Some(c) => {
                self.err(
                    c.span(),
                    format!("eviction-concurrency {} is out of range", c.get_ref()),
                    "use a value between 1 and 256".to_owned(),
                );
                16
            }
        };
        DrainOptions {
            timeout: self.duration(
                raw.timeout,
                Duration::from_secs(300),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            grace_period: raw.grace_period.map(|g| {
                self.duration(
                    Some(g),
                    Duration::ZERO,
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )
            }),
            delete_emptydir_data: raw.delete_emptydir_data.unwrap_or(false),
            ignore_daemonsets: raw.ignore_daemonsets.unwrap_or(true),
            force: raw.force.unwrap_or(false),
            pod_selector: raw.pod_selector.as_ref().and_then(|s| self.selector(s)),
            on_pdb_timeout: self.choice(
                raw.on_pdb_timeout,
                PdbTimeoutPolicy::Fail,
                &[
                    ("fail", PdbTimeoutPolicy::Fail),
                    ("disable-eviction", PdbTimeoutPolicy::DisableEviction),
                ],
            ),
            eviction_concurrency,
        }
    }

    fn command(&mut self, raw: Spanned<RawCommand>) -> RemoteCommand {
        let c = raw.into_inner();
        if c.run.get_ref().trim().is_empty() {
            self.err(
                c.run.span(),
                "the remote command is empty",
                "e.g. run = \"sudo chef-client -o 'role[k8s-node]'\"".to_owned(),
            );
        }
        for key in c.env.keys() {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                || key.starts_with(|ch: char| ch.is_ascii_digit())
            {
                self.errors.push(self.src.error_key(
                    Some(c.run.span()),
                    &format!("command.env.{key}"),
                    format!("{key:?} is not a valid environment variable name"),
                    Some("use letters, digits and _".into()),
                ));
            }
        }
        RemoteCommand {
            run: c.run.into_inner(),
            user: c.user,
            timeout: self.duration(
                c.timeout,
                Duration::from_secs(1800),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            env: c.env,
            safe_to_rerun: c.safe_to_rerun,
            sudo: c.sudo,
        }
    }

    fn probes(&mut self, raw: Vec<Spanned<RawProbe>>) -> Vec<Probe> {
        let mut probes = Vec::new();
        let mut names = BTreeSet::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let p = spanned.into_inner();
            let key = format!("probe[{}]", i + 1);
            let name = p.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    "the probe name is empty",
                    None,
                );
            } else if !names.insert(name.clone()) {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    format!("probe name {name:?} is used twice"),
                    "give each probe its own name: gates refer to probes by name".to_owned(),
                );
            }
            let kind_span = p.kind.span();
            let require = |v: &mut Self, present: bool, field: &str, example: &str| {
                if !present {
                    v.err_key(
                        kind_span.clone(),
                        &format!("{key}.{field}"),
                        format!("a {} probe needs `{field}`", p.kind.get_ref()),
                        format!("e.g. {field} = {example}"),
                    );
                }
            };
            let kind = match p.kind.get_ref().as_str() {
                "command" => {
                    require(
                        self,
                        p.command.as_ref().is_some_and(|c| !c.get_ref().is_empty()),
                        "command",
                        "[\"./probes/create-vm.sh\", \"--quick\"]",
                    );
                    Some(ProbeKind::Command {
                        argv: p.command.map(|c| c.into_inner()).unwrap_or_default(),
                    })
                }
                "http" => {
                    require(
                        self,
                        p.url.is_some(),
                        "url",
                        "\"https://api.example.com/healthz\"",
                    );
                    if let Some(url) = &p.url
                        && !(url.get_ref().starts_with("http://")
                            || url.get_ref().starts_with("https://"))
                    {
                        self.err_key(
                            url.span(),
                            &format!("{key}.url"),
                            format!("{:?} is not an http(s) URL", url.get_ref()),
                            "start it with http:// or https://".to_owned(),
                        );
                    }
                    Some(ProbeKind::Http {
                        url: p.url.map(|u| u.into_inner()).unwrap_or_default(),
                        expect_status: p.expect_status.unwrap_or(200),
                        body_contains: p.body_contains,
                    })
                }
                "job" => {
                    require(
                        self,
                        p.manifest.is_some(),
                        "manifest",
                        "\"probes/smoke-job.yaml\"",
                    );
                    Some(ProbeKind::Job {
                        manifest: p
                            .manifest
                            .map(|m| PathBuf::from(m.into_inner()))
                            .unwrap_or_default(),
                        namespace: p.namespace.unwrap_or_else(|| "default".into()),
                    })
                }
                "prometheus" => {
                    if p.query.is_some() == p.alerts_matching.is_some() {
                        self.err_key(
                            kind_span.clone(),
                            &key,
                            "a prometheus probe needs exactly one of `query` or `alerts-matching`",
                            "e.g. alerts-matching = \"^(KubePodCrashLooping|TargetDown)$\""
                                .to_owned(),
                        );
                    }
                    if let Some(pattern) = &p.alerts_matching
                        && pattern.get_ref().is_empty()
                    {
                        self.err_key(
                            pattern.span(),
                            &format!("{key}.alerts-matching"),
                            "the alert pattern is empty",
                            "use \".*\" for every alert".to_owned(),
                        );
                    }
                    if let (Some(min), Some(max)) = (p.min, p.max)
                        && min > max
                    {
                        self.err_key(
                            kind_span.clone(),
                            &format!("{key}.min"),
                            format!("min {min} is above max {max}"),
                            None,
                        );
                    }
                    Some(ProbeKind::Prometheus {
                        query: p.query.map(|q| q.into_inner()),
                        min: p.min,
                        max: p.max,
                        alerts_matching: p.alerts_matching.map(|a| a.into_inner()),
                    })
                }
                other => {
                    let hint = match closest(other, &["command", "http", "job", "prometheus"]) {
                        Some(best) => format!("did you mean \"{best}\"?"),
                        None => "use one of: command, http, job, prometheus".into(),
                    };
                    self.err_key(
                        kind_span.clone(),
                        &format!("{key}.kind"),
                        format!("unknown probe kind {other:?}"),
                        hint,
                    );
                    None
                }
            };
            let when_options = [
                ("before-run", ProbeWhen::BeforeRun),
                ("after-drain", ProbeWhen::AfterDrain),
                ("after-command", ProbeWhen::AfterCommand),
                ("after-uncordon", ProbeWhen::AfterUncordon),
                ("after-wave", ProbeWhen::AfterWave),
                ("periodic", ProbeWhen::Periodic),
            ];
            let mut when = Vec::new();
            for w in p.when {
                let span = w.span();
                let before = self.errors.len();
                let value = self.choice(Some(w), ProbeWhen::BeforeRun, &when_options);
                if self.errors.len() == before {
                    when.push(value);
                } else if let Some(e) = self.errors.last_mut() {
                    e.key = format!("{key}.when");
                    let _ = span;
                }
            }
            if when.is_empty() {
                when.push(ProbeWhen::AfterUncordon);
            }
            let interval = p.interval.map(|i| {
                self.duration(
                    Some(i),
                    Duration::from_secs(60),
                    Duration::from_secs(1),
                    MAX_WAIT,
                )
            });
            if when.contains(&ProbeWhen::Periodic) && interval.is_none() {
                self.err_key(
                    kind_span.clone(),
                    &format!("{key}.interval"),
                    format!("probe {name:?} runs periodically but has no interval"),
                    "add e.g. interval = \"1m\"".to_owned(),
                );
            }
            let timeout = self.duration(
                p.timeout,
                Duration::from_secs(60),
                Duration::from_secs(1),
                MAX_WAIT,
            );
            if let Some(kind) = kind {
                probes.push(Probe {
                    name,
                    kind,
                    timeout,
                    retries: p.retries.unwrap_or(0),
                    when,
                    interval,
                });
            }
        }
        probes
    }

    fn gates(&mut self, raw: Vec<Spanned<RawGate>>, probes: &[Probe]) -> Vec<Gate> {
        let decisions = [
            ("abort", Decision::Abort),
            ("pause", Decision::Pause),
            ("warn", Decision::Warn),
        ];
        let mut gates = Vec::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let g = spanned.into_inner();
            let key = format!("gate[{}]", i + 1);
            let s = g.signal.get_ref().trim();
            let signal = match s {
                "pods" => Some(Signal::Pods),
                "pings" => Some(Signal::Pings),
                "nodes" => Some(Signal::Nodes),
                _ => match s.strip_prefix("probe:") {
                    Some(name) if probes.iter().any(|p| p.name == name) => {
                        Some(Signal::Probe(name.to_owned()))
                    }
                    Some(name) => {
                        let names: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
                        let hint = match closest(name, &names) {
                            Some(best) => format!("did you mean \"probe:{best}\"?"),
                            None if names.is_empty() => "define it in a [[probe]] table".into(),
                            None => format!("defined probes: {}", names.join(", ")),
                        };
                        self.err_key(
                            g.signal.span(),
                            &format!("{key}.signal"),
                            format!("gate refers to probe {name:?}, which is not defined"),
                            hint,
                        );
                        None
                    }
                    None => {
                        let hint = match closest(s, &["pods", "pings", "nodes"]) {
                            Some(best) => format!("did you mean \"{best}\"?"),
                            None => "use \"pods\", \"pings\", \"nodes\" or \"probe:NAME\"".into(),
                        };
                        self.err_key(
                            g.signal.span(),
                            &format!("{key}.signal"),
                            format!("unknown gate signal {s:?}"),
                            hint,
                        );
                        None
                    }
                },
            };
            let on_fail = self.choice(g.on_fail, Decision::Abort, &decisions);
            let on_inconclusive = self.choice(g.on_inconclusive, Decision::Pause, &decisions);
            if let Some(signal) = signal {
                gates.push(Gate {
                    signal,
                    on_fail,
                    failure_limit: g.failure_limit.unwrap_or(1).max(1),
                    consecutive_errors: g.consecutive_errors.unwrap_or(3).max(1),
                    on_inconclusive,
                });
            }
        }
        gates
    }

    fn monitor(&mut self, raw: RawMonitor) -> MonitorOptions {
        let ping = raw.ping.map(|p| PingOptions {
            selector: self.selector(&p.selector).unwrap_or_default(),
            port: p.port,
            interval: self.duration(
                p.interval,
                Duration::from_secs(10),
                Duration::from_millis(100),
                Duration::from_secs(3600),
            ),
            misses: p.misses.unwrap_or(3).max(1),
        });
        MonitorOptions {
            namespaces: raw.namespaces,
            pod_selector: raw.pod_selector.as_ref().and_then(|s| self.selector(s)),
            node_selector: raw.node_selector.as_ref().and_then(|s| self.selector(s)),
            not_ready_after: self.duration(
                raw.not_ready_after,
                Duration::from_secs(120),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            pending_after: self.duration(
                raw.pending_after,
                Duration::from_secs(300),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            blind_after: self.duration(
                raw.blind_after,
                super::DEFAULT_BLIND_AFTER,
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            ping,
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
