//! Kubernetes label selectors (`key`, `!key`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! requirements joined by commas), parsed once and matched locally against label maps.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector. The empty selector matches everything.
///
/// ```
/// use rollgate::selector::Selector;
/// use std::collections::BTreeMap;
///
/// let workers = Selector::parse("!node-role.kubernetes.io/control-plane, zone in (a,b)").unwrap();
/// let node: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
/// assert!(workers.matches(&node));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

fn valid_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or("");
    !name.is_empty()
        && name.len() <= 63
        && key.split('/').count() <= 2
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl Selector {
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: selector.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self {
                requirements,
                source: String::new(),
            });
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(
                    "empty requirement (two commas in a row, or a trailing comma)",
                ));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotIn(key.trim().to_owned(), vec![value.trim().to_owned()])
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::In(key.trim().to_owned(), vec![value.trim().to_owned()])
            } else if let Some((key, op, rest)) = split_set_op(part) {
                let values = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| {
                        err(&format!(
                            "`{key} {op}` needs a parenthesised list, e.g. `{key} {op} (a,b)`"
                        ))
                    })?;
                let values: Vec<String> = values
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() {
                    return Err(err(&format!("`{key} {op} ()` has no values")));
                }
                if op == "in" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                }
            } else if part.contains(char::is_whitespace) {
                return Err(err(&format!(
                    "cannot parse `{part}`: use `key`, `!key`, `key=value`, `key!=value`, `key in (a,b)`"
                )));
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, values) = match &req {
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, &[][..]),
                Requirement::In(k, v) | Requirement::NotIn(k, v) => (k, &v[..]),
            };
            if !valid_key(key) {
                return Err(err(&format!("`{key}` is not a valid label key")));
            }
            if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
                return Err(err(&format!("`{bad}` is not a valid label value")));
            }
            requirements.push(req);
        }
        Ok(Self {
            requirements,
            source: selector.trim().to_owned(),
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|req| match req {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn split_set_op(part: &str) -> Option<(String, &'static str, &str)> {
    for op in ["notin", "in"] {
        let needle = format!(" {op} ");
        if let Some(idx) = part.find(&needle) {
            return Some((
                part[..idx].trim().to_owned(),
                op,
                &part[idx + needle.len()..],
            ));
        }
        let needle = format!(" {op}(");
        if let Some(idx) = part.find(&needle) {
            return Some((
                part[..idx].trim().to_owned(),
                op,
                &part[idx + op.len() + 1..],
            ));
        }
    }
    None
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.is_empty() {
            f.write_str("(everything)")
        } else {
            f.write_str(&self.source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_every_operator() {
        let node = labels(&[("node-role.kubernetes.io/control-plane", ""), ("zone", "a")]);
        let cases = [
            ("", true),
            ("node-role.kubernetes.io/control-plane", true),
            ("!node-role.kubernetes.io/control-plane", false),
            ("zone=a", true),
            ("zone==a", true),
            ("zone!=a", false),
            ("zone!=b", true),
            ("missing!=b", true),
            ("zone in (a,b)", true),
            ("zone in (b, c)", false),
            ("zone notin (b,c)", true),
            ("missing notin (b,c)", true),
            ("zone in (a,b),!gpu", true),
            ("zone in (a,b), gpu", false),
        ];
        for (sel, want) in cases {
            assert_eq!(
                Selector::parse(sel).unwrap().matches(&node),
                want,
                "selector {sel:?}"
            );
        }
    }

    #[test]
    fn rejects_malformed_selectors_with_reasons() {
        let cases = [
            ("zone in a", "needs a parenthesised list"),
            ("zone in ()", "has no values"),
            ("a,,b", "empty requirement"),
            ("zone=a b", "not a valid label value"),
            ("bad key", "cannot parse"),
            ("-x", "not a valid label key"),
        ];
        for (sel, want) in cases {
            let err = Selector::parse(sel).unwrap_err().to_string();
            assert!(err.contains(want), "selector {sel:?}: {err}");
        }
    }
}
