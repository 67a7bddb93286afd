//! Offline figures for what grows with the fleet, no cluster needed: the run report of a
//! journal with hundreds of nodes (parse + HTML + Markdown, sizes, peak memory), the run
//! status read from the same journal, and the maintenance-window checks the scheduler makes
//! every second (a daily window, and a rare cron whose next opening is weeks away).
//! Run with `cargo bench --bench offline` (also part of `cargo xtask bench`). Prints a table;
//! asserts nothing about timings.

use rollgate::report::run_report::{RunReport, html, markdown};
use rollgate::window::{Cron, OutsideWindow, Window, WindowSpec, parse_days, parse_time};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

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
        for step in [
            "cordon",
            "drain",
            "command",
            "wait-ready",
            "uncordon",
            "settle",
        ] {
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

fn main() {
    println!("run report (per run; journal parsed, HTML and Markdown rendered)");
    println!(
        "{:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "nodes", "journal", "parse", "html", "markdown", "html size", "peak RSS"
    );
    for nodes in [50, 200, 500, 1000] {
        let text = journal(nodes);
        let (parse, report) = time(10, || RunReport::from_journal(&text).expect("a header"));
        let (html_t, page) = time(10, || html::render(&report));
        let (md_t, _) = time(10, || markdown::render(&report));
        println!(
            "{:>6} {:>9} KiB {:>10.1?} {:>10.1?} {:>10.1?} {:>6} KiB {:>8} KiB",
            nodes,
            text.len() / 1024,
            parse,
            html_t,
            md_t,
            page.len() / 1024,
            peak_rss_kib()
        );
    }

    println!("\nmaintenance window checks (what the scheduler does each second)");
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
        println!(
            "  {name:<22} is_open {open_t:>9.1?}   next_open {next_t:>9.1?} (-> {})",
            next.map(|t| t.to_string()).unwrap_or_default()
        );
    }
    println!("  (the scheduler searches for the next opening once per closing, not every second)");
    // finish-by-end: while the window is open, its close is computed every second.
    let inside: jiff::Timestamp = "2026-12-01T01:30:00Z".parse().unwrap(); // Tue 02:30 Berlin
    for (name, w) in [
        ("mon-thu 01:00-05:00", &daily),
        ("cron 0 1 1 * * for 4h", &monthly),
    ] {
        let (t, close) = time(100, || w.closes_at(inside));
        println!(
            "  {name:<22} closes_at {t:>9.1?} (-> {})",
            close.map(|t| t.to_string()).unwrap_or_default()
        );
    }
}
