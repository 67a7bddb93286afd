//! `rollgate report [RUN]`: the run report (HTML with a timeline, Markdown summary) rebuilt from
//! the run's journal, written into the run's directory or `--out`; prints the paths written.

use super::Failure;
use super::status::resolve_run;
use crate::cli::ReportFormat;
use crate::config::Config;
use crate::driver::state_dir::RunsDir;
use crate::exit;
use crate::report::run_report::{self, Formats, RunReport};
use std::path::Path;

/// The most recent run ids in `runs` that have a journal (for a hint).
fn known_runs(runs: &RunsDir) -> Vec<String> {
    let mut ids: Vec<String> = runs
        .list()
        .into_iter()
        .filter(|(_, dir)| dir.journal().is_file())
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids.split_off(ids.len().saturating_sub(5))
}

pub async fn run(
    config: Config,
    run: Option<&str>,
    out: Option<&Path>,
    output: ReportFormat,
) -> Result<u8, Failure> {
    let runs = RunsDir::new(&config.state_dir);
    let run_id = resolve_run(&runs, run)?;
    let run_dir = runs.run(&run_id);
    let dir = run_dir.path();
    let journal = run_dir.journal();
    // Not here, but named: another machine ran it; its journal may be in the cluster copy.
    if run.is_some() && !journal.is_file() {
        let fetched = match crate::cluster::connect(&config).await {
            Ok(clients) => {
                super::status::fetch_run_from_cluster(&config, &clients.api, &run_id, dir).await
            }
            Err(e) => Err(super::plan::connect_failure(e)),
        };
        if let Err(e) = fetched {
            eprintln!("{}", e.message);
        }
    }
    if !journal.is_file() {
        let known = known_runs(&runs);
        let hint = if known.is_empty() {
            "pass the --state-dir the run used (the report needs the run's journal; from another machine `rollgate status RUN` shows its cluster copy)".to_owned()
        } else {
            format!("recent runs there: {}", known.join(", "))
        };
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: no journal for run {run_id:?} in {}\n  hint: {hint}",
                runs.path().display()
            ),
        ));
    }
    let report = RunReport::load(&journal).map_err(|e| {
        Failure::new(
            exit::BAD_INPUT,
            format!("error: {e}\n  hint: the journal's first line must be the run's header"),
        )
    })?;
    if let Some(t) = crate::journal::skipped_text(&report.skipped_lines) {
        eprintln!(
            "warning: journal {}: {t} (torn by a crash or a full disk)",
            journal.display()
        );
    }
    let formats = match output {
        ReportFormat::Html => Formats::Html,
        ReportFormat::Markdown => Formats::Markdown,
        ReportFormat::Both => Formats::Both,
    };
    let written = run_report::write(&report, out.unwrap_or(dir), formats)
        .map_err(|e| Failure::new(exit::INTERNAL, format!("error: {e}")))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(exit::OK)
}
