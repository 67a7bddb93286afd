//! The run report (issue 6) after a real rollout on the test cluster: written at the end of the
//! run, rewritten by `rollgate report`, and rendered by headless Chromium — the DOM has one
//! timeline row per node and the screenshot shows the steps' colours.

mod support;

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The steps' colours in the report (src/report/run_report/html.rs `step_color`).
const DRAIN: [u8; 3] = [232, 134, 42];
const COMMAND: [u8; 3] = [47, 126, 216];
const WAIT_READY: [u8; 3] = [20, 165, 165];

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|b| d.join(b)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is missing: the report test renders the HTML in headless Chromium.\n\
                 Install it with `cargo xtask testenv install` (Debian package chromium)."
            )
        })
}

/// Runs headless Chromium on `page` with `args`, killed (its whole process group) after 60 s.
fn headless(page: &Path, args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let child = cmd.spawn().expect("start chromium");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = done_rx.recv_timeout(CHROMIUM_TIMEOUT).is_err();
        if timed_out {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        timed_out
    });
    let out = child.wait_with_output().expect("wait for chromium");
    let _ = done_tx.send(());
    assert!(
        !watchdog.join().unwrap(),
        "chromium did not finish within {CHROMIUM_TIMEOUT:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Width, height and how many pixels have each of `colors`.
fn png_colors(path: &Path, colors: &[[u8; 3]]) -> (u32, u32, Vec<usize>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("the screenshot exists"));
    let mut reader = png::Decoder::new(file).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let mut counts = vec![0; colors.len()];
    for px in buf[..info.buffer_size()].chunks_exact(channels) {
        if let Some(i) = colors.iter().position(|c| c[..] == px[..3]) {
            counts[i] += 1;
        }
    }
    (info.width, info.height, counts)
}

#[tokio::test]
async fn the_report_of_a_real_rollout_renders_in_chromium_with_one_timeline_row_per_node() {
    let suite = unique("report");
    let (_nodes, names) = TestNodes::numbered(&suite, 3);
    let ns = TestNamespace::new("report");
    deployment_with_pdb(&ns.0, "web", &suite, 3, 1);
    let dir = tempfile::tempdir().unwrap();
    let playbook = dir.path().join("playbook.toml");
    std::fs::write(
        &playbook,
        format!(
            "name = \"report <demo>\"\ntarget-kubelet-version = \"v1.36.3\"\n\
             [[phase]]\nname = \"first\"\nnodes = [\"{}\"]\n\
             [[phase]]\nname = \"rest\"\nnodes = [\"{}\", \"{}\"]\n\
             [drain]\ntimeout = \"1m\"\n\
             [command]\nrun = '{}'\ntimeout = \"1m\"\nenv = {{ FAKE_UPGRADE_SECONDS = \"1\" }}\n\
             [ready]\ntimeout = \"30s\"\n[settle]\ntimeout = \"1m\"\n{}",
            names[0],
            names[1],
            names[2],
            env().state_dir.join("bin/kwok-node-upgrade").display(),
            monitor_scope(&suite, Some(&ns.0), "")
        ),
    )
    .unwrap();
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let (code, _, stderr) = run_rollgate(cmd, 3 * MINUTE);
    assert_eq!(code, 0, "run failed:\n{stderr}");
    let events = events(&stderr);
    let run_id = named(&events, "run-started")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run_dir = dir.path().join("runs").join(&run_id);
    let html = run_dir.join("report.html");
    let md = run_dir.join("report.md");

    // The run wrote the report itself and said where.
    let written = named(&events, "report-written");
    assert_eq!(written.len(), 1, "{stderr}");
    let paths: Vec<&str> = written[0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paths, [html.to_str().unwrap(), md.to_str().unwrap()]);
    assert!(html.is_file() && md.is_file());
    let journal = std::fs::read_to_string(run_dir.join("journal.jsonl")).unwrap();
    let header: Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    assert!(
        header["started_by"]
            .as_str()
            .is_some_and(|s| s.contains('@')),
        "{header}"
    );

    // `rollgate report` (the latest run) writes them again and prints their paths.
    std::fs::remove_file(&html).unwrap();
    std::fs::remove_file(&md).unwrap();
    let started = Instant::now();
    let (code, stdout, stderr) = run_rollgate(
        {
            let mut c = rollgate(dir.path());
            c.arg("report");
            c
        },
        MINUTE,
    );
    let generation = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [html.to_str().unwrap(), md.to_str().unwrap()]
    );
    // Another directory, Markdown only; an unknown run is bad input with a hint.
    let out = dir.path().join("elsewhere");
    let mut c = rollgate(dir.path());
    c.args(["report", &run_id, "-o", "markdown", "--out"])
        .arg(&out);
    let (code, _, stderr) = run_rollgate(c, MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("report.md").is_file() && !out.join("report.html").exists());
    let mut c = rollgate(dir.path());
    c.args(["report", "no-such-run"]);
    let (code, _, stderr) = run_rollgate(c, MINUTE);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no journal for run") && stderr.contains(&run_id),
        "the hint lists the runs there: {stderr}"
    );

    let markdown = std::fs::read_to_string(&md).unwrap();
    assert!(
        markdown.contains("succeeded")
            && markdown.contains("- Nodes: 3 done, 0 failed, 0 not started"),
        "{markdown}"
    );
    assert!(markdown.contains("**report &lt;demo&gt;**"), "{markdown}");
    for (n, phase) in [
        (&names[0], "first"),
        (&names[1], "rest"),
        (&names[2], "rest"),
    ] {
        assert!(
            markdown.contains(&format!("| {n} | {phase} | done | ")),
            "a row for {n}: {markdown}"
        );
    }

    // Chromium: the DOM has exactly one timeline row per node...
    let started = Instant::now();
    let dom = String::from_utf8(headless(&html, &["--dump-dom"]).stdout).unwrap();
    assert_eq!(
        dom.matches("class=\"timeline-row\"").count(),
        3,
        "one timeline row per node in the rendered DOM:\n{dom}"
    );
    for n in &names {
        assert_eq!(dom.matches(&format!("data-node=\"{n}\"")).count(), 1, "{n}");
    }
    assert!(
        dom.contains("report &lt;demo&gt;"),
        "the playbook name is escaped"
    );
    // ... and the screenshot shows the timeline's bars in the steps' colours.
    let shot = dir.path().join("report.png");
    headless(&html, &[&format!("--screenshot={}", shot.display())]);
    let render = started.elapsed();
    // To look at them: ROLLGATE_TEST_KEEP_REPORT=DIR keeps the page and the screenshot there.
    if let Some(keep) = std::env::var_os("ROLLGATE_TEST_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&html, keep.join("report.html")).unwrap();
        std::fs::copy(&shot, keep.join("report.png")).unwrap();
    }
    let (w, h, counts) = png_colors(&shot, &[DRAIN, COMMAND, WAIT_READY]);
    assert_eq!((w, h), (1200, 900), "the screenshot has the window's size");
    // Every step keeps at least 3 x 14 px per node; the command and wait-ready bars are seconds
    // long. The legend's 12 x 12 swatch of each colour does not suffice on its own.
    const SWATCH: usize = 12 * 12;
    let [drain, command, wait_ready] = counts[..] else {
        unreachable!()
    };
    assert!(
        drain >= SWATCH + 3 * 42,
        "drain bars are on screen: {drain} px of rgb{DRAIN:?}"
    );
    assert!(
        command >= SWATCH + 3 * 14 * 20,
        "command bars are on screen: {command} px of rgb{COMMAND:?}"
    );
    assert!(
        wait_ready >= SWATCH + 3 * 42,
        "wait-ready bars are on screen: {wait_ready} px of rgb{WAIT_READY:?}"
    );
    eprintln!(
        "report generation (rollgate report, process included): {generation:?}; chromium (dump-dom + screenshot): {render:?}; pixels drain {drain}, command {command}, wait-ready {wait_ready}"
    );
}
