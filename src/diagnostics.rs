//! Errors in user-written files (playbooks, config): each names the file, the line and column,
//! the key path (`phase[2].concurrency`), what is wrong, and a hint. Rendering is plain text so
//! it reads well in a terminal, a CI log and a Slack message alike.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a file the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based line and column; 0 when the problem has no single place (e.g. a missing key).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `phase[2].concurrency` (1-based array indexes, as people count).
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file (validation reports all of them, not only the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceErrors(pub Vec<SourceError>);

impl fmt::Display for SourceErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceErrors {}

/// A file's text, with helpers to turn byte spans into line/column and key paths.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }

    /// The dotted key path at a byte offset: the enclosing `[table]` / `[[array]]` header
    /// (arrays get a 1-based index) plus the key on that line, if any.
    pub fn key_path_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let mut header = String::new();
        let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
        let mut line_start = 0;
        let mut key_on_line = String::new();
        for line in self.text.split_inclusive('\n') {
            let line_end = line_start + line.len();
            let trimmed = line.trim();
            if let Some(name) = trimmed
                .strip_prefix("[[")
                .and_then(|t| t.split("]]").next())
            {
                let name = name.trim().to_owned();
                let n = array_counts.entry(name.clone()).or_default();
                *n += 1;
                header = format!("{name}[{n}]");
                // Nested tables under an array element (`[phase.drain]`) keep the element index.
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.split(']').next()) {
                let name = name.trim();
                header = match name.split_once('.') {
                    Some((parent, rest)) if array_counts.contains_key(parent) => {
                        format!("{parent}[{}].{rest}", array_counts[parent])
                    }
                    _ => name.to_owned(),
                };
            }
            if offset >= line_start && offset < line_end.max(line_start + 1) {
                if !trimmed.starts_with('[')
                    && let Some((key, _)) = line.split_once('=')
                {
                    key_on_line = key.trim().trim_matches('"').to_owned();
                }
                break;
            }
            line_start = line_end;
        }
        match (header.is_empty(), key_on_line.is_empty()) {
            (true, _) => key_on_line,
            (false, true) => header,
            (false, false) => format!("{header}.{key_on_line}"),
        }
    }

    /// An error at a span.
    pub fn error_at(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> SourceError {
        let (line, column, key) = match span {
            Some(span) => {
                let (line, column) = self.line_col(span.start);
                (line, column, self.key_path_at(span.start))
            }
            None => (0, 0, String::new()),
        };
        SourceError {
            file: self.path.to_path_buf(),
            line,
            column,
            key,
            message: message.into(),
            hint,
        }
    }

    /// An error with an explicit key path (used when the key path is known better than a span).
    pub fn error_key(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> SourceError {
        let mut e = self.error_at(span, message, hint);
        e.key = key.to_owned();
        e
    }

    /// Converts a TOML/serde error into a [`SourceError`], adding "did you mean" for unknown keys.
    pub fn from_toml(&self, err: &toml::de::Error) -> SourceError {
        let message = err.message().trim().to_owned();
        let hint = unknown_field_hint(&message).or_else(|| type_hint(&message));
        let mut message = message.lines().next().unwrap_or("").to_owned();
        if message.starts_with("unknown field") || message.starts_with("unknown variant") {
            // The hint carries the suggestion or the list of known keys.
            if let Some(idx) = message.find(", expected") {
                message.truncate(idx);
            }
        }
        self.error_at(err.span(), message, hint)
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": suggest the closest known key.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match closest(unknown, &expected) {
        Some(best) => Some(format!("did you mean `{best}`?")),
        None if !expected.is_empty() => Some(format!("known keys here: {}", expected.join(", "))),
        None => None,
    }
}

fn type_hint(message: &str) -> Option<String> {
    if message.contains("unknown variant") {
        let expected: Vec<&str> = message
            .split("expected ")
            .nth(1)?
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        return Some(format!("use one of: {}", expected.join(", ")));
    }
    None
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let normalized = word.replace('_', "-").to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&normalized, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"x\"\n[drain]\ntimeout = \"5m\"\n[[phase]]\nname = \"a\"\n[[phase]]\nname = \"b\"\nconcurrency = 0\n";

    #[test]
    fn key_paths_follow_tables_and_arrays() {
        let src = Source::new(Path::new("p.toml"), DOC);
        assert_eq!(src.key_path_at(DOC.find("name").unwrap()), "name");
        assert_eq!(
            src.key_path_at(DOC.find("timeout").unwrap()),
            "drain.timeout"
        );
        assert_eq!(
            src.key_path_at(DOC.find("concurrency").unwrap()),
            "phase[2].concurrency"
        );
        assert_eq!(src.line_col(DOC.find("concurrency").unwrap()), (8, 1));
    }

    #[test]
    fn closest_finds_typos_only() {
        assert_eq!(
            closest("grace_period", &["grace-period", "timeout"]),
            Some("grace-period")
        );
        assert_eq!(
            closest("gracperiod", &["grace-period", "timeout"]),
            Some("grace-period")
        );
        assert_eq!(closest("banana", &["grace-period", "timeout"]), None);
    }

    #[test]
    fn display_names_file_line_key_and_hint() {
        let e = SourceError {
            file: "p.toml".into(),
            line: 3,
            column: 1,
            key: "drain.grace_period".into(),
            message: "unknown field `grace_period`".into(),
            hint: Some("did you mean `grace-period`?".into()),
        };
        assert_eq!(
            e.to_string(),
            "p.toml:3:1: `drain.grace_period`: unknown field `grace_period`\n  hint: did you mean `grace-period`?"
        );
    }
}
