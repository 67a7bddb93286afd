//! The playbook: *what* to do. Which nodes, in what order and how many at once (phases and
//! waves), how to drain them, which remote command upgrades them, how to tell they are back,
//! and which probes and gates watch the run. Environment details live in [`crate::config`].
//!
//! `raw` holds the private serde mirror of the TOML file; [`load`] converts it into these
//! validated domain types, reporting every problem with file, line, key path and hint.

mod raw;

pub use raw::{load, parse, redacted_text};

pub use crate::vocab::{Decision, ProbeWhen};

use crate::diagnostics::{SourceError, SourceErrors};
use crate::selector::Selector;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long the monitor may be blind (a watch lost) before its signals count as inconclusive
/// (`monitor.blind-after`).
pub const DEFAULT_BLIND_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Playbook {
    pub name: String,
    pub description: Option<String>,
    /// The kubelet version every node must report after its remote command.
    pub target_kubelet_version: Option<String>,
    /// Leave out nodes already at the target kubelet version (`skip-upgraded`).
    pub skip_upgraded: bool,
    pub phases: Vec<Phase>,
    /// Nodes that may fail in the whole run before it stops; when absent only the phases'
    /// failure budgets apply (each defaults to 0: the first failure stops the run).
    pub max_failed_nodes: Option<u32>,
    pub drain: DrainOptions,
    pub command: RemoteCommand,
    pub ready: ReadyOptions,
    pub settle: SettleOptions,
    pub probes: Vec<Probe>,
    pub gates: Vec<Gate>,
    pub monitor: MonitorOptions,
    pub notify: NotifyOptions,
    /// When new nodes may start (None: any time).
    pub window: Option<crate::window::Window>,
    /// How long the whole run may take, from its start: after it no new node starts.
    pub deadline: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub selection: NodeSelection,
    /// Nodes of this phase out of service at once (at least 1): nodes in flight, and nodes that
    /// failed and stay cordoned (each keeps its slot for the rest of the run).
    pub concurrency: usize,
    pub order: Ordering,
    /// Nodes of this phase that may fail before the run stops.
    pub failure_budget: u32,
}

#[derive(Debug, Clone)]
pub enum NodeSelection {
    Selector(Selector),
    Names(Vec<String>),
}

/// Order of nodes inside a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordering {
    /// As listed in `nodes` (for a selector: by name).
    AsListed,
    ByName,
    /// Grouped by this label's value, one group (wave) finished before the next starts: zone by zone.
    ByLabel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbTimeoutPolicy {
    /// Fail the node, leaving it cordoned (the default).
    Fail,
    /// Delete the blocked pods instead of evicting them (`kubectl drain --disable-eviction`).
    DisableEviction,
    /// Give the node back without its command (uncordoned, rollgate's marks cleared) and go
    /// on: recorded as skipped, with the budgets and pods that held it, not as a failure.
    Skip,
}

/// kubectl-drain options; the same names and defaults where kubectl has them.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// One bound for the whole drain of a node.
    pub timeout: Duration,
    /// Overrides each pod's terminationGracePeriodSeconds when set.
    pub grace_period: Option<Duration>,
    pub delete_emptydir_data: bool,
    pub ignore_daemonsets: bool,
    /// Also evict pods that no controller manages (they will not come back).
    pub force: bool,
    /// Only pods matching this selector are drained.
    pub pod_selector: Option<Selector>,
    pub on_pdb_timeout: PdbTimeoutPolicy,
    /// Evictions in flight at once per node.
    pub eviction_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct RemoteCommand {
    /// Run by the remote user's shell, e.g. `sudo chef-client -o 'role[k8s-node]'`.
    pub run: String,
    /// Overrides the SSH user from the config.
    pub user: Option<String>,
    pub timeout: Duration,
    /// Extra environment for the command (node facts are always added as ROLLGATE_*). Not
    /// for secrets: these values are in the playbook (and on `ssh`'s command line); every
    /// record shows them redacted.
    pub env: BTreeMap<String, String>,
    /// `env-from-runner`: variables whose values come from rollgate's own environment.
    pub env_from_runner: Vec<RunnerVar>,
    /// Their values, read when a run starts ([`resolve_runner_env`]); sent to the node on the
    /// wrapper's standard input, never as an argument.
    pub secret_env: SecretEnv,
    /// Whether running the command twice on a node is harmless (used by resume).
    pub safe_to_rerun: bool,
    /// Run the command wrapper (and so the command and its timeout) as root through `sudo -n`.
    pub sudo: bool,
}

/// One `env-from-runner` entry: the variable and where the playbook names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerVar {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// Secret environment values for the remote command. Its `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Reads the `env-from-runner` variables from rollgate's environment into the playbook and
/// registers their values as secrets ([`crate::redact`]). A variable that is not set (or not
/// UTF-8) is an error naming the playbook's file, line and key: call before anything changes.
pub fn resolve_runner_env(
    playbook: &mut Playbook,
    file: &std::path::Path,
) -> Result<(), SourceErrors> {
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for var in &playbook.command.env_from_runner {
        match std::env::var(&var.name) {
            Ok(value) => {
                values.insert(var.name.clone(), value);
            }
            Err(e) => errors.push(SourceError {
                file: file.to_path_buf(),
                line: var.line,
                column: var.column,
                key: "command.env-from-runner".into(),
                message: match e {
                    std::env::VarError::NotPresent => format!(
                        "{} is named in env-from-runner but is not set in rollgate's environment",
                        var.name
                    ),
                    std::env::VarError::NotUnicode(_) => {
                        format!("{} is set in rollgate's environment but is not UTF-8", var.name)
                    }
                },
                hint: Some(format!(
                    "export {} in the shell (or service unit) that starts rollgate, or remove it from env-from-runner; nothing was changed",
                    var.name
                )),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(SourceErrors(errors));
    }
    crate::redact::register(values.values());
    playbook.command.secret_env = SecretEnv(values);
    Ok(())
}

impl Playbook {
    /// Registers the secrets the playbook itself holds ([`crate::redact`]): the credentials in
    /// HTTP probe URLs and every HTTP probe header value. (`command.env` values are not: they
    /// are ordinary settings such as a node name, which scrubbing would erase from every
    /// record; they only ever reach the playbook's copy, which redacts them.)
    pub fn register_secrets(&self) {
        for p in &self.probes {
            if let ProbeKind::Http { url, headers, .. } = &p.kind {
                crate::redact::register(crate::redact::url_secrets(url, false));
                crate::redact::register(headers.values());
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadyOptions {
    pub timeout: Duration,
    /// The command reboots the node: wait for a new boot ID, then Ready.
    pub reboot: bool,
    /// How long the node must stay Ready on the same boot before it counts as back.
    pub stable_for: Duration,
}

#[derive(Debug, Clone)]
pub struct SettleOptions {
    /// Bound on waiting for evicted pods to have Ready replacements.
    pub timeout: Duration,
    /// Extra quiet time after the node is back, before the next node starts.
    pub soak: Duration,
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub kind: ProbeKind,
    pub timeout: Duration,
    pub retries: u32,
    pub when: Vec<ProbeWhen>,
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// A local executable; node facts arrive as ROLLGATE_* environment variables.
    Command { argv: Vec<String> },
    Http {
        url: String,
        /// Sent with each request; every value is treated as a secret in records.
        headers: BTreeMap<String, String>,
        expect_status: u16,
        body_contains: Option<String>,
    },
    Job {
        manifest: PathBuf,
        namespace: String,
    },
    /// A PromQL expression that must return no series (or values inside `min`/`max`), or no
    /// firing alerts whose name matches `alerts_matching`.
    Prometheus {
        query: Option<String>,
        min: Option<f64>,
        max: Option<f64>,
        alerts_matching: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Pod health from the monitor (crash loops, restarts, not Ready, Pending).
    Pods,
    /// Reachability of selected pods.
    Pings,
    /// Nodes other than the ones being upgraded turning NotReady.
    Nodes,
    Probe(String),
}

#[derive(Debug, Clone)]
pub struct Gate {
    pub signal: Signal,
    pub on_fail: Decision,
    pub failure_limit: u32,
    pub consecutive_errors: u32,
    pub on_inconclusive: Decision,
}

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub pod_selector: Option<Selector>,
    /// Nodes watched for turning NotReady (default: all).
    pub node_selector: Option<Selector>,
    pub not_ready_after: Duration,
    pub pending_after: Duration,
    /// How long a watch may stay lost before the pods/nodes signals turn inconclusive.
    pub blind_after: Duration,
    pub ping: Option<PingOptions>,
}

impl Default for MonitorOptions {
    /// What a playbook without a `[monitor]` table watches: everything, with the default
    /// thresholds (`rollgate monitor` without a playbook).
    fn default() -> Self {
        raw::default_monitor()
    }
}

#[derive(Debug, Clone)]
pub struct PingOptions {
    pub selector: Selector,
    /// TCP port to connect to; ICMP when absent.
    pub port: Option<u16>,
    pub interval: Duration,
    pub misses: u32,
}

#[derive(Debug, Clone, Default)]
pub struct NotifyOptions {
    /// Post to Slack when the config has Slack settings.
    pub slack: bool,
    /// Added to abort/pause messages, e.g. `<!subteam^S123>`.
    pub mention: Option<String>,
}

#[cfg(test)]
mod tests;
