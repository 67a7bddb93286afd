//! Where the test environment keeps things: the versioned binary cache (kept across runs) and
//! the state directory of a running environment (removed by `down`).

use std::path::PathBuf;

pub const K8S_VERSION: &str = "v1.36.3";
pub const ETCD_VERSION: &str = "v3.6.16";
pub const KWOK_VERSION: &str = "v0.8.0";

/// Loopback ports of the environment's services.
pub const ETCD_CLIENT_PORT: u16 = 23790;
pub const ETCD_PEER_PORT: u16 = 23800;
pub const APISERVER_PORT: u16 = 16443;
pub const KWOK_PORT: u16 = 10247;
pub const SLACK_PORT: u16 = 18080;
pub const PROMETHEUS_PORT: u16 = 19090;
pub const PUSHGATEWAY_PORT: u16 = 19091;

/// Token the Slack stand-in accepts (it is a test credential, not a secret).
pub const SLACK_TOKEN: &str = "xoxb-rollgate-testenv";

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

/// `$ROLLGATE_TESTENV_STATE` or `/tmp/rollgate-testenv`.
pub fn state_dir() -> PathBuf {
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
