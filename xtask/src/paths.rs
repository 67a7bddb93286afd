//! Where the test environment keeps things: the versioned binary cache (kept across runs) and
//! the state directory of a running environment (removed by `down`).

use std::path::PathBuf;
use std::sync::OnceLock;

pub const K8S_VERSION: &str = "v1.36.3";
pub const ETCD_VERSION: &str = "v3.6.16";
pub const KWOK_VERSION: &str = "v0.8.0";

/// Loopback ports of the environment's services, before the port offset ([`port`]).
pub const ETCD_CLIENT_PORT: u16 = 23790;
pub const ETCD_PEER_PORT: u16 = 23800;
pub const APISERVER_PORT: u16 = 16443;
pub const KWOK_PORT: u16 = 10247;
pub const SLACK_PORT: u16 = 18080;
pub const PROMETHEUS_PORT: u16 = 19090;
pub const PUSHGATEWAY_PORT: u16 = 19091;
/// Each `node add` node's own sshd listens on its address at this port.
pub const NODE_SSH_PORT: u16 = 22;
/// The one sshd shared by `node add-many` nodes (any 127.x.y.z address, see testenv::fleet).
pub const FLEET_SSH_PORT: u16 = 2222;

/// The state directory and port offset `cargo xtask bench` runs its own environment with
/// (set once, before anything else reads them; environment variables otherwise).
static OVERRIDE: OnceLock<(PathBuf, u16)> = OnceLock::new();

/// Makes this process use `state` and `offset` instead of the environment variables.
pub fn set_override(state: PathBuf, offset: u16) {
    let _ = OVERRIDE.set((state, offset));
}

/// `$ROLLGATE_TESTENV_PORT_OFFSET` (default 0): added to every port of the environment, so a
/// second environment (with its own `ROLLGATE_TESTENV_STATE`) runs beside the default one.
pub fn port_offset() -> Result<u16, String> {
    if let Some((_, offset)) = OVERRIDE.get() {
        return Ok(*offset);
    }
    match std::env::var("ROLLGATE_TESTENV_PORT_OFFSET") {
        Err(_) => Ok(0),
        Ok(v) => v.trim().parse::<u16>().ok().filter(|o| *o <= 10_000).ok_or_else(|| {
            format!(
                "ROLLGATE_TESTENV_PORT_OFFSET={v:?} is not a number from 0 to 10000\n  hint: e.g. 100 moves the apiserver to {}",
                APISERVER_PORT + 100
            )
        }),
    }
}

/// `base` moved by `offset` (every port of one environment moves by the same offset).
pub fn port(base: u16, offset: u16) -> u16 {
    base + offset
}

/// Token the Slack stand-in accepts (it is a test credential, not a secret).
pub const SLACK_TOKEN: &str = "xoxb-rollgate-testenv";
/// App-level token (Socket Mode) the Slack stand-in accepts for `apps.connections.open` only.
pub const SLACK_APP_TOKEN: &str = "xapp-rollgate-testenv";

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$ROLLGATE_TESTENV_CACHE` or `~/.cache/rollgate-testenv`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ROLLGATE_TESTENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/rollgate-testenv"))
}

/// `$ROLLGATE_TESTENV_STATE` or `/tmp/rollgate-testenv` (the bench's own when it runs).
pub fn state_dir() -> PathBuf {
    if let Some((state, _)) = OVERRIDE.get() {
        return state.clone();
    }
    std::env::var_os("ROLLGATE_TESTENV_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rollgate-testenv"))
}

pub fn k8s_bin(name: &str) -> PathBuf {
    cache_dir()
        .join("k8s")
        .join(K8S_VERSION)
        .join("bin")
        .join(name)
}

pub fn etcd_bin() -> PathBuf {
    cache_dir().join("etcd").join(ETCD_VERSION).join("bin/etcd")
}

pub fn kwok_bin() -> PathBuf {
    cache_dir().join("kwok").join(KWOK_VERSION).join("bin/kwok")
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}
