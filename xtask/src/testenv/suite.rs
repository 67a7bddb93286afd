//! `cargo xtask test` and `cargo xtask bench`: an environment around a cargo run.

use super::{UpOptions, down, install, up};
use crate::paths::{self, state_dir};
use crate::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// `cargo xtask test`: install, (re)start the environment, lint, run every test, stop.
pub fn run_test_suite(cargo_test_args: &[String], no_lint: bool) -> Result<ExitCode> {
    let started = Instant::now();
    install()?;
    down()?;
    let up_started = Instant::now();
    let result = up(&UpOptions::default()).and_then(|_| {
        eprintln!(
            "[testenv] environment up in {:.1}s",
            up_started.elapsed().as_secs_f64()
        );
        let root = paths::workspace_root();
        if !no_lint {
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
        }
        let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
        if !cargo_test_args.is_empty() {
            args.push("--".into());
            args.extend(cargo_test_args.iter().cloned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cargo_bounded(&root, &args, TEST_DEADLINE)
    });
    let stopped = down();
    eprintln!(
        "[testenv] test run took {:.1}s in all",
        started.elapsed().as_secs_f64()
    );
    result?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

/// Where `cargo xtask bench` runs its own environment unless `ROLLGATE_TESTENV_STATE` says.
const BENCH_STATE: &str = "/tmp/rollgate-bench";
/// Its port offset unless `ROLLGATE_TESTENV_PORT_OFFSET` says.
const BENCH_PORT_OFFSET: u16 = 100;

/// `cargo xtask bench`: install, start an environment of its own (own state directory and
/// ports, so a running test environment is never disturbed), run the benchmarks, stop it, and
/// print every bench's rows as one table.
pub fn run_bench() -> Result<ExitCode> {
    let state = std::env::var_os("ROLLGATE_TESTENV_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BENCH_STATE));
    let offset = match std::env::var_os("ROLLGATE_TESTENV_PORT_OFFSET") {
        Some(_) => paths::port_offset()?,
        None => BENCH_PORT_OFFSET,
    };
    if offset == 0 || state == Path::new("/tmp/rollgate-testenv") {
        return Err(format!(
            "the bench restarts its environment: it refuses the default test environment's state or ports ({}, offset {offset})\n  \
             hint: unset ROLLGATE_TESTENV_STATE/ROLLGATE_TESTENV_PORT_OFFSET (the bench uses {BENCH_STATE}, offset {BENCH_PORT_OFFSET})",
            state.display()
        ));
    }
    paths::set_override(state.clone(), offset);
    install()?;
    down()?;
    let root = paths::workspace_root();
    let table = state.with_extension("table");
    let _ = fs::remove_file(&table);
    let started = Instant::now();
    let result = up(&UpOptions::default())
        .and_then(|_| cargo_env(&root, &["bench", "--bench", "drain"], &table))
        .and_then(|_| cargo_env(&root, &["bench", "--bench", "fleet"], &table))
        .and_then(|_| cargo_env(&root, &["bench", "--bench", "offline"], &table));
    let stopped = down();
    if let Ok(rows) = fs::read_to_string(&table) {
        println!(
            "\n== cargo xtask bench: {} cores, {:.1} min in all ==\n{rows}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            started.elapsed().as_secs_f64() / 60.0
        );
    }
    result?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

/// `cargo ARGS` with the environment's state and the table file each bench appends its rows to.
fn cargo_env(root: &Path, args: &[&str], table: &Path) -> Result<()> {
    eprintln!("[xtask] cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .env("ROLLGATE_TESTENV_STATE", state_dir())
        .env("ROLLGATE_BENCH_TABLE", table)
        .status()
        .context("run cargo")?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

/// A hung test must not hang CI: the whole `cargo test` is bounded (CI allows 90 minutes).
const TEST_DEADLINE: Duration = Duration::from_secs(45 * 60);

fn cargo_bounded(root: &Path, args: &[&str], deadline: Duration) -> Result<()> {
    eprintln!(
        "[xtask] cargo {} (at most {} min)",
        args.join(" "),
        deadline.as_secs() / 60
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new("timeout")
        .args(["--kill-after=30", &deadline.as_secs().to_string(), &cargo])
        .args(args)
        .current_dir(root)
        .env("ROLLGATE_TESTENV_STATE", state_dir())
        .status()
        .context("run cargo under timeout")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(124) | Some(137) => Err(format!(
            "cargo {} did not finish within {} minutes",
            args.join(" "),
            deadline.as_secs() / 60
        )),
        _ => Err(format!("cargo {} failed ({status})", args.join(" "))),
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    eprintln!("[xtask] cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .env("ROLLGATE_TESTENV_STATE", state_dir())
        .status()
        .context("run cargo")?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}
