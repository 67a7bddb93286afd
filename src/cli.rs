//! The command line (clap). Kept in the library so completions and tests can reach it.

use crate::config::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rollgate", version, about = "Upgrade the nodes of a Kubernetes cluster one by one, safely, with health gating",
          after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = concat!(
    "Examples:\n  rollgate check playbooks/k8s-upgrade.toml\n  rollgate plan playbooks/k8s-upgrade.toml --config prod.toml\n",
    "  rollgate run playbooks/k8s-upgrade.toml --config prod.toml --dry-run\n",
    "  rollgate run playbooks/k8s-upgrade.toml --config prod.toml --yes --log-format json\n\n",
    crate::exit_codes_help!()
);

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Config file (cluster, SSH, Slack, Prometheus, state dir). See config.example.toml.
    #[arg(long, global = true, env = "ROLLGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kubeconfig file (default: $KUBECONFIG, then the config file, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the config file's, then the current context).
    #[arg(long, global = true, env = "ROLLGATE_CONTEXT")]
    pub context: Option<String>,
    /// ssh_config file for the remote command (overrides `ssh.config-file`).
    #[arg(long, global = true, env = "ROLLGATE_SSH_CONFIG", value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Directory for run logs and state (overrides `state.dir`).
    #[arg(long, global = true, env = "ROLLGATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log format: text for a terminal, json for machines (default: text on a terminal).
    #[arg(long, global = true, env = "ROLLGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// `rollgate report -o`: report.html, report.md or both.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Html,
    Markdown,
    Both,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a playbook (and the config) offline; print a one-screen summary.
    #[command(
        after_help = "Examples:\n  rollgate check playbooks/demo.toml\n  rollgate check playbooks/k8s-upgrade.toml --config prod.toml\n\nExit codes: 0 valid, 2 invalid."
    )]
    Check {
        /// The playbook TOML file.
        playbook: PathBuf,
    },
    /// Resolve the playbook against the cluster and show the ordered waves; changes nothing.
    #[command(
        after_help = "Examples:\n  rollgate plan playbooks/k8s-upgrade.toml\n  rollgate plan playbooks/k8s-upgrade.toml -o json | jq '.phases[].waves'\n\nExit codes: 0 planned, 2 bad input, 3 cluster unreachable or plan does not fit."
    )]
    Plan {
        playbook: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        preflight: PreflightArgs,
    },
    /// Pre-flight: what would block or slow the run tonight (drain blockers, capacity, version
    /// skew, SSH reachability, ETA against the window and deadline). Exit 9 on a blocker.
    #[command(
        after_help = concat!("Examples:\n  rollgate preflight playbooks/k8s-upgrade.toml\n  rollgate preflight playbooks/k8s-upgrade.toml -o json --no-ssh-check\n\n", crate::exit_codes_help!())
    )]
    Preflight {
        playbook: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        preflight: PreflightArgs,
    },
    /// Run the rollout: cordon, drain, remote command, wait Ready, uncordon, settle; node by node.
    #[command(
        after_help = concat!("Examples:\n  rollgate run playbooks/k8s-upgrade.toml --dry-run\n  rollgate run playbooks/k8s-upgrade.toml --step\n  rollgate run playbooks/k8s-upgrade.toml --yes --log-format json\n\nCtrl-C once: finish the nodes in flight, start no new ones. Twice: stop now: the nodes in flight stay cordoned, and a remote command in flight goes on on its node (`rollgate resume` reattaches to it).\n\n", crate::exit_codes_help!())
    )]
    Run(RunArgs),
    /// Continue a paused run (by a gate or `rollgate pause`), or one that crashed, was killed or
    /// stopped (from its journal).
    #[command(
        after_help = concat!("Examples:\n  rollgate resume                      # the latest run in the state directory\n  rollgate resume 20261125-013000-ab12\n\nA resumed run exits like `rollgate run`; resuming a live paused run exits 0 once it goes on.\n", crate::exit_codes_help!())
    )]
    Resume {
        /// The run id (default: the latest run that started; dry runs are never the default).
        run: Option<String>,
        /// The remote command finished on this node although the journal cannot tell (repeatable).
        #[arg(long, value_name = "NODE")]
        command_done: Vec<String>,
        #[command(flatten)]
        schedule: ScheduleArgs,
        /// Pre-flight over the nodes left (a run from its journal; not for a live paused run).
        #[command(flatten)]
        preflight: PreflightArgs,
    },
    /// Pause a live run, from any machine with cluster access: no new node starts, nodes in
    /// flight finish; `rollgate resume` continues.
    #[command(
        after_help = "Examples:\n  rollgate pause --reason \"checking the message queue\"\n  rollgate pause 20261125-013000-ab12   # from another machine: name the run\n\nExit codes: 0 paused (or already paused), 1 the run did not answer within 10 s, 2 no such live run, 3 cannot reach the cluster."
    )]
    Pause {
        /// The run id (default: this machine's latest run that started; dry runs are never the default).
        run: Option<String>,
        /// Why (recorded in the journal, the report and Slack, with who asked).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Abort a live run, from any machine with cluster access: no new node starts, nodes in
    /// flight stop at their next safe point and stay cordoned; the run exits 5.
    #[command(
        after_help = "Examples:\n  rollgate abort --reason \"VM creation broke\"\n  rollgate abort 20261125-013000-ab12\n\nExit codes: 0 aborting (or already), 1 the run did not answer within 10 s, 2 no such live run, 3 cannot reach the cluster."
    )]
    Abort {
        /// The run id (default: this machine's latest run that started).
        run: Option<String>,
        /// Why (recorded in the journal, the report, Slack and on the nodes it stops, with who asked).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List runs: this machine's and those copied into the cluster by any machine, newest first.
    #[command(
        after_help = "Examples:\n  rollgate runs                        # then `rollgate status RUN` or `rollgate resume RUN`\n  rollgate runs -o json\n\nExit codes: 0 listed, 2 bad config."
    )]
    Runs {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Show a run's state from its journal: each node's state, step, since when, last error.
    #[command(
        after_help = "Examples:\n  rollgate status                      # the latest run\n  rollgate status 20261125-013000-ab12 -o json\n\nExit codes: 0 shown, 2 no such run."
    )]
    Status {
        /// The run id (default: the latest run that started; dry runs are never the default).
        run: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Write a run's report from its journal: self-contained HTML (timeline) and a Markdown summary.
    #[command(
        after_help = "Examples:\n  rollgate report                      # the latest run, into its run directory\n  rollgate report 20261125-013000-ab12 --out /tmp/report -o html\n\nExit codes: 0 written, 1 cannot write, 2 no such run."
    )]
    Report {
        /// The run id (default: the latest run that started; dry runs are never the default).
        run: Option<String>,
        /// Directory to write into (default: the run's directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Which files to write.
        #[arg(short, long, value_enum, default_value = "both")]
        output: ReportFormat,
    },
    /// Watch cluster health without upgrading anything: unhealthy pods, pings, probes.
    #[command(
        after_help = "Examples:\n  rollgate monitor\n  rollgate monitor playbooks/k8s-upgrade.toml   # its namespaces, pings and periodic probes\n  rollgate monitor -o json | jq 'select(.event == \"problem\")'\n\nCtrl-C stops it (exit 0)."
    )]
    Monitor {
        /// A playbook whose `[monitor]` settings and periodic probes to use.
        playbook: Option<PathBuf>,
        /// Output: a live table, or a stream of JSON events.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Print the RBAC rollgate needs (YAML for `kubectl apply -f -`): the state namespace, a
    /// ServiceAccount, every role, and the bindings its use needs.
    #[command(
        after_help = "Examples:\n  rollgate rbac | kubectl apply -f -                 # the run's roles (deploy/rbac.yaml)\n  rollgate rbac --name rollgate-viewer --read-only    # plan, preflight, monitor, runs, status\n  rollgate rbac --name rollgate-oncall --control        # pause, resume, abort only\n  rollgate rbac --disable-eviction --job-probe-namespace smoke\n\nExit codes: 0 printed, 2 bad input."
    )]
    Rbac(RbacArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  rollgate completions bash > /etc/bash_completion.d/rollgate"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    pub playbook: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Ask before each node.
    #[arg(long, conflicts_with = "yes")]
    pub step: bool,
    /// Print every API write and remote command the run would make; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the remote command's output lines live (they are always in the per-node logs).
    #[arg(long)]
    pub show_output: bool,
    /// Take the cluster lock even if another run holds it. Only when you know that run is gone.
    #[arg(long)]
    pub force_unlock: bool,
    /// Name of the cluster lock (Lease rollgate-lock-NAME in `state.namespace`). Runs with different names
    /// do not exclude each other: use only for runs over disjoint nodes.
    #[arg(long, env = "ROLLGATE_LOCK_NAME", default_value = "default")]
    pub lock_name: String,
    /// Address of the Prometheus metrics endpoint (overrides `metrics.listen`).
    #[arg(long, env = "ROLLGATE_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Push the final metrics to this Pushgateway at the end (overrides `metrics.pushgateway`).
    #[arg(long, env = "ROLLGATE_PUSHGATEWAY", value_name = "URL")]
    pub pushgateway: Option<String>,
    /// The cluster lock's lease duration. The run renews the lock every sixth of it and stops
    /// (exit 10) if it could not renew it for two thirds of it; another run takes over a lock
    /// it has seen unchanged for this long (crashed, killed or cut-off runner).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lock_duration: std::time::Duration,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// The pre-flight checks run before the first cordon (a blocker refuses the run, exit 9).
    #[command(flatten)]
    pub preflight: PreflightArgs,
}

/// `rollgate rbac`: which RBAC to print.
#[derive(Args, Debug, Clone)]
pub struct RbacArgs {
    /// The state namespace (default: the config's `state.namespace`, else rollgate-system).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The ServiceAccount's name and the roles' prefix.
    #[arg(long, default_value = crate::rbac::DEFAULT_NAME)]
    pub name: String,
    /// Bind the roles that pause, resume and abort live runs (and read them) instead of the run's.
    #[arg(long, conflicts_with = "read_only")]
    pub control: bool,
    /// Bind the read-only roles (plan, preflight, monitor, runs, status) instead of the run's.
    #[arg(long)]
    pub read_only: bool,
    /// Also bind the optional role that deletes pods (`on-pdb-timeout = "disable-eviction"`).
    #[arg(long)]
    pub disable_eviction: bool,
    /// Bind the job probes' role in this namespace (repeatable).
    #[arg(long, value_name = "NS")]
    pub job_probe_namespace: Vec<String>,
}

/// Which pre-flight checks count.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PreflightArgs {
    /// Do not reach the nodes over SSH (the `ssh` check).
    #[arg(long)]
    pub no_ssh_check: bool,
    /// Leave this check's blockers out of the verdict (exit 0 despite them): drain-blockers,
    /// capacity, version-skew, ssh or eta (repeatable).
    #[arg(long, value_name = "CHECK", value_parser = parse_check)]
    pub ignore_preflight: Vec<crate::preflight::Check>,
}

fn parse_check(name: &str) -> Result<crate::preflight::Check, String> {
    crate::preflight::Check::parse(name).ok_or_else(|| {
        format!(
            "no pre-flight check {name:?}; the checks are {}",
            crate::preflight::Check::ALL.map(|c| c.name()).join(", ")
        )
    })
}

/// When nodes may start: overrides for the playbook's `[window]` and `deadline`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScheduleArgs {
    /// Start no node after this: a duration from now ("6h") or an RFC 3339 time
    /// ("2026-11-26T06:00:00Z"). Overrides the playbook's `deadline` (and a resumed run's).
    #[arg(long, value_name = "DURATION|TIME")]
    pub deadline: Option<String>,
    /// Start nodes even outside the playbook's maintenance window.
    #[arg(long)]
    pub ignore_window: bool,
}
