//! Starting the environment's processes detached (own process group, logs in the state
//! directory, PID recorded) and stopping them again by recorded PID.

use crate::{Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `program` detached; its output goes to `STATE/logs/NAME.log`, its PID to `STATE/pids/NAME.pid`.
pub fn spawn(state: &Path, name: &str, program: &Path, args: &[String]) -> Result<u32> {
    let logs = state.join("logs");
    let pids = state.join("pids");
    fs::create_dir_all(&logs).context("create logs dir")?;
    fs::create_dir_all(&pids).context("create pids dir")?;
    let log = fs::File::create(logs.join(format!("{name}.log"))).context("create log file")?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("clone log handle")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context(format!("start {name} ({})", program.display()))?;
    let pid = child.id();
    fs::write(pids.join(format!("{name}.pid")), format!("{pid}\n")).context("write pid file")?;
    Ok(pid)
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; treat it as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Stops a process: SIGTERM, then SIGKILL after `grace`.
pub fn stop(pid: u32, grace: Duration) {
    if !is_alive(pid) {
        return;
    }
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Recorded processes as (name, pid), from `STATE/pids`.
pub fn recorded(state: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(state.join("pids")) else {
        return out;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if let Some(pid) = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((name, pid));
        }
    }
    out
}

/// Waits until `check` returns true, failing with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn port_open(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("valid socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A minimal plain-HTTP request (the environment's own loopback services only).
pub fn http(method: &str, addr: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let sock: SocketAddr = addr.parse().context("parse address")?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .context(format!("connect {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("set timeout")?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .context("send request")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("read response")?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response from {addr}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Resident memory of one process in MB (None once it is gone).
pub fn rss_mb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The environment's processes by resident memory, largest first, with the total (sshd merged).
pub fn memory_summary(state: &Path) -> String {
    let mut by_name: Vec<(String, u64)> = Vec::new();
    for (name, pid) in recorded(state) {
        let name = if name.starts_with("sshd-") {
            "sshd".to_owned()
        } else {
            name
        };
        let mb = rss_mb(pid).unwrap_or(0);
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += mb,
            None => by_name.push((name, mb)),
        }
    }
    by_name.sort_by_key(|m| std::cmp::Reverse(m.1));
    let total: u64 = by_name.iter().map(|(_, mb)| mb).sum();
    let parts: Vec<String> = by_name
        .iter()
        .map(|(n, mb)| format!("{n} {mb} MB"))
        .collect();
    format!("{total} MB in all ({})", parts.join(", "))
}
