//! Diagnostic logging (tracing) to stderr. In JSON mode each line has the same shape as the
//! run's event lines: `at`, `run_id` (once a run has one), plus `level`, `target`, `message`
//! and the log call's fields (`node`, `step`, `error`, ...), so one `jq` filter reads both.

use std::fmt;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static RUN_ID: OnceLock<String> = OnceLock::new();

/// From now on every JSON log line names this run.
pub fn set_run_id(run_id: &str) {
    let _ = RUN_ID.set(run_id.to_owned());
}

/// Installs the global subscriber (`ROLLGATE_LOG` filters, default `warn`, without
/// slack-morphism's own lines: its Socket Mode retries would repeat every few seconds while
/// Slack is unreachable, and they name the connection URLs; the run says it once itself).
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLGATE_LOG")
        .unwrap_or_else(|_| "warn,slack_morphism=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::redact::ScrubbingWriter(std::io::stderr()));
    if json {
        builder.event_format(JsonLine).init();
    } else {
        builder.init();
    }
}

/// One JSON object per event, shaped like the run's event lines.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(
            writer,
            "{}",
            to_json(event, RUN_ID.get().map(String::as_str))
        )
    }
}

fn to_json(event: &Event<'_>, run_id: Option<&str>) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    line.insert(
        "at".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    if let Some(id) = run_id {
        line.insert("run_id".into(), id.into());
    }
    let meta = event.metadata();
    line.insert("level".into(), meta.level().as_str().to_lowercase().into());
    line.insert("target".into(), meta.target().into());
    event.record(&mut Fields(&mut line));
    serde_json::Value::Object(line)
}

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what the formatter writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_run_id_level_message_and_fields() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLine)
            .finish();
        set_run_id("20261125-010000-abcd");
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(node = "n1", queued = 3u64, "Slack is unreachable");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["run_id"], "20261125-010000-abcd");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["message"], "Slack is unreachable");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["queued"], 3);
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
    }
}
