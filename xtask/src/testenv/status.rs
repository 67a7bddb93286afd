//! `testenv status`: whether the environment runs, where its files are, what its processes hold.

use super::{procs, read_env};
use crate::Result;
use crate::paths::state_dir;
use std::process::ExitCode;

pub fn status(json: bool) -> Result<ExitCode> {
    let state = state_dir();
    let env = match read_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let procs = procs::recorded(&state);
    let all_alive = procs.iter().all(|(_, pid)| procs::is_alive(*pid));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&env).expect("serialisable")
        );
    } else {
        println!("state dir:   {}", env.state_dir.display());
        println!("kubeconfig:  {}", env.kubeconfig.display());
        println!("ssh_config:  {}", env.ssh_config.display());
        println!("known_hosts: {}", env.known_hosts.display());
        println!("client key:  {}", env.client_key.display());
        println!("slack:       {}", env.slack_url);
        println!("prometheus:  {}", env.prometheus_url);
        println!("pushgateway: {}", env.pushgateway_url);
        for (name, pid) in &procs {
            println!(
                "  {:<28} pid {:<8} {:>6} MB  {}",
                name,
                pid,
                procs::rss_mb(*pid).unwrap_or(0),
                if procs::is_alive(*pid) {
                    "running"
                } else {
                    "DEAD"
                }
            );
        }
    }
    Ok(if all_alive {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
