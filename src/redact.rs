//! The one home of secret redaction: what a secret looks like in text rollgate writes, and the
//! run's list of secret values that no record may carry.
//!
//! Two layers:
//! - **at the source**: text that names a URL or a header shows it through [`url`] and
//!   [`header`] (credentials in `user:pass@`, token-like query parameters and header values
//!   become `REDACTED`); the playbook's copy is [`crate::playbook::redacted_text`].
//! - **at every sink**: the values a run knows to be secret ([`register`]: the
//!   `env-from-runner` variables, `command.env` values, credentials of probe, Prometheus and
//!   webhook URLs, header values, tokens) are replaced by `REDACTED` in every event before
//!   it is recorded or reported ([`scrub_serde`], called by the event sink), in diagnostic
//!   log lines ([`ScrubbingWriter`]) and in the errors printed at exit ([`scrub`]). A command
//!   that prints its own secret leaves no trace of it in the node logs either.
//!
//! Values shorter than [`MIN_LEN`] characters are not scrubbed from free text (they would
//! mangle it: `"1"`, `"yes"`); rollgate never writes them itself either.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::RwLock;

/// What a redacted value reads as.
pub const REDACTED: &str = "REDACTED";
/// The shortest value scrubbed from free text.
pub const MIN_LEN: usize = 6;

/// Query parameter names (lowercase, any part of the name) whose values are treated as secrets.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "key",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
];

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds values to the list scrubbed from every record from now on (short ones are ignored,
/// see [`MIN_LEN`]). A value with several lines also registers each long line on its own.
pub fn register<I, S>(values: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut list = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in values {
        let v = v.as_ref();
        let mut parts = vec![v.to_owned()];
        if v.contains('\n') {
            parts.extend(v.lines().map(|l| l.trim().to_owned()));
        }
        for p in parts {
            if p.chars().count() >= MIN_LEN && !list.contains(&p) {
                list.push(p);
            }
        }
    }
    // Longest first, so a value that contains another is replaced whole.
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// The secret parts of a URL (its password, secret-looking query values) and, for a URL whose
/// path may be its secret (a webhook), the URL itself: what [`register`] should learn.
pub fn url_secrets(text: &str, whole_is_secret: bool) -> Vec<String> {
    let mut out = Vec::new();
    if whole_is_secret {
        out.push(text.to_owned());
    }
    if let Ok(u) = url::Url::parse(text) {
        // Not the user name: often a plain word (`admin`, `prometheus`) that scrubbing would
        // erase from every record; [`url`] hides it wherever a URL is shown.
        if let Some(p) = u.password() {
            out.push(p.to_owned());
            // As written (percent-encoded) and as sent.
            if let Ok(d) = percent_decode(p) {
                out.push(d);
            }
        }
        for (k, v) in u.query_pairs() {
            if is_secret_param(&k) {
                out.push(v.into_owned());
            }
        }
        if whole_is_secret {
            out.push(u.path().to_owned());
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|p| name.contains(p))
}

/// A URL as records show it: `user:pass@` becomes `REDACTED@`, the values of query parameters
/// whose name looks secret (token, key, secret, password, auth, signature, session...) become
/// `REDACTED`. Text that is not a URL is returned as is (scrubbed).
pub fn url(text: &str) -> String {
    let Ok(mut u) = url::Url::parse(text) else {
        return scrub(text);
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username(REDACTED);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    REDACTED.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    scrub(u.as_str())
}

/// An HTTP header as records show it: its name, and its value only when the header cannot
/// carry a credential (every value is treated as one: `Authorization: REDACTED`).
pub fn header(name: &str) -> String {
    format!("{name}: {REDACTED}")
}

/// Free text with every registered secret value replaced by `REDACTED`.
pub fn scrub(text: &str) -> String {
    let list = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    for s in list.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

/// Whether the text holds a registered secret value.
pub fn holds_secret(text: &str) -> bool {
    let list = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    list.iter().any(|s| text.contains(s.as_str()))
}

/// A value (an event) with every registered secret scrubbed from its strings. Cheap when it
/// holds none (one serialization and a search).
pub fn scrub_serde<T: Serialize + DeserializeOwned>(value: T) -> T {
    if SECRETS.read().map(|l| l.is_empty()).unwrap_or(false) {
        return value;
    }
    let Ok(mut json) = serde_json::to_value(&value) else {
        return value;
    };
    if !scrub_json(&mut json) {
        return value;
    }
    serde_json::from_value(json).unwrap_or(value)
}

/// Scrubs every string of a JSON value in place; whether it changed anything.
fn scrub_json(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) if holds_secret(s) => {
            *s = scrub(s);
            true
        }
        Value::Array(items) => {
            let mut changed = false;
            for i in items {
                changed |= scrub_json(i);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for i in map.values_mut() {
                changed |= scrub_json(i);
            }
            changed
        }
        _ => false,
    }
}

/// A writer for diagnostic logs (stderr) that scrubs each write: log lines name errors that may
/// quote a URL or a command's output.
pub struct ScrubbingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if holds_secret(&text) {
            self.0.write_all(scrub(&text).as_bytes())?;
        } else {
            self.0.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_token_like_parameters() {
        let cases = [
            ("http://prom:9090/api", "http://prom:9090/api"),
            (
                "http://alice:s3cr3t@prom:9090/api",
                "http://REDACTED@prom:9090/api",
            ),
            ("https://tok@h/x", "https://REDACTED@h/x"),
            (
                "https://h/x?access_token=abc&limit=5",
                "https://h/x?access_token=REDACTED&limit=5",
            ),
            ("https://h/x?api_key=abc", "https://h/x?api_key=REDACTED"),
            (
                "https://h/x?X-Amz-Signature=abc",
                "https://h/x?X-Amz-Signature=REDACTED",
            ),
            ("not a url", "not a url"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn url_secrets_name_the_parts_to_scrub() {
        let s = url_secrets("http://al:p%40ss@h/x?token=t0k&n=1", false);
        assert!(
            s.contains(&"p%40ss".to_owned()) && s.contains(&"p@ss".to_owned()),
            "{s:?}"
        );
        assert!(
            s.contains(&"t0k".to_owned()) && !s.contains(&"1".to_owned()),
            "{s:?}"
        );
        let w = url_secrets("https://hooks.example/services/T1/B2/XYZ", true);
        assert!(w.contains(&"/services/T1/B2/XYZ".to_owned()), "{w:?}");
    }

    #[test]
    fn registered_values_are_scrubbed_from_text_and_events() {
        register([
            "redact-test-value-1",
            "abc",
            "-----BEGIN KEY-----\nredact-line-two\n",
        ]);
        assert_eq!(scrub("x redact-test-value-1 y"), "x REDACTED y");
        // Too short to scrub.
        assert_eq!(scrub("abc"), "abc");
        // Each line of a multi-line value on its own.
        assert_eq!(scrub("got redact-line-two"), "got REDACTED");
        let v: Vec<String> = scrub_serde(vec!["a redact-test-value-1".to_owned()]);
        assert_eq!(v, vec!["a REDACTED".to_owned()]);
        let mut w = ScrubbingWriter(Vec::new());
        std::io::Write::write_all(&mut w, b"log redact-test-value-1\n").unwrap();
        assert_eq!(String::from_utf8(w.0).unwrap(), "log REDACTED\n");
    }
}
