//! The operator at the terminal, and who they are: yes/no prompts, stop signals (Ctrl-C once
//! → graceful, twice → immediate; SIGTERM → graceful), `user@host`, and run ids.

use crate::engine::StopRequest;
use std::io::{BufRead, Write};
use tokio::sync::watch;

/// How the run talks to whoever started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interaction {
    /// JSON lines on stderr instead of the terminal view.
    pub json: bool,
    /// A person at a terminal who can answer prompts.
    pub interactive: bool,
}

impl Interaction {
    /// No terminal, or asked for: JSON lines and no prompts.
    pub fn detect(log_format: Option<crate::config::LogFormat>) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        let json = log_format.map_or(!tty, |f| f == crate::config::LogFormat::Json);
        Self {
            json,
            interactive: tty && std::io::stdin().is_terminal() && !json,
        }
    }
}

/// Asks a yes/no question on the terminal; anything but yes is no.
pub fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// Ctrl-C once → graceful, twice → immediate; SIGTERM → graceful.
pub fn watch_signals(tx: watch::Sender<StopRequest>) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() { return; }
                    let next = if *tx.borrow() == StopRequest::None { StopRequest::Graceful } else { StopRequest::Immediate };
                    let _ = tx.send(next);
                }
                _ = sigterm => {
                    if *tx.borrow() == StopRequest::None {
                        let _ = tx.send(StopRequest::Graceful);
                    }
                }
            }
        }
    });
}

/// Who runs this: `user@host` (in the lock holder and the journal header).
pub fn user_at_host() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // No login variables (a service, a container): the name of the real uid.
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == uid)
                .map_or_else(|| format!("uid {uid}"), |f| f[0].to_owned())
        });
    format!("{user}@{host}")
}

/// A sortable, readable run id: UTC time plus a few random hex digits.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    let nanos = now.subsec_nanosecond() as u32 ^ std::process::id().wrapping_mul(2654435761);
    format!("{}-{:04x}", now.strftime("%Y%m%d-%H%M%S"), nanos & 0xffff)
}
