//! The CLI subcommands. Each returns `Ok(exit code)` or a [`Failure`] whose message main prints.

pub mod check;
pub mod monitor;
pub mod pause;
pub mod plan;
pub mod preflight;
pub mod rbac;
pub mod report;
pub mod resume;
pub mod run;
pub mod status;

use crate::cli::GlobalArgs;
use crate::config::{Config, Overrides};
use crate::playbook::{self, Playbook};
use std::path::Path;

pub use crate::exit::Failure;

pub fn load_config(global: &GlobalArgs) -> Result<Config, Failure> {
    let overrides = Overrides {
        kubeconfig: global.kubeconfig.clone(),
        context: global.context.clone(),
        state_dir: global.state_dir.clone(),
        log_format: global.log_format.map(Into::into),
        ssh_config: global.ssh_config.clone(),
    };
    Ok(Config::load(global.config.as_deref(), &overrides)?)
}

/// The playbook as a run against this config sees it: without its own `[window]`, the
/// config's (the cluster's maintenance window) applies.
pub fn load_playbook_with(path: &Path, config: &Config) -> Result<Playbook, Failure> {
    let mut playbook = load_playbook(path)?;
    if playbook.window.is_none() {
        playbook.window = config.window.clone();
    }
    Ok(playbook)
}

/// Loads a playbook and registers the secrets it holds ([`crate::redact`]).
pub fn load_playbook(path: &Path) -> Result<Playbook, Failure> {
    let playbook = playbook::load(path)?;
    playbook.register_secrets();
    Ok(playbook)
}
