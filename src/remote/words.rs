//! The words run on the node (the wrapper, the command's environment, the run line), each
//! shell-escaped, and the same words as an operator would type them.

use super::{Mode, RemoteInvocation, WRAPPER};

/// The words run on the node: `[sudo -n] env K=V ... sh -c WRAPPER rollgate-wrapper MODE DIR
/// SECS RUN SKIP`.
pub fn remote_words(inv: &RemoteInvocation<'_>, mode: Mode, skip: usize) -> Vec<String> {
    let mut words = Vec::new();
    if inv.sudo {
        words.extend(["sudo".to_owned(), "-n".to_owned()]);
    }
    words.push("env".to_owned());
    words.extend(inv.env.iter().map(|(k, v)| format!("{k}={v}")));
    words.extend([
        "sh".into(),
        "-c".into(),
        WRAPPER.into(),
        "rollgate-wrapper".into(),
        mode.word().into(),
        inv.record.to_owned(),
        inv.timeout.as_secs().max(1).to_string(),
        inv.run.to_owned(),
        skip.to_string(),
    ]);
    words
}

/// The words as the operator would type them (the wrapper script abbreviated), for `--dry-run`:
/// the playbook's `command.env` values show as `REDACTED` (node facts, `ROLLGATE_*`, as they are).
pub fn describe_words(inv: &RemoteInvocation<'_>) -> String {
    remote_words(inv, Mode::Start, 0)
        .iter()
        .map(|w| {
            let playbook_env = w
                .split_once('=')
                .filter(|(k, _)| inv.env.contains_key(*k) && !k.starts_with("ROLLGATE_"));
            if let Some((k, _)) = playbook_env {
                format!("{k}={}", crate::redact::REDACTED)
            } else if w == WRAPPER {
                "'<rollgate wrapper: detached, timeout -s KILL, record>'".to_owned()
            } else {
                shell_quote(w)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell.
pub(super) fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
