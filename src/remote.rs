//! The remote command over SSH, through the openssh crate (the system `ssh`: ssh_config,
//! ProxyJump, agents and certificates work as they do for the operator).
//!
//! - Host keys are checked strictly unless the config says `known-hosts = "accept-new"`.
//! - Node facts and the playbook's environment reach the command as environment variables set
//!   by `env NAME=VALUE ...`, every word shell-escaped; nothing is spliced into a shell string
//!   except the playbook's own `run` line, which is one escaped argument of `sh -c`.
//! - The command runs under `timeout -s KILL`, so the remote process dies at the timeout even
//!   though dropping an SSH session does not kill it; a local timeout a little later bounds
//!   the wait in case the connection hangs.
//! - stdout and stderr are streamed line by line to a callback as they arrive.

use crate::config::{KnownHostsPolicy, SshConfig};
use crate::engine::Stream;
use openssh::{KnownHosts, SessionBuilder, Stdio};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How many output lines a failure message quotes.
const TAIL_LINES: usize = 5;
/// Exit status of a command killed by `timeout -s KILL` (128 + 9).
const KILLED: i32 = 137;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {destination} over SSH: {source}")]
    Connect {
        destination: String,
        source: openssh::Error,
    },
    #[error("cannot start the remote command on {destination}: {source}")]
    Spawn {
        destination: String,
        source: openssh::Error,
    },
    #[error("the remote command exited with status {code} on {destination}{}", tail_text(.tail))]
    Exit {
        destination: String,
        code: i32,
        tail: Vec<String>,
    },
    #[error("the remote command was killed by a signal on {destination}{}", tail_text(.tail))]
    Killed {
        destination: String,
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

/// The words run on the node: `env K=V ... timeout -s KILL SECS sh -c RUN` (each word escaped by openssh).
pub fn remote_words(inv: &RemoteInvocation<'_>) -> Vec<String> {
    let mut words = vec!["env".to_owned()];
    words.extend(inv.env.iter().map(|(k, v)| format!("{k}={v}")));
    words.extend([
        "timeout".into(),
        "-s".into(),
        "KILL".into(),
        inv.timeout.as_secs().max(1).to_string(),
        "sh".into(),
        "-c".into(),
        inv.run.to_owned(),
    ]);
    words
}

/// Runs the command, calling `on_line` for each output line; Ok when it exits 0.
pub async fn run(
    ssh: &SshConfig,
    inv: &RemoteInvocation<'_>,
    mut on_line: impl FnMut(Stream, String) + Send,
) -> Result<(), RemoteError> {
    let destination = inv.address.to_owned();
    let session = builder(ssh, inv.user)
        .connect(&destination)
        .await
        .map_err(|source| RemoteError::Connect {
            destination: destination.clone(),
            source,
        })?;
    let words = remote_words(inv);
    let mut cmd = session.command(words[0].clone());
    cmd.args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().await.map_err(|source| RemoteError::Spawn {
        destination: destination.clone(),
        source,
    })?;
    let stdout = child.stdout().take().expect("stdout is piped");
    let stderr = child.stderr().take().expect("stderr is piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, String)>();
    let pump = |stream: Stream, reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>| {
        let tx = tx.clone();
        async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send((stream, line));
            }
        }
    };
    let out_task = tokio::spawn(pump(Stream::Stdout, Box::new(stdout)));
    let err_task = tokio::spawn(pump(Stream::Stderr, Box::new(stderr)));
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    let local_bound = inv.timeout + Duration::from_secs(15);
    let waited = tokio::time::timeout(local_bound, async {
        while let Some((stream, line)) = rx.recv().await {
            if tail.len() == TAIL_LINES {
                tail.remove(0);
            }
            tail.push(line.clone());
            on_line(stream, line);
        }
        let _ = out_task.await;
        let _ = err_task.await;
        child.wait().await
    })
    .await;
    let _ = session.close().await;
    match waited {
        Err(_) => Err(RemoteError::Timeout {
            destination,
            timeout: inv.timeout,
            tail,
        }),
        // Killed by a signal (no exit status): `timeout -s KILL` at the deadline, or someone else.
        Ok(Err(openssh::Error::RemoteProcessTerminated)) if started.elapsed() >= inv.timeout => {
            Err(RemoteError::Timeout {
                destination,
                timeout: inv.timeout,
                tail,
            })
        }
        Ok(Err(openssh::Error::RemoteProcessTerminated)) => {
            Err(RemoteError::Killed { destination, tail })
        }
        Ok(Err(source)) => Err(RemoteError::Spawn {
            destination,
            source,
        }),
        Ok(Ok(status)) => match status.code() {
            Some(0) => Ok(()),
            Some(KILLED) => Err(RemoteError::Timeout {
                destination,
                timeout: inv.timeout,
                tail,
            }),
            Some(code) => Err(RemoteError::Exit {
                destination,
                code,
                tail,
            }),
            None => Err(RemoteError::Exit {
                destination,
                code: -1,
                tail,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_travel_as_env_words_and_the_run_line_as_one_argument() {
        let env: BTreeMap<String, String> =
            [("ROLLGATE_NODE".to_string(), "n1; rm -rf /".to_string())].into();
        let inv = RemoteInvocation {
            address: "10.0.0.1",
            user: None,
            run: "chef-client -o 'role[x]'",
            env: &env,
            timeout: Duration::from_secs(90),
        };
        assert_eq!(
            remote_words(&inv),
            [
                "env",
                "ROLLGATE_NODE=n1; rm -rf /",
                "timeout",
                "-s",
                "KILL",
                "90",
                "sh",
                "-c",
                "chef-client -o 'role[x]'"
            ]
        );
    }
}
