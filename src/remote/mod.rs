//! The remote command over SSH, through the openssh crate (the system `ssh`: ssh_config,
//! ProxyJump, agents and certificates work as they do for the operator).
//!
//! - The command runs **detached on the node** ([`WRAPPER`]): in its own session, under
//!   `timeout -s KILL`, its output appended to `DIR/output` and its exit status written to
//!   `DIR/status`, where DIR is [`record_dir`] (one per run and node, under `/var/tmp`, which
//!   survives a reboot). rollgate streams the output while it runs. If the SSH session is lost
//!   (Ctrl-C, SIGKILL or a crash of rollgate, a network cut), the command goes on; rollgate
//!   reattaches (at once after a dropped connection, or on `rollgate resume`) and its recorded
//!   exit status decides. A wrapper that finds DIR already there attaches instead of starting
//!   the command again: it never runs twice in one run.
//! - The local `ssh` client runs in its own process group, so a terminal's Ctrl-C reaches
//!   rollgate only (which then finishes the nodes in flight), not the SSH session.
//! - Host keys are checked strictly unless the config says `known-hosts = "accept-new"`.
//! - Node facts and the playbook's environment reach the command as environment variables set
//!   by `env NAME=VALUE ...`, every word shell-escaped; nothing is spliced into a shell string
//!   except the playbook's own `run` line, which is one escaped argument of `sh -c`.
//! - `[command] sudo = true` runs the whole wrapper with `sudo -n`, so the timeout (root) can
//!   kill a command that sudo would otherwise start in a session of its own.
//! - Needs on the node: a POSIX `sh`, `setsid`, `timeout` and GNU `tail` (`--pid`).

mod address;
mod words;

pub use address::check_address;
pub use words::{describe_words, remote_words};

use crate::config::{KnownHostsPolicy, SshConfig};
use crate::vocab::Stream;
use openssh::{KnownHosts, SessionBuilder};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use words::shell_quote;

/// The shell script run on the node around the playbook's command.
pub const WRAPPER: &str = include_str!("wrapper.sh");
/// Prefix of the wrapper's control lines (on stderr).
const CONTROL: &str = "ROLLGATE:";
/// How many output lines a failure message quotes.
const TAIL_LINES: usize = 5;
/// Exit status of a command killed by `timeout -s KILL` (128 + 9).
const KILLED: i32 = 137;
/// How long after the command's own timeout rollgate keeps trying to reattach to it.
const REATTACH_GRACE: Duration = Duration::from_secs(60);
/// Pause between two attempts to reattach after a lost SSH session.
const REATTACH_PAUSE: Duration = Duration::from_secs(2);

/// Where the command's record lives on the node: `/var/tmp/rollgate-RUN-NODE` (`output`,
/// `status`, `pid`, `boot`).
pub fn record_dir(run_id: &str, node: &str) -> String {
    format!("/var/tmp/rollgate-{run_id}-{node}")
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The destination is not an IP address or a DNS name ([`check_address`]): nothing ran.
    #[error("refusing to SSH to this node: {0}")]
    BadAddress(String),
    #[error("cannot connect to {destination} over SSH: {source}")]
    Connect {
        destination: String,
        source: openssh::Error,
    },
    #[error("cannot start the remote command on {destination}: {message}")]
    Spawn {
        destination: String,
        message: String,
    },
    #[error("the command wrapper failed on {destination} (exit status {code}){}", tail_text(.tail))]
    Wrapper {
        destination: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error("the remote command exited with status {code} on {destination}{}", tail_text(.tail))]
    Exit {
        destination: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error("the remote command on {destination} ended without an exit status (its process is gone: killed, or the node rebooted{}); its output is in {record}/output{}", if *.rebooted { " — it did" } else { "?" }, tail_text(.tail))]
    Lost {
        destination: String,
        record: String,
        rebooted: bool,
        tail: Vec<String>,
    },
    #[error("lost the SSH session to {destination} and could not attach again within {waited:?}: the command may still run or have ended on the node; its record is {record} (`rollgate resume` attaches to it){}", tail_text(.tail))]
    Unreachable {
        destination: String,
        record: String,
        waited: Duration,
        tail: Vec<String>,
    },
    #[error("the remote command was killed after its {timeout:?} timeout on {destination}{}", tail_text(.tail))]
    Timeout {
        destination: String,
        timeout: Duration,
        tail: Vec<String>,
    },
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

/// One command to run on one node.
pub struct RemoteInvocation<'a> {
    pub address: &'a str,
    pub user: Option<&'a str>,
    pub run: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    /// The node's record directory ([`record_dir`]).
    pub record: &'a str,
    /// Run the wrapper with `sudo -n`.
    pub sudo: bool,
    /// Secret variables (`env-from-runner`): sent on the wrapper's standard input, which
    /// exports them for the command; never a word of a command line.
    pub secret_env: &'a BTreeMap<String, String>,
}

impl<'a> RemoteInvocation<'a> {
    /// The playbook's command on one node: at `address`, with `env`, its record in `record`.
    pub fn for_command(
        command: &'a crate::playbook::RemoteCommand,
        address: &'a str,
        env: &'a BTreeMap<String, String>,
        record: &'a str,
    ) -> Self {
        Self {
            address,
            user: command.user.as_deref(),
            run: &command.run,
            env,
            timeout: command.timeout,
            record,
            sudo: command.sudo,
            secret_env: &command.secret_env.0,
        }
    }
}

/// What the wrapper reports while the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteEvent {
    Output(Stream, String),
    /// Something the operator should know (started, reattached, connection lost).
    Note(String),
}

/// What a node's record says about the command ([`probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// No record: the command never started in this run, or the record was removed
    /// (node reinstalled).
    NoRecord,
    Running,
    Exited(i32),
    /// No exit status, and the node booted since the command started.
    Rebooted,
    /// No exit status, and its process is gone.
    Lost,
}

impl RecordState {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "no-record" => Self::NoRecord,
            "running" | "starting" => Self::Running,
            "rebooted" => Self::Rebooted,
            "lost" => Self::Lost,
            other => Self::Exited(other.strip_prefix("exit ")?.trim().parse().ok()?),
        })
    }
}

/// How the command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited 0.
    Exited,
    /// The node rebooted before the command recorded an exit status.
    Rebooted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Start the command, or attach to it if this run started it already.
    Start,
    /// A new attempt after a recorded failure: the old record is moved aside first.
    Restart,
    /// Only say what the record holds.
    Probe,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Start => "start",
            Mode::Restart => "restart",
            Mode::Probe => "probe",
        }
    }
}

fn builder(ssh: &SshConfig, user: Option<&str>) -> SessionBuilder {
    let mut b = SessionBuilder::default();
    b.known_hosts_check(match ssh.known_hosts {
        KnownHostsPolicy::Strict => KnownHosts::Strict,
        KnownHostsPolicy::AcceptNew => KnownHosts::Add,
    });
    b.connect_timeout(ssh.connect_timeout);
    b.server_alive_interval(Duration::from_secs(15));
    b.control_directory(std::env::temp_dir());
    // The connection master outlives a runner that is killed (SIGKILL cannot clean up); idle
    // for a minute, it exits by itself instead of staying forever (openssh's default).
    b.control_persist(openssh::ControlPersist::IdleFor(
        std::num::NonZeroUsize::new(60).expect("non-zero"),
    ));
    if let Some(f) = &ssh.config_file {
        b.config_file(f);
    }
    if let Some(u) = user.map(str::to_owned).or_else(|| ssh.user.clone()) {
        b.user(u);
    }
    if let Some(p) = ssh.port {
        b.port(p);
    }
    if let Some(k) = &ssh.identity_file {
        b.keyfile(k);
    }
    if let Some(j) = &ssh.jump_host {
        b.jump_hosts([j]);
    }
    if let Some(k) = &ssh.known_hosts_file {
        b.user_known_hosts_file(k);
    }
    b
}

/// How one SSH session with the wrapper ended.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The wrapper reported the record's state at its end.
    Record(RecordState),
    /// No final control line: the connection (or the local ssh) went away.
    Disconnected(String),
    /// The wrapper itself failed (e.g. `sudo -n` wants a password).
    WrapperFailed(i32),
}

async fn connect(
    ssh: &SshConfig,
    inv: &RemoteInvocation<'_>,
) -> Result<openssh::Session, RemoteError> {
    check_address(inv.address).map_err(RemoteError::BadAddress)?;
    builder(ssh, inv.user)
        .connect(inv.address)
        .await
        .map_err(|source| RemoteError::Connect {
            destination: inv.address.to_owned(),
            source,
        })
}

/// Runs the wrapper once over the session's control socket. The local `ssh` is a child in
/// its own process group (a terminal's Ctrl-C does not reach it), killed if this future is
/// dropped (which leaves the remote command running).
async fn one_session(
    session: &openssh::Session,
    words: &[String],
    stdin: Vec<u8>,
    on_event: &mut (impl FnMut(RemoteEvent) + Send),
    tail: &mut Vec<String>,
    seen: &mut usize,
    started: &mut bool,
) -> Result<SessionEnd, String> {
    let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-S")
        .arg(session.control_socket())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=no",
            "-T",
            "-p",
            "9",
            "none",
            "--",
        ])
        .arg(line.join(" "))
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
    // The secrets, then end of file (the wrapper reads its standard input to the end first).
    let mut input = child.stdin.take().expect("stdin is piped");
    let feed = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = input.write_all(&stdin).await;
        let _ = input.shutdown().await;
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, String)>();
    let pump = |stream: Stream, reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>| {
        forward_lines(stream, reader, tx.clone())
    };
    let out_task = tokio::spawn(pump(Stream::Stdout, Box::new(stdout)));
    let err_task = tokio::spawn(pump(Stream::Stderr, Box::new(stderr)));
    drop(tx);
    let mut end: Option<RecordState> = None;
    let mut errors: Vec<String> = Vec::new();
    while let Some((stream, line)) = rx.recv().await {
        if stream == Stream::Stderr
            && let Some(control) = line.strip_prefix(CONTROL)
        {
            let (what, rest) = control.split_once(' ').unwrap_or((control, ""));
            match what {
                "end" | "state" => end = RecordState::parse(rest),
                "archived" => on_event(RemoteEvent::Note(format!(
                    "a new attempt: the record of the failed one was moved to {rest}"
                ))),
                "started" => {
                    *started = true;
                    on_event(RemoteEvent::Note(format!(
                        "command started detached on the node; output in {rest}/output, exit status in {rest}/status"
                    )))
                }
                "attached" => {
                    *started = true;
                    on_event(RemoteEvent::Note(format!(
                        "attached to the command already started on the node ({rest})"
                    )))
                }
                _ => errors.push(control.to_owned()),
            }
            continue;
        }
        if stream == Stream::Stderr {
            errors.push(line.clone());
        } else {
            *seen += 1;
        }
        if tail.len() == TAIL_LINES {
            tail.remove(0);
        }
        tail.push(line.clone());
        on_event(RemoteEvent::Output(stream, line));
    }
    let _ = out_task.await;
    let _ = err_task.await;
    let _ = feed.await;
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for ssh: {e}"))?;
    Ok(match (end, status.code()) {
        (Some(state), _) => SessionEnd::Record(state),
        // ssh's own failures (connection lost, master gone) exit 255; no code: killed.
        (None, Some(255) | None) => SessionEnd::Disconnected(errors.join("; ")),
        (None, Some(code)) => {
            tail.extend(errors);
            SessionEnd::WrapperFailed(code)
        }
    })
}

/// What the wrapper reads on its standard input: `export NAME='value'` lines (names checked
/// by the playbook, values shell-quoted), evaluated by the wrapper's shell before anything
/// else. Nothing when there are no secrets.
fn secret_input(secret_env: &BTreeMap<String, String>) -> Vec<u8> {
    secret_env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect::<String>()
        .into_bytes()
}

/// Sends each line the reader gives, to its end. Bytes, not UTF-8 lines: output in another
/// encoding is passed on lossily and must not stop the reading (ssh would then block, and the
/// session with it).
async fn forward_lines(
    stream: Stream,
    reader: impl tokio::io::AsyncRead + Unpin,
    tx: tokio::sync::mpsc::UnboundedSender<(Stream, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let _ = tx.send((stream, line.trim_end_matches(['\n', '\r']).to_owned()));
            }
        }
    }
}

/// Reaches the node with the run's SSH settings and runs `true` there (`sudo -n true` with
/// `sudo`): Ok when it could; Err says why, with ssh's own words.
pub async fn reach(
    ssh: &SshConfig,
    address: &str,
    user: Option<&str>,
    sudo: bool,
) -> Result<(), String> {
    check_address(address)?;
    let session = builder(ssh, user).connect(address).await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(&format!(": {s}"));
            source = s.source();
        }
        why
    })?;
    let mut command = if sudo {
        let mut c = session.command("sudo");
        c.args(["-n", "true"]);
        c
    } else {
        session.command("true")
    };
    let result = command.output().await;
    let _ = session.close().await;
    match result {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{} exited with {}: {}",
            if sudo { "sudo -n true" } else { "true" },
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// What the node's record says about this run's command (one SSH session, starts nothing).
pub async fn probe(
    ssh: &SshConfig,
    inv: &RemoteInvocation<'_>,
) -> Result<RecordState, RemoteError> {
    let session = connect(ssh, inv).await?;
    let words = remote_words(inv, Mode::Probe, 0);
    let mut tail = Vec::new();
    let result = one_session(
        &session,
        &words,
        Vec::new(),
        &mut |_| {},
        &mut tail,
        &mut 0,
        &mut false,
    )
    .await;
    let _ = session.close().await;
    match result {
        Ok(SessionEnd::Record(state)) => Ok(state),
        Ok(SessionEnd::WrapperFailed(code)) => Err(RemoteError::Wrapper {
            destination: inv.address.to_owned(),
            code,
            tail,
        }),
        Ok(SessionEnd::Disconnected(why)) | Err(why) => Err(RemoteError::Spawn {
            destination: inv.address.to_owned(),
            message: if why.is_empty() {
                "the SSH session ended early".into()
            } else {
                why
            },
        }),
    }
}

/// Runs the command (or attaches to it if this run started it before), reporting output and
/// notes as they come; reattaches after a lost session until the command's timeout (plus a
/// grace) has passed. Ok when it exited 0 or the node rebooted before it recorded a status.
pub async fn run(
    ssh: &SshConfig,
    inv: &RemoteInvocation<'_>,
    mode: Mode,
    mut on_event: impl FnMut(RemoteEvent) + Send,
) -> Result<Ended, RemoteError> {
    let destination = inv.address.to_owned();
    let give_up = Instant::now() + inv.timeout + REATTACH_GRACE;
    let mut tail: Vec<String> = Vec::new();
    let mut seen = 0usize;
    let mut first = true;
    // A restart stays a restart until the wrapper said it started (a session lost before that
    // must not attach to the failed attempt's record).
    let mut started = false;
    loop {
        let attempt = match connect(ssh, inv).await {
            Ok(session) => {
                let this = if started { Mode::Start } else { mode };
                let words = remote_words(inv, this, seen);
                // Bounded: a session that never ends (a hung connection) is given up at the
                // point where the command's own timeout has long killed it.
                let end = tokio::time::timeout_at(
                    give_up.into(),
                    one_session(
                        &session,
                        &words,
                        secret_input(inv.secret_env),
                        &mut on_event,
                        &mut tail,
                        &mut seen,
                        &mut started,
                    ),
                )
                .await
                .unwrap_or_else(|_| Ok(SessionEnd::Disconnected("no end in sight".into())));
                let _ = session.close().await;
                end
            }
            Err(e) if first => return Err(e),
            Err(e) => Ok(SessionEnd::Disconnected(e.to_string())),
        };
        first = false;
        let why = match attempt {
            Ok(SessionEnd::Record(RecordState::Exited(0))) => return Ok(Ended::Exited),
            Ok(SessionEnd::Record(RecordState::Exited(KILLED))) => {
                return Err(RemoteError::Timeout {
                    destination,
                    timeout: inv.timeout,
                    tail,
                });
            }
            Ok(SessionEnd::Record(RecordState::Exited(code))) => {
                return Err(RemoteError::Exit {
                    destination,
                    code,
                    tail,
                });
            }
            Ok(SessionEnd::Record(RecordState::Rebooted)) => return Ok(Ended::Rebooted),
            Ok(SessionEnd::Record(RecordState::Lost)) => {
                return Err(RemoteError::Lost {
                    destination,
                    record: inv.record.to_owned(),
                    rebooted: false,
                    tail,
                });
            }
            Ok(SessionEnd::WrapperFailed(code)) => {
                return Err(RemoteError::Wrapper {
                    destination,
                    code,
                    tail,
                });
            }
            // The wrapper stopped following a command that is still running (or said nothing
            // of it): the session went away; reattach.
            Ok(SessionEnd::Record(state)) => {
                format!("the session ended with the command {state:?}")
            }
            Ok(SessionEnd::Disconnected(why)) | Err(why) => why,
        };
        if Instant::now() >= give_up {
            return Err(RemoteError::Unreachable {
                destination,
                record: inv.record.to_owned(),
                waited: inv.timeout + REATTACH_GRACE,
                tail,
            });
        }
        on_event(RemoteEvent::Note(format!(
            "lost the SSH session to {destination} ({}); the command goes on on the node, reattaching in {REATTACH_PAUSE:?}",
            if why.is_empty() {
                "no reason given"
            } else {
                why.as_str()
            }
        )));
        tokio::time::sleep(REATTACH_PAUSE).await;
    }
}

#[cfg(test)]
mod tests;
