//! The local test environment: install, up, down, status, nodes.
//!
//! Everything runs as plain processes on loopback (no containers): etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok (simulated kubelets), one sshd per node,
//! Debian's Prometheus and the Slack stand-in. `up` writes `env.json` in the state directory;
//! `status --json` prints it, and rollgate's tests read it (tests/support).

mod fleet;
mod nodes;
mod pki;
pub mod procs;
mod status;
mod suite;

pub use suite::{run_bench, run_test_suite};

use crate::paths::{self, *};
use crate::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum TestenvCommand {
    /// Build and cache the control plane, etcd and kwok; install sshd, Prometheus (idempotent).
    Install,
    /// Start the environment (a no-op when it is already running). `ROLLGATE_TESTENV_STATE`
    /// and `ROLLGATE_TESTENV_PORT_OFFSET` run a second environment beside the default one.
    Up(UpOptions),
    /// Stop every process the environment started and remove its state.
    Down,
    /// Show whether the environment runs and where its files are.
    Status {
        /// Print the environment description as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove kwok nodes (each with its own sshd).
    Node {
        #[command(subcommand)]
        command: nodes::NodeCommand,
    },
}

/// `testenv up` options: a fleet of nodes sharing one sshd, with pods, added once it is up.
#[derive(clap::Args, Default)]
pub struct UpOptions {
    /// Add this many kwok nodes `fleet-0001`.. (one shared sshd; see `node add-many`).
    #[arg(long, default_value_t = 0)]
    pub nodes: u32,
    /// Pods per fleet node (Deployments in namespace `fleet`, one per group of nodes).
    #[arg(long, default_value_t = 0)]
    pub pods_per_node: u32,
}

/// What a running environment offers; written to `STATE/env.json`.
#[derive(Serialize, Deserialize)]
pub struct EnvDescription {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub context: String,
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub client_key: PathBuf,
    pub slack_url: String,
    pub slack_token: String,
    /// The app-level token for Socket Mode (`apps.connections.open`); absent in older env.json files.
    #[serde(default = "default_slack_app_token")]
    pub slack_app_token: String,
    pub prometheus_url: String,
    pub prometheus_rules_dir: PathBuf,
    pub prometheus_targets_dir: PathBuf,
    pub pushgateway_url: String,
    pub kubectl: PathBuf,
    pub xtask: PathBuf,
    pub k8s_version: String,
    /// Added to every port (0: the default environment; absent in older env.json files).
    #[serde(default)]
    pub port_offset: u16,
}

fn default_slack_app_token() -> String {
    SLACK_APP_TOKEN.into()
}

pub fn run(command: TestenvCommand) -> Result<ExitCode> {
    match command {
        TestenvCommand::Install => install().map(|_| ExitCode::SUCCESS),
        TestenvCommand::Up(opts) => up(&opts).map(|_| ExitCode::SUCCESS),
        TestenvCommand::Down => down().map(|_| ExitCode::SUCCESS),
        TestenvCommand::Status { json } => status::status(json),
        TestenvCommand::Node { command } => nodes::run(command).map(|_| ExitCode::SUCCESS),
    }
}

pub fn install() -> Result<()> {
    let started = Instant::now();
    let script = workspace_root().join("xtask/scripts/install-testenv.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("K8S_VERSION", K8S_VERSION)
        .env("ETCD_VERSION", ETCD_VERSION)
        .env("KWOK_VERSION", KWOK_VERSION)
        .env("ROLLGATE_TESTENV_CACHE", cache_dir())
        .status()
        .context(format!("run {}", script.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", script.display()));
    }
    eprintln!(
        "[testenv] install finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn env_file(state: &Path) -> PathBuf {
    state.join("env.json")
}

pub fn read_env() -> Result<EnvDescription> {
    let path = env_file(&state_dir());
    let text = fs::read_to_string(&path).map_err(|_| {
        format!(
            "the test environment is not running ({} missing): run `cargo xtask testenv up`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).context(format!("parse {}", path.display()))
}

fn apiserver_ready(kubectl: &Path, kubeconfig: &Path) -> bool {
    Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn running(state: &Path) -> bool {
    let procs = procs::recorded(state);
    !procs.is_empty() && procs.iter().all(|(_, pid)| procs::is_alive(*pid))
}

pub fn up(opts: &UpOptions) -> Result<()> {
    let started = Instant::now();
    let state = state_dir();
    let offset = paths::port_offset()?;
    if offset != 0
        && std::env::var_os("ROLLGATE_TESTENV_STATE").is_none()
        && state == Path::new("/tmp/rollgate-testenv")
    {
        return Err("ROLLGATE_TESTENV_PORT_OFFSET without ROLLGATE_TESTENV_STATE would share the default environment's state\n  hint: give the second environment its own, e.g. ROLLGATE_TESTENV_STATE=/tmp/rollgate-second".into());
    }
    let [
        etcd_client_port,
        etcd_peer_port,
        apiserver_port,
        kwok_port,
        slack_port,
        prometheus_port,
        pushgateway_port,
        node_ssh_port,
    ] = [
        ETCD_CLIENT_PORT,
        ETCD_PEER_PORT,
        APISERVER_PORT,
        KWOK_PORT,
        SLACK_PORT,
        PROMETHEUS_PORT,
        PUSHGATEWAY_PORT,
        NODE_SSH_PORT,
    ]
    .map(|p| paths::port(p, offset));
    if env_file(&state).exists() && running(&state) {
        eprintln!("[testenv] already running; state in {}", state.display());
        return fleet::up_fleet(opts);
    }
    if state.exists() {
        eprintln!(
            "[testenv] stale state in {}: stopping what is left",
            state.display()
        );
        down()?;
    }
    for bin in [
        k8s_bin("kube-apiserver"),
        k8s_bin("kubectl"),
        etcd_bin(),
        kwok_bin(),
    ] {
        if !bin.exists() {
            return Err(format!(
                "{} is missing: run `cargo xtask testenv install` first",
                bin.display()
            ));
        }
    }
    for tool in [
        "/usr/sbin/sshd",
        "/usr/bin/prometheus",
        "/usr/bin/prometheus-pushgateway",
        "/usr/bin/ssh-keygen",
    ] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} is missing: run `cargo xtask testenv install` first"
            ));
        }
    }
    fs::create_dir_all(&state).context("create state dir")?;
    let pki = state.join("pki");
    pki::generate(&pki)?;
    let token = format!("rollgate-testenv-admin-{}", std::process::id());
    fs::write(
        state.join("tokens.csv"),
        format!("{token},admin,admin,\"system:masters\"\n"),
    )
    .context("write tokens")?;
    let kubeconfig = state.join("kubeconfig");
    fs::write(
        &kubeconfig,
        kubeconfig_yaml(&pki.join("ca.crt"), &token, apiserver_port),
    )
    .context("write kubeconfig")?;

    // etcd
    let etcd_client = format!("http://127.0.0.1:{etcd_client_port}");
    let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
    procs::spawn(
        &state,
        "etcd",
        &etcd_bin(),
        &strings(&[
            &format!("--data-dir={}", state.join("etcd").display()),
            &format!("--listen-client-urls={etcd_client}"),
            &format!("--advertise-client-urls={etcd_client}"),
            &format!("--listen-peer-urls={etcd_peer}"),
            &format!("--initial-advertise-peer-urls={etcd_peer}"),
            &format!("--initial-cluster=default={etcd_peer}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]),
    )?;
    procs::wait_for("etcd", Duration::from_secs(30), || {
        procs::port_open(&format!("127.0.0.1:{etcd_client_port}"))
    })?;

    // kube-apiserver
    let p = |f: &str| pki.join(f).display().to_string();
    procs::spawn(
        &state,
        "kube-apiserver",
        &k8s_bin("kube-apiserver"),
        &strings(&[
            &format!("--etcd-servers={etcd_client}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={apiserver_port}"),
            &format!("--tls-cert-file={}", p("apiserver.crt")),
            &format!("--tls-private-key-file={}", p("apiserver.key")),
            &format!("--client-ca-file={}", p("ca.crt")),
            &format!("--token-auth-file={}", state.join("tokens.csv").display()),
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={}", p("sa.pub")),
            &format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]),
    )?;
    let kubectl = k8s_bin("kubectl");
    procs::wait_for("kube-apiserver /readyz", Duration::from_secs(90), || {
        apiserver_ready(&kubectl, &kubeconfig)
    })?;

    procs::spawn(
        &state,
        "kube-controller-manager",
        &k8s_bin("kube-controller-manager"),
        &strings(&[
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false",
            "--secure-port=0",
            &format!("--service-account-private-key-file={}", p("sa.key")),
            &format!("--root-ca-file={}", p("ca.crt")),
            "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route",
            // 60 s, not 20 s: with hundreds of kwok nodes on a loaded 2-core machine, kwok renews
            // leases late and nodes went Unknown ("Kubelet stopped posting node status").
            "--node-monitor-grace-period=60s",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            // Hundreds of nodes and tens of thousands of pods (`--nodes`): the default 20/30
            // client QPS would make the ReplicaSet controller the bottleneck.
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--v=1",
        ]),
    )?;
    procs::spawn(
        &state,
        "kube-scheduler",
        &k8s_bin("kube-scheduler"),
        &strings(&[
            &format!("--kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false",
            "--secure-port=0",
            "--kube-api-qps=300",
            "--kube-api-burst=600",
            "--v=1",
        ]),
    )?;
    let kwok_config = state.join("kwok.yaml");
    fs::write(&kwok_config, include_str!("../../assets/kwok.yaml")).context("write kwok config")?;
    procs::spawn(
        &state,
        "kwok",
        &kwok_bin(),
        &strings(&[
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--config={}", kwok_config.display()),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--cidr=127.3.0.0/16",
            "--node-ip=127.0.0.1",
            &format!("--server-address=127.0.0.1:{kwok_port}"),
            "--node-lease-duration-seconds=40",
        ]),
    )?;

    // SSH client side: one client key, an ssh_config and a known_hosts that `node add` appends to.
    let ssh = state.join("ssh");
    fs::create_dir_all(&ssh).context("create ssh dir")?;
    let client_key = ssh.join("client_key");
    run_quiet(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "rollgate-testenv",
                "-f",
            ])
            .arg(&client_key),
    )?;
    fs::copy(ssh.join("client_key.pub"), ssh.join("authorized_keys"))
        .context("write authorized_keys")?;
    fs::write(ssh.join("known_hosts"), "").context("write known_hosts")?;
    fs::write(
        ssh.join("ssh_config"),
        format!(
            "# Written by `cargo xtask testenv up`: every test node listens on 127.0.B.N:{node_ssh_port} (B >= 1).\n\
             Host 127.0.*\n  Port {node_ssh_port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  \
             StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 5\n",
            key = client_key.display(),
            kh = ssh.join("known_hosts").display()
        ),
    )
    .context("write ssh_config")?;
    fs::create_dir_all("/run/sshd").context("create /run/sshd (sshd privilege separation dir)")?;

    // Slack stand-in: a copy of this binary, so rebuilding xtask does not pull it from under a run.
    let bin_dir = state.join("bin");
    fs::create_dir_all(&bin_dir).context("create bin dir")?;
    let xtask_copy = bin_dir.join("xtask");
    fs::copy(
        std::env::current_exe().context("locate xtask binary")?,
        &xtask_copy,
    )
    .context("copy xtask binary")?;
    // Helpers the demo and tests run "on the node" over SSH: a fake upgrade and a kubectl.
    let upgrade = bin_dir.join("kwok-node-upgrade");
    fs::write(&upgrade, include_str!("../../assets/kwok-node-upgrade.sh"))
        .context("write kwok-node-upgrade")?;
    fs::set_permissions(
        &upgrade,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .context("chmod kwok-node-upgrade")?;
    std::os::unix::fs::symlink(&kubectl, bin_dir.join("kubectl")).context("link kubectl")?;
    procs::spawn(
        &state,
        "slack-standin",
        &xtask_copy,
        &strings(&[
            "slack-standin",
            &format!("--listen=127.0.0.1:{slack_port}"),
            &format!("--token={SLACK_TOKEN}"),
        ]),
    )?;

    // Prometheus: scrapes file_sd targets that tests drop in targets/, loads rules from rules/.
    let prom = state.join("prometheus");
    let rules = prom.join("rules");
    let targets = prom.join("targets");
    fs::create_dir_all(&rules).context("create rules dir")?;
    fs::create_dir_all(&targets).context("create targets dir")?;
    fs::write(
        prom.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}/*.yml\n\
             scrape_configs:\n  - job_name: testenv\n    file_sd_configs:\n      - files: ['{targets}/*.json']\n        refresh_interval: 1s\n",
            rules = rules.display(),
            targets = targets.display()
        ),
    )
    .context("write prometheus.yml")?;
    procs::spawn(
        &state,
        "prometheus",
        Path::new("/usr/bin/prometheus"),
        &strings(&[
            &format!("--config.file={}", prom.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", prom.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]),
    )?;

    // A Pushgateway, for runs that push their final metrics.
    procs::spawn(
        &state,
        "pushgateway",
        Path::new("/usr/bin/prometheus-pushgateway"),
        &strings(&[
            &format!("--web.listen-address=127.0.0.1:{pushgateway_port}"),
            "--log.level=warn",
        ]),
    )?;

    let env = EnvDescription {
        state_dir: state.clone(),
        kubeconfig: kubeconfig.clone(),
        context: "rollgate-testenv".into(),
        ssh_config: ssh.join("ssh_config"),
        known_hosts: ssh.join("known_hosts"),
        client_key,
        slack_url: format!("http://127.0.0.1:{slack_port}"),
        slack_token: SLACK_TOKEN.into(),
        slack_app_token: SLACK_APP_TOKEN.into(),
        prometheus_url: format!("http://127.0.0.1:{prometheus_port}"),
        prometheus_rules_dir: rules,
        prometheus_targets_dir: targets,
        pushgateway_url: format!("http://127.0.0.1:{pushgateway_port}"),
        kubectl: kubectl.clone(),
        xtask: xtask_copy,
        k8s_version: K8S_VERSION.into(),
        port_offset: offset,
    };
    procs::wait_for("the Slack stand-in", Duration::from_secs(10), || {
        procs::port_open(&format!("127.0.0.1:{slack_port}"))
    })?;
    procs::wait_for("Prometheus /-/ready", Duration::from_secs(30), || {
        matches!(
            procs::http(
                "GET",
                &format!("127.0.0.1:{prometheus_port}"),
                "/-/ready",
                ""
            ),
            Ok((200, _))
        )
    })?;
    procs::wait_for("the Pushgateway /-/ready", Duration::from_secs(30), || {
        matches!(
            procs::http(
                "GET",
                &format!("127.0.0.1:{pushgateway_port}"),
                "/-/ready",
                ""
            ),
            Ok((200, _))
        )
    })?;
    // The default namespace's service account and the scheduler must be serving before tests start.
    procs::wait_for("the default namespace", Duration::from_secs(30), || {
        Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "namespace", "default"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })?;
    fs::write(
        env_file(&state),
        serde_json::to_string_pretty(&env).expect("serialisable"),
    )
    .context("write env.json")?;
    eprintln!(
        "[testenv] up in {:.1}s; state in {}",
        started.elapsed().as_secs_f64(),
        state.display()
    );
    eprintln!("[testenv] export KUBECONFIG={}", kubeconfig.display());
    fleet::up_fleet(opts)
}

pub fn down() -> Result<()> {
    let state = state_dir();
    if !state.exists() {
        eprintln!("[testenv] not running");
        return Ok(());
    }
    // Nodes' sshd first, then the rest in reverse start order.
    let order = [
        "pushgateway",
        "prometheus",
        "slack-standin",
        "kwok",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ];
    let mut recorded = procs::recorded(&state);
    recorded.sort_by_key(|(name, _)| order.iter().position(|o| o == name).unwrap_or(0));
    for (name, pid) in &recorded {
        procs::stop(*pid, Duration::from_secs(10));
        eprintln!("[testenv] stopped {name} (pid {pid})");
    }
    fs::remove_dir_all(&state).context(format!("remove {}", state.display()))?;
    eprintln!("[testenv] down; removed {}", state.display());
    Ok(())
}

pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(format!("run {cmd:?}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn kubeconfig_yaml(ca: &Path, token: &str, apiserver_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rollgate-testenv\n  cluster:\n    server: https://127.0.0.1:{apiserver_port}\n    \
         certificate-authority: {ca}\ncontexts:\n- name: rollgate-testenv\n  context:\n    cluster: rollgate-testenv\n    user: admin\n\
         current-context: rollgate-testenv\nusers:\n- name: admin\n  user:\n    token: {token}\n",
        ca = ca.display()
    )
}
