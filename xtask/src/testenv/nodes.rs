//! Test nodes: a kwok-managed Node object with an InternalIP of 127.0.1.N and a podCIDR of
//! 127.2.N.0/24 (N = 1..254; beyond that 127.0.B.H and 127.(10+B).H.0/24, see [`addresses`]),
//! plus one sshd bound to that address's port 22 with its own host key in known_hosts.
//! N is allocated atomically (a directory per index) and never reused while the environment
//! runs, so a known_hosts line never goes stale.

use super::{procs, read_env, run_quiet};
use crate::paths::state_dir;
use crate::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Create a kwok node with its own sshd; prints the node's SSH address.
    Add {
        name: String,
        /// A label `key=value` (repeatable), e.g. `--label node-role.kubernetes.io/control-plane=` `--label topology.kubernetes.io/zone=a`.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// A taint `key[=value]:Effect` (repeatable).
        #[arg(long = "taint", value_name = "K=V:EFFECT")]
        taints: Vec<String>,
        /// The kubelet version the node reports.
        #[arg(long, default_value = "v1.35.4")]
        kubelet_version: String,
    },
    /// Delete a node and stop its sshd.
    Rm { name: String },
    /// Create many kwok nodes at once, sharing one sshd, with pods; prints their names.
    AddMany(super::fleet::AddMany),
    /// Delete a fleet made by `add-many` (its Deployments, then its nodes).
    RmMany {
        #[arg(long)]
        prefix: String,
    },
}

pub fn run(command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Add {
            name,
            labels,
            taints,
            kubelet_version,
        } => {
            let ip = add(&name, &labels, &taints, &kubelet_version)?;
            println!("{ip}");
            Ok(())
        }
        NodeCommand::Rm { name } => rm(&name),
        NodeCommand::AddMany(args) => {
            for name in super::fleet::add_many(&args)? {
                println!("{name}");
            }
            Ok(())
        }
        NodeCommand::RmMany { prefix } => super::fleet::rm_many(&prefix),
    }
}

/// The host field of a known_hosts line: `ADDR`, or `[ADDR]:PORT` off port 22.
pub fn known_host(ip: &str, port: u16) -> String {
    if port == 22 {
        ip.to_owned()
    } else {
        format!("[{ip}]:{port}")
    }
}

/// How many test nodes one environment can create over its life (addresses are not reused).
const MAX_NODES: u32 = 254 * 40;

fn allocate_index(state: &Path) -> Result<u32> {
    let dir = state.join("node-index");
    fs::create_dir_all(&dir).context("create node-index dir")?;
    for n in 1..=MAX_NODES {
        if fs::create_dir(dir.join(n.to_string())).is_ok() {
            return Ok(n);
        }
    }
    Err(format!(
        "all {MAX_NODES} test node addresses are used: restart the environment"
    ))
}

/// The node's SSH address and pod CIDR for index `n`: 127.0.1.n and 127.2.n.0/24 for the
/// first 254, then 127.0.B.H and 127.(10+B).H.0/24 (B from 2, H in 1..=254).
fn addresses(n: u32) -> (String, String) {
    if n <= 254 {
        return (format!("127.0.1.{n}"), format!("127.2.{n}.0/24"));
    }
    let m = n - 255;
    let (block, host) = (2 + m / 254, m % 254 + 1);
    (
        format!("127.0.{block}.{host}"),
        format!("127.{}.{host}.0/24", 8 + block),
    )
}

fn add(name: &str, labels: &[String], taints: &[String], kubelet_version: &str) -> Result<String> {
    let env = read_env()?;
    let state = state_dir();
    let node_dir = state.join("nodes").join(name);
    if node_dir.exists() {
        return Err(format!("node {name} exists already"));
    }
    fs::create_dir_all(&node_dir).context("create node dir")?;
    let n = allocate_index(&state)?;
    let (ip, pod_cidr) = addresses(n);
    let port = crate::paths::port(crate::paths::NODE_SSH_PORT, env.port_offset);

    // sshd bound to the node's address, with its own host key.
    let host_key = node_dir.join("ssh_host_ed25519_key");
    run_quiet(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&host_key),
    )?;
    let config = node_dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "ListenAddress {ip}:{port}\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 64\n\
             MaxStartups 64:30:128\nSubsystem sftp internal-sftp\n",
            hk = host_key.display(),
            pid = node_dir.join("sshd.pid").display(),
            ak = state.join("ssh/authorized_keys").display(),
        ),
    )
    .context("write sshd_config")?;
    procs::spawn(
        &state,
        &format!("sshd-{name}"),
        Path::new("/usr/sbin/sshd"),
        &[
            "-D".into(),
            "-e".into(),
            "-f".into(),
            config.display().to_string(),
        ],
    )?;
    let pubkey =
        fs::read_to_string(host_key.with_extension("pub")).context("read host public key")?;
    let mut parts = pubkey.split_whitespace();
    let (kind, key) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut known_hosts = fs::OpenOptions::new()
        .append(true)
        .open(&env.known_hosts)
        .context("open known_hosts")?;
    known_hosts
        .write_all(format!("{} {kind} {key}\n", known_host(&ip, port)).as_bytes())
        .context("append known_hosts")?;
    procs::wait_for(
        &format!("sshd on {ip}:{port}"),
        Duration::from_secs(10),
        || procs::port_open(&format!("{ip}:{port}")),
    )?;

    // The Node object, managed by kwok (annotation), reporting the given kubelet version.
    let mut label_map = serde_json::Map::new();
    label_map.insert("kubernetes.io/hostname".into(), json!(name));
    label_map.insert("kubernetes.io/os".into(), json!("linux"));
    label_map.insert("type".into(), json!("kwok"));
    for label in labels {
        let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
        label_map.insert(k.into(), json!(v));
    }
    let mut taint_list = Vec::new();
    for taint in taints {
        let (kv, effect) = taint
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {taint:?} needs an effect: key[=value]:NoSchedule"))?;
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        taint_list.push(json!({"key": k, "value": v, "effect": effect}));
    }
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": label_map,
            "annotations": {"kwok.x-k8s.io/node": "fake", "rollgate.test/ssh-address": ip},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": taint_list},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": kubelet_version, "architecture": "amd64", "operatingSystem": "linux",
                          "bootID": "", "machineID": "", "systemUUID": "", "kernelVersion": "", "osImage": "kwok",
                          "containerRuntimeVersion": "kwok", "kubeProxyVersion": ""},
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    });
    let mut child = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run kubectl create node")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(node.to_string().as_bytes())
        .context("write node manifest")?;
    let out = child.wait_with_output().context("wait for kubectl")?;
    if !out.status.success() {
        return Err(format!(
            "kubectl create node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::write(node_dir.join("address"), &ip).context("write node address")?;
    Ok(ip)
}

fn rm(name: &str) -> Result<()> {
    let env = read_env()?;
    let state = state_dir();
    let out = Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["delete", "node", name, "--ignore-not-found", "--wait=false"])
        .output()
        .context("run kubectl delete node")?;
    if !out.status.success() {
        return Err(format!(
            "kubectl delete node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pid_file = state.join("pids").join(format!("sshd-{name}.pid"));
    if let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        procs::stop(pid, Duration::from_secs(5));
    }
    let _ = fs::remove_file(pid_file);
    let _ = fs::remove_dir_all(state.join("nodes").join(name));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::addresses;

    #[test]
    fn node_addresses_stay_distinct_past_the_first_254() {
        assert_eq!(addresses(1), ("127.0.1.1".into(), "127.2.1.0/24".into()));
        assert_eq!(
            addresses(254),
            ("127.0.1.254".into(), "127.2.254.0/24".into())
        );
        assert_eq!(addresses(255), ("127.0.2.1".into(), "127.10.1.0/24".into()));
        assert_eq!(
            addresses(508),
            ("127.0.2.254".into(), "127.10.254.0/24".into())
        );
        assert_eq!(addresses(509), ("127.0.3.1".into(), "127.11.1.0/24".into()));
        let all: std::collections::BTreeSet<_> = (1..=super::MAX_NODES).map(addresses).collect();
        assert_eq!(all.len(), super::MAX_NODES as usize);
    }
}
