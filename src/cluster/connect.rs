//! The Kubernetes clients of a run, connected as kubectl would.

use crate::config::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::time::Duration;

/// Two clients on one connection config: `api` with kube's default retries, `drain` without
/// them (the drain loop owns its 429 handling, see [`crate::drain`]).
#[derive(Clone)]
pub struct Clients {
    pub api: kube::Client,
    pub drain: kube::Client,
    /// Which context and server, for messages.
    pub describe: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use the kubeconfig{}: {source}", context.as_ref().map(|c| format!(" context {c:?}")).unwrap_or_default())]
    Config {
        context: Option<String>,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the cluster at {server} does not answer: {source}")]
    Unreachable { server: String, source: kube::Error },
}

/// Connects as kubectl would: the config's kubeconfig (flag > KUBECONFIG > file > ~/.kube/config)
/// and context (flag > file > current context). Checks the API answers.
pub async fn connect(config: &Config) -> Result<Clients, ConnectError> {
    let kubeconfig = match &config.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?,
        None => Kubeconfig::read().map_err(|source| ConnectError::Kubeconfig {
            path: "(KUBECONFIG or ~/.kube/config)".into(),
            source,
        })?,
    };
    let options = KubeConfigOptions {
        context: config.context.clone(),
        ..Default::default()
    };
    let mut kc = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| ConnectError::Config {
            context: config.context.clone(),
            source,
        })?;
    kc.read_timeout = Some(Duration::from_secs(300));
    let server = kc.cluster_url.to_string();
    let api = kube::Client::try_from(kc.clone()).map_err(ConnectError::Client)?;
    let mut no_retry = kc;
    no_retry.default_retry = false;
    let drain = kube::Client::try_from(no_retry).map_err(ConnectError::Client)?;
    api.apiserver_version()
        .await
        .map_err(|source| ConnectError::Unreachable {
            server: server.clone(),
            source,
        })?;
    Ok(Clients {
        api,
        drain,
        describe: format!(
            "{}{}",
            server,
            config
                .context
                .as_ref()
                .map(|c| format!(" (context {c})"))
                .unwrap_or_default()
        ),
    })
}
