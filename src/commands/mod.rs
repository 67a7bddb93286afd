//! The CLI subcommands. Each returns `Ok(exit code)` or a [`Failure`] whose message main prints.

pub mod check;
pub mod monitor;
pub mod plan;
pub mod report;
pub mod run;

use crate::cli::GlobalArgs;
use crate::config::{Config, Overrides};
use crate::diagnostics::SourceErrors;
use crate::exit;
use crate::playbook::{self, Playbook};
use std::path::Path;

/// A command that could not do its job: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<SourceErrors> for Failure {
    fn from(e: SourceErrors) -> Self {
        Failure::new(exit::BAD_INPUT, e.to_string())
    }
}

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

pub fn load_playbook(path: &Path) -> Result<Playbook, Failure> {
    Ok(playbook::load(path)?)
}
