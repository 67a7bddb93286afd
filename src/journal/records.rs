//! The reading side: a journal's text parsed into its header and typed records
//! ([`crate::vocab::Stamped`], the very type the writer serialised).

use super::Header;
use crate::vocab::Stamped;
use std::path::Path;

/// A journal's lines: the header, then the records. A line that does not parse (a record torn
/// by a crash, or cut short by a full disk) is skipped wherever it is and its number kept, so
/// what a resumed run appended after it still counts. The one reader of the journal's text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// None when the first line is not a header.
    pub header: Option<Header>,
    pub records: Vec<Stamped>,
    /// 1-based numbers of the lines skipped: not a JSON object (torn).
    pub skipped: Vec<usize>,
    /// 1-based numbers of whole JSON objects that are no record this version knows (written by
    /// a newer rollgate): passed over, as every reader always did, and not counted as torn.
    pub unknown: Vec<usize>,
}

impl Records {
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines().enumerate();
        let mut out = Records {
            header: lines.next().and_then(|(_, l)| Header::parse(l)),
            ..Default::default()
        };
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Stamped>(line) {
                Ok(record) => out.records.push(record),
                Err(_) => match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) if v.is_object() => out.unknown.push(i + 1),
                    _ => out.skipped.push(i + 1),
                },
            }
        }
        out
    }

    /// Reads a journal file (bytes that are not UTF-8, as in a torn line, do not stop it).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&String::from_utf8_lossy(&std::fs::read(path)?)))
    }
}

/// `line 7` / `lines 7, 12`: where the skipped lines are, for a warning; None when none was.
pub fn skipped_text(skipped: &[usize]) -> Option<String> {
    match skipped {
        [] => None,
        [one] => Some(format!(
            "1 line that does not parse was skipped (line {one})"
        )),
        many => Some(format!(
            "{} lines that do not parse were skipped (lines {})",
            many.len(),
            many.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
