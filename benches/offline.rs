//! Offline figures for what grows with the fleet, no cluster needed: the run report of a
//! journal with hundreds of nodes (parse + HTML + Markdown, sizes, peak memory), the run
//! status read from the same journal, and the maintenance-window checks the scheduler makes
//! every second (a daily window, and a rare cron whose next opening is weeks away), and what
//! one copy of the run into the cluster costs locally (status read from the journal, journal
//! compressed: [`rollgate::journal::cluster_copy`] does both at every copy).
//! Run with `cargo bench --bench offline` (also part of `cargo xtask bench`, whose one table
//! gets these rows too). Prints a table; asserts nothing about timings.

#[path = "../tests/support/mod.rs"]
mod support;

use rollgate::journal::RunStatus;
use rollgate::report::run_report::{RunReport, html, markdown};
use rollgate::window::{Cron, OutsideWindow, Window, WindowSpec, parse_days, parse_time};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};
use support::bench_row;

/// A finished run's journal: `nodes` nodes, six steps each, a drain with evictions.
fn journal(nodes: usize) -> String {
    let mut out = String::new();
    let plan: Vec<[String; 2]> = (0..nodes)
        .map(|i| {
            [
                format!("node-{i:04}"),
                if i < 3 { "cp" } else { "workers" }.into(),
            ]
        })
        .collect();
    let header = serde_json::json!({"journal": 1, "run_id": "bench", "playbook": "bench",
        "playbook_file": "/bench.toml", "dry_run": false, "started_by": "ops@bastion", "nodes": plan});
    let _ = writeln!(out, "{header}");
    let start = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let mut ms = 0i64;
    let mut line = |ms: i64, v: serde_json::Value| {
        let mut v = v;
        let at = start
            .checked_add(jiff::SignedDuration::from_millis(ms))
            .unwrap();
        v["at"] = at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into();
        let _ = writeln!(out, "{v}");
    };
    line(
        ms,
        serde_json::json!({"event": "run-started", "run_id": "bench", "playbook": "bench", "nodes": nodes, "dry_run": false}),
    );
    for [node, phase] in &plan {
        line(
            ms,
            serde_json::json!({"event": "node-started", "node": node, "phase": phase}),
        );
        for step in rollgate::vocab::Step::ALL.map(|s| s.name()) {
            line(
                ms,
                serde_json::json!({"event": "step-started", "node": node, "step": step}),
            );
            ms += 1500;
            line(
                ms,
                serde_json::json!({"event": "step-finished", "node": node, "step": step, "elapsed_ms": 1500, "detail": "12 evicted, 3 skipped"}),
            );
        }
        line(
            ms,
            serde_json::json!({"event": "node-done", "node": node, "elapsed_ms": 9000}),
        );
    }
    line(
        ms,
        serde_json::json!({"event": "run-finished", "outcome": "succeeded", "done": nodes, "failed": 0, "not_started": 0, "elapsed_ms": ms}),
    );
    out
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut last = f();
    let started = Instant::now();
    for _ in 0..runs {
        last = f();
    }
    (started.elapsed() / runs, last)
}

/// What one copy into the cluster does locally: the status read from the journal file, and
/// the journal compressed. Returns the compressed size.
fn copy_work(path: &std::path::Path) -> usize {
    let status = RunStatus::from_journal(path).expect("the journal reads");
    let _ = serde_json::to_string_pretty(&status);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&std::fs::read(path).expect("the journal reads"))
        .expect("compress");
    enc.finish().expect("compress").len()
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    bench_row("");
    bench_row(
        "run report (per run; journal parsed, HTML and Markdown rendered) and the run's copy into the cluster (status + gzip, at every copy), no cluster:",
    );
    bench_row(&format!(
        "  {:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "nodes",
        "journal",
        "parse",
        "html",
        "markdown",
        "html size",
        "peak RSS",
        "copy: local",
        "gzip"
    ));
    for nodes in [50, 200, 500, 1000] {
        let text = journal(nodes);
        let (parse, report) = time(10, || RunReport::from_journal(&text).expect("a header"));
        let (html_t, page) = time(10, || html::render(&report));
        let (md_t, _) = time(10, || markdown::render(&report));
        let path = dir.path().join(format!("journal-{nodes}.jsonl"));
        std::fs::write(&path, &text).expect("write the journal");
        let (copy_t, gz) = time(10, || copy_work(&path));
        bench_row(&format!(
            "  {:>6} {:>9} KiB {:>10.1?} {:>10.1?} {:>10.1?} {:>6} KiB {:>8} KiB {:>12.1?} {:>5} KiB",
            nodes,
            text.len() / 1024,
            parse,
            html_t,
            md_t,
            page.len() / 1024,
            peak_rss_kib(),
            copy_t,
            gz / 1024
        ));
    }

    bench_row("");
    bench_row("maintenance window checks (what the scheduler does each second), no cluster:");
    let utc = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let daily = Window {
        spec: WindowSpec::Daily {
            days: parse_days(&["mon-thu".into()]).unwrap(),
            start: parse_time("01:00").unwrap(),
            end: parse_time("05:00").unwrap(),
        },
        tz: utc.clone(),
        tz_name: "Europe/Berlin".into(),
        outside: OutsideWindow::Wait,
        finish_by_end: false,
    };
    let monthly = Window {
        spec: WindowSpec::Cron {
            cron: Cron::parse("0 1 1 * *").unwrap(),
            duration: Duration::from_secs(4 * 3600),
        },
        tz: utc,
        tz_name: "Europe/Berlin".into(),
        outside: OutsideWindow::Wait,
        finish_by_end: false,
    };
    // Friday noon: the daily window reopens Monday night, the monthly one in a week.
    let now: jiff::Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
    for (name, w) in [
        ("mon-thu 01:00-05:00", &daily),
        ("cron 0 1 1 * * for 4h", &monthly),
    ] {
        let (open_t, _) = time(1000, || w.is_open(now));
        let (next_t, next) = time(5, || w.next_open(now));
        bench_row(&format!(
            "  {name:<22} is_open {open_t:>9.1?}   next_open {next_t:>9.1?} (-> {})",
            next.map(|t| t.to_string()).unwrap_or_default()
        ));
    }
    bench_row("  (the scheduler searches for the next opening once per closing, not every second)");
    // finish-by-end: while the window is open, its close is computed every second.
    let inside: jiff::Timestamp = "2026-12-01T01:30:00Z".parse().unwrap(); // Tue 02:30 Berlin
    for (name, w) in [
        ("mon-thu 01:00-05:00", &daily),
        ("cron 0 1 1 * * for 4h", &monthly),
    ] {
        let (t, close) = time(100, || w.closes_at(inside));
        bench_row(&format!(
            "  {name:<22} closes_at {t:>9.1?} (-> {})",
            close.map(|t| t.to_string()).unwrap_or_default()
        ));
    }
}
