//! `rollgate resume`: tells a live paused run to go on, or continues a stopped or crashed run
//! from its journal (here, or its copy in the cluster) after checking what its nodes' remote
//! commands did.

use super::plan::connect_failure;
use super::run::plan_and_run;
use super::status::{fetch_run_from_cluster, resolve_run};
use super::{Failure, load_playbook};
use crate::cluster;
use crate::config::Config;
use crate::driver::control::{self, Action};
use crate::driver::state_dir::RunsDir;
use crate::driver::{LockRequest, RunOptions};
use crate::exit;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Before resuming, asks each node whose command may have started what its record on the node
/// says (see [`crate::remote`]): running or finished, the command step reattaches; no record
/// (never started, or the node was reinstalled) is refused unless the command is safe to
/// rerun: the operator says `--command-done NODE` once they checked it.
async fn check_command_records(
    config: &crate::config::Config,
    playbook: &crate::playbook::Playbook,
    points: &crate::journal::ResumePoints,
    nodes: &[k8s_openapi::api::core::v1::Node],
) -> Result<(), String> {
    use crate::remote::{self, RecordState};
    let mut refused = Vec::new();
    for name in &points.uncertain {
        let record = remote::record_dir(&points.run_id, name);
        let address = match nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .ok_or_else(|| "the node is gone".to_owned())
            .and_then(|n| cluster::ssh_address(n, &config.ssh.address))
        {
            Ok(a) => a,
            Err(why) => {
                refused.push(format!("{name}: {why}"));
                continue;
            }
        };
        let env = Default::default();
        // Only the record is read: the command itself is not sent.
        let inv = remote::RemoteInvocation {
            run: "",
            ..remote::RemoteInvocation::for_command(&playbook.command, &address, &env, &record)
        };
        match remote::probe(&config.ssh, &inv).await {
            Ok(RecordState::NoRecord) if playbook.command.safe_to_rerun => eprintln!(
                "{name}: no record of its command on the node ({record}); it is safe to rerun: running it"
            ),
            Ok(RecordState::NoRecord) => refused.push(format!(
                "{name}: no record of its command on the node ({record} is missing: it never started, or the node was reinstalled or its /var/tmp cleared)"
            )),
            Ok(RecordState::Running) => {
                eprintln!("{name}: its command is still running on the node: reattaching")
            }
            Ok(state) => eprintln!(
                "{name}: its command ended on the node ({state:?}): its record decides (output in {record}/output)"
            ),
            Err(e) => refused.push(format!("{name}: cannot read its command's record: {e}")),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the remote command may have started on these nodes and rollgate cannot tell how it ended:\n  {}\n  \
             Check the node(s); then resume with --command-done NODE (it finished) for each, or set safe-to-rerun = true in the playbook",
            refused.join("\n  ")
        ))
    }
}

/// The playbook a resumed run continues with: the one it started with. The original when it
/// is unchanged (the copy the run kept has its secrets redacted: it is compared redacted), or
/// for runs that kept no copy; else the copy, saying so on stderr, unless the copy has
/// redacted values, which cannot run: then Err (restore the original).
fn resume_playbook(original: &std::path::Path, copy: &std::path::Path) -> Result<PathBuf, String> {
    let Ok(kept) = std::fs::read_to_string(copy) else {
        return Ok(original.to_owned());
    };
    let now = std::fs::read_to_string(original).ok();
    let unchanged = now.as_deref().is_some_and(|text| {
        text == kept || crate::playbook::redacted_text(original, text).is_ok_and(|r| r == kept)
    });
    if unchanged {
        return Ok(original.to_owned());
    }
    if kept.contains(crate::redact::REDACTED) {
        return Err(format!(
            "{} {} since the run started, and the copy the run kept ({}) has its secrets redacted: it cannot run as it is\n  \
             hint: put the playbook the run started with back at {} (or start a new run)",
            original.display(),
            if now.is_some() { "changed" } else { "is gone" },
            copy.display(),
            original.display()
        ));
    }
    match now {
        None => {}
        Some(_) => eprintln!(
            "warning: {} changed since the run started: resuming with the playbook the run started with ({}); to use the edited one, start a new run",
            original.display(),
            copy.display()
        ),
    }
    if now.is_none() {
        eprintln!(
            "{} is not here: using the copy the run kept, {}",
            original.display(),
            copy.display()
        );
    }
    Ok(copy.to_owned())
}

/// `rollgate resume [RUN]`: continues a run. A live run that a gate paused is told to go on;
/// a run whose process is gone (crashed, killed, stopped) continues from its journal.
pub async fn resume(
    config: Config,
    run: Option<&str>,
    command_done: &[String],
    schedule: &crate::cli::ScheduleArgs,
    preflight: &crate::cli::PreflightArgs,
) -> Result<u8, Failure> {
    let config = Arc::new(config);
    let runs = RunsDir::new(&config.state_dir);
    let run_id = resolve_run(&runs, run)?;
    let dir = runs.run(&run_id);
    // One connection for all a resume asks of the cluster.
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    if live_elsewhere(&config, &clients.api, &run_id).await? {
        return super::pause::ask_live_run(&config, &run_id, Action::Resume, None).await;
    }
    if !dir.journal().exists() {
        // Another machine started it: continue from its copy in the cluster.
        fetch_run_from_cluster(&config, &clients.api, &run_id, dir.path()).await?;
    }
    let journal = dir.journal();
    if let Ok(status) = crate::journal::RunStatus::from_journal(&journal)
        && status.state == "succeeded"
    {
        eprintln!("run {run_id} finished: nothing to resume");
        return Ok(exit::OK);
    }
    // The header names the playbook; whether its command is safe to rerun decides the rest.
    let original = crate::journal::resume_points(&journal, &[])
        .map(|p| p.playbook_file)
        .map_err(|e| Failure::new(exit::BAD_INPUT, format!("error: {e}")))?;
    let playbook_file = resume_playbook(&original, &dir.playbook_copy()).map_err(|e| {
        Failure::new(
            exit::BAD_INPUT,
            format!("error: cannot resume run {run_id}: {e}"),
        )
    })?;
    let playbook = load_playbook(&playbook_file)?;
    let cannot = |e: String| {
        Failure::new(
            exit::BAD_INPUT,
            format!("error: cannot resume run {run_id}: {e}"),
        )
    };
    let mut points = crate::journal::resume_points(&journal, command_done).map_err(cannot)?;
    // The nodes' annotations can be ahead of a journal fetched from the cluster copy.
    let nodes = cluster::list_nodes(&clients.api)
        .await
        .map_err(connect_failure)?;
    let records: Vec<_> = nodes.iter().map(cluster::node_record).collect();
    crate::journal::reconcile_with_nodes(&mut points, &records, command_done).map_err(cannot)?;
    if let Some(t) = crate::journal::skipped_text(&points.skipped_lines) {
        eprintln!(
            "warning: journal {}: {t} (torn by a crash or a full disk)",
            journal.display()
        );
    }
    check_command_records(&config, &playbook, &points, &nodes)
        .await
        .map_err(cannot)?;
    eprintln!(
        "resuming run {run_id} from its journal: {} node(s) done, {} skipped, {} to pick up where they stopped",
        points.done.len(),
        points.skipped.len(),
        points.from.len()
    );
    let options = RunOptions {
        dry_run: false,
        confirm_each_node: false,
        show_output: false,
        lock: LockRequest {
            // The lock the run held; an explicit ROLLGATE_LOCK_NAME wins.
            name: std::env::var("ROLLGATE_LOCK_NAME")
                .ok()
                .or_else(|| points.lock_name.clone())
                .unwrap_or_else(|| "default".into()),
            duration: points.lock_duration.unwrap_or(Duration::from_secs(30)),
            force: false,
        },
        metrics_listen: None,
        pushgateway: std::env::var("ROLLGATE_PUSHGATEWAY").ok(),
        deadline: schedule.deadline.clone(),
        ignore_window: schedule.ignore_window,
    };
    // Relative probe paths resolve against the original playbook's directory.
    let probe_base = points.playbook_file.clone();
    Box::pin(plan_and_run(
        config,
        playbook_file,
        options,
        Some(super::run::Resuming {
            probe_base,
            points,
            clients,
        }),
        false,
        preflight,
    ))
    .await
}

/// Whether the run is alive, here or on another machine (it holds its cluster lock): then a
/// resume is a request to it, not a new process continuing its journal.
async fn live_elsewhere(
    config: &Config,
    api: &kube::Client,
    run_id: &str,
) -> Result<bool, Failure> {
    // Run here and its process is gone: not live, even while its lease has not expired yet.
    if RunsDir::new(&config.state_dir).run(run_id).process_gone() {
        return Ok(false);
    }
    match control::is_live(api, &config.state_namespace, run_id).await {
        Ok(live) => Ok(live),
        // No object in the cluster (a run from before copies were kept): its journal decides.
        Err(control::ControlError::NoSuchRun(..)) => Ok(false),
        Err(e) => Err(connect_failure(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_runs_the_playbook_the_run_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let (original, copy) = (
            dir.path().join("upgrade.toml"),
            dir.path().join("copy.toml"),
        );
        // No copy (a run from before copies were kept): the original.
        std::fs::write(&original, "name = \"a\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy).unwrap(), original);
        // A copy without secrets: the original while unchanged, else the copy.
        std::fs::write(&copy, "name = \"a\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy).unwrap(), original);
        std::fs::write(&original, "name = \"edited\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy).unwrap(), copy);
        std::fs::remove_file(&original).unwrap();
        assert_eq!(resume_playbook(&original, &copy).unwrap(), copy);
        // A copy with redacted secrets: the original when it redacts to the copy; else refused.
        let with_secret =
            "name = \"a\"\n[command]\nrun = \"true\"\nenv = { TOKEN = \"s3cret-value\" }\n";
        std::fs::write(&original, with_secret).unwrap();
        let redacted = crate::playbook::redacted_text(&original, with_secret).unwrap();
        assert!(
            !redacted.contains("s3cret-value") && redacted.contains("TOKEN = \"REDACTED\""),
            "{redacted}"
        );
        std::fs::write(&copy, &redacted).unwrap();
        assert_eq!(resume_playbook(&original, &copy).unwrap(), original);
        std::fs::write(&original, with_secret.replace("true", "false")).unwrap();
        let why = resume_playbook(&original, &copy).unwrap_err();
        assert!(why.contains("redacted") && why.contains("hint"), "{why}");
        std::fs::remove_file(&original).unwrap();
        assert!(resume_playbook(&original, &copy).is_err());
    }
}
