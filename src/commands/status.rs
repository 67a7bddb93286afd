//! `rollgate runs` and `rollgate status`: what the journals (here, or their copies in the
//! cluster) say about runs.

use super::Failure;
use super::plan::connect_failure;
use crate::cluster;
use crate::config::Config;
use crate::driver::state_dir::{RunIdError, RunsDir};
use crate::exit;

/// The run named, or the latest real run, as a failure the user can act on.
pub(super) fn resolve_run(runs: &RunsDir, run: Option<&str>) -> Result<String, Failure> {
    runs.resolve(run).map_err(|e| {
        let hint = match e {
            RunIdError::Invalid(_) => {
                "run ids look like 20261125-013000-ab12; `rollgate runs` lists them"
            }
            RunIdError::NoLatest(_) => "pass the run id, or the --state-dir the run uses",
        };
        Failure::new(exit::BAD_INPUT, format!("error: {e}\n  hint: {hint}"))
    })
}

/// `rollgate runs`: the runs this machine has (state directory) and those copied into the
/// cluster (from any machine), newest first: id, state, playbook, progress, where.
pub async fn runs(config: Config, output: crate::cli::OutputFormat) -> Result<u8, Failure> {
    #[derive(serde::Serialize)]
    struct Row {
        run_id: String,
        state: String,
        playbook: String,
        done: usize,
        nodes: usize,
        lock: Option<String>,
        local: bool,
        cluster: bool,
    }
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    let row = |id: &str, s: &crate::journal::RunStatus| Row {
        run_id: id.to_owned(),
        state: s.state.clone(),
        playbook: s.playbook.clone(),
        done: s
            .nodes
            .values()
            .filter(|n| n.state == crate::journal::NodeState::Done)
            .count(),
        nodes: s.nodes.len(),
        lock: None,
        local: false,
        cluster: false,
    };
    for (id, dir) in RunsDir::new(&config.state_dir).list() {
        if let Ok(s) = crate::journal::RunStatus::from_journal(&dir.journal()) {
            let mut r = row(&id, &s);
            r.local = true;
            rows.insert(id, r);
        }
    }
    let from_cluster = match cluster::connect(&config).await {
        Ok(clients) => {
            crate::journal::list_cluster_copies(&clients.api, &config.state_namespace).await
        }
        Err(e) => Err(e.to_string()),
    };
    match from_cluster {
        Ok(copies) => {
            for c in copies {
                let r = rows
                    .entry(c.run_id.clone())
                    .or_insert_with(|| row(&c.run_id, &c.status));
                r.cluster = true;
                r.lock = Some(c.lock);
            }
        }
        Err(e) if e.contains("forbidden") => eprintln!(
            "warning: runs in the cluster not listed: {e}\n  hint: the shipped Role rollgate-state-reader grants it (`rollgate rbac --read-only`, README \"Permissions\")"
        ),
        Err(e) => eprintln!("warning: runs in the cluster not listed: {e}"),
    }
    let rows: Vec<Row> = rows.into_values().rev().collect();
    if output == crate::cli::OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialisable")
        );
        return Ok(exit::OK);
    }
    println!(
        "{:<22} {:<28} {:>7}  {:<14} {:<16} PLAYBOOK",
        "RUN", "STATE", "DONE", "WHERE", "LOCK"
    );
    for r in &rows {
        let place = match (r.local, r.cluster) {
            (true, true) => "here+cluster",
            (true, false) => "here",
            _ => "cluster",
        };
        let state: String = r.state.chars().take(28).collect();
        println!(
            "{:<22} {:<28} {:>7}  {:<14} {:<16} {}",
            r.run_id,
            state,
            format!("{}/{}", r.done, r.nodes),
            place,
            r.lock.as_deref().unwrap_or("-"),
            r.playbook
        );
    }
    Ok(exit::OK)
}

/// `rollgate status [RUN]`: each node's state, step, since when and last error, from the journal.
pub async fn status(
    config: Config,
    run: Option<&str>,
    output: crate::cli::OutputFormat,
) -> Result<u8, Failure> {
    let runs = RunsDir::new(&config.state_dir);
    let run_id = resolve_run(&runs, run)?;
    let path = runs.run(&run_id).journal();
    // No local journal (another machine): the run's copy in the cluster.
    let status = match crate::journal::RunStatus::from_journal(&path) {
        Ok(s) => s,
        Err(local) => {
            let clients = crate::cluster::connect(&config)
                .await
                .map_err(connect_failure)?;
            crate::journal::status_from_cluster(&clients.api, &config.state_namespace, &run_id)
                .await
                .map_err(|e| {
                    Failure::new(
                        exit::BAD_INPUT,
                        format!("error: cannot read {}: {local}; and {e}", path.display()),
                    )
                })?
        }
    };
    if output == crate::cli::OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("serialisable")
        );
        return Ok(exit::OK);
    }
    println!(
        "run {}: {} — {}",
        status.run_id, status.playbook, status.state
    );
    println!(
        "  {:<28} {:<14} {:<12} {:<12} {:<26} last error",
        "NODE", "PHASE", "STATE", "STEP", "SINCE"
    );
    for (node, n) in &status.nodes {
        println!(
            "  {:<28} {:<14} {:<12} {:<12} {:<26} {}",
            node,
            n.phase,
            n.state,
            n.step.as_deref().unwrap_or("-"),
            n.since.as_deref().unwrap_or("-"),
            match (&n.last_error, &n.skipped) {
                (Some(e), _) => e.clone(),
                (None, Some(why)) => format!("skipped: {why}"),
                (None, None) => String::new(),
            }
        );
    }
    for d in &status.decisions {
        println!("  gate: {d}");
    }
    if let Some(held) = &status.finish_by_end {
        println!("  finish-by-end: {held}");
    }
    if let Some(t) = crate::journal::skipped_text(&status.skipped_lines) {
        println!("  journal: {t} (torn by a crash or a full disk)");
    }
    Ok(exit::OK)
}

/// Writes a run's journal and playbook from its cluster copy into `dir`.
pub(super) async fn fetch_run_from_cluster(
    config: &Config,
    api: &kube::Client,
    run_id: &str,
    dir: &std::path::Path,
) -> Result<(), Failure> {
    crate::journal::restore_from_cluster(api, &config.state_namespace, run_id, dir)
        .await
        .map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: no run {run_id} here ({}) and {e}\n  hint: pass the run id shown by the run (`rollgate status RUN` reads the cluster copy too)",
                    dir.display()
                ),
            )
        })?;
    eprintln!(
        "run {run_id}: journal and playbook fetched from the cluster (ConfigMap {}/{}) into {}",
        config.state_namespace,
        crate::journal::configmap_name(run_id),
        dir.display()
    );
    Ok(())
}
