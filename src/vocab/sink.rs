//! The sending side of a run's events, and the durable record they go to first.

use super::{RunEvent, Stamped};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};

/// A record that could not be written and synced: the run stops before the step it announces.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot write the run journal {}: {reason}", path.display())]
pub struct JournalError {
    pub path: PathBuf,
    pub reason: String,
}

/// Where events are made durable before they take effect (the run journal,
/// `crate::journal::Journal`).
pub trait Recorder: Send + Sync {
    /// Writes the event if it belongs in the record, synced before this returns. After a
    /// failure every later record is refused with the same error.
    fn record(&self, event: &Stamped) -> Result<(), JournalError>;
    /// The first failure, if any (sticky).
    fn failure(&self) -> Option<JournalError>;
    /// Changes once, when the recorder stops taking records.
    fn watch_failure(&self) -> watch::Receiver<Option<JournalError>>;
}

/// The sending side, cloned into every task that reports.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Stamped>,
    journal: Option<Arc<dyn Recorder>>,
}

impl EventSink {
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Stamped>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, journal: None }, rx)
    }

    /// Decisions and step transitions are also appended to this journal, synchronously, before
    /// `emit` returns, so they are on disk before the step they announce takes effect.
    pub fn with_journal<R: Recorder + 'static>(mut self, journal: Arc<R>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Reports the event (to the consumers even when the journal cannot take it: it happened).
    /// A journal failure is not returned here: it stops the run before the next step (see
    /// [`EventSink::emit_durable`]) and through [`EventSink::journal_failed`].
    /// Every registered secret is scrubbed from the event first ([`crate::redact`]): what the
    /// journal, the reporters and the notifiers get holds none.
    pub fn emit(&self, event: RunEvent) {
        let stamped = Stamped {
            at: SystemTime::now(),
            event: crate::redact::scrub_serde(event),
        };
        if let Some(j) = &self.journal {
            let _ = j.record(&stamped);
        }
        // A closed receiver means reporting has shut down; the run itself goes on.
        let _ = self.tx.send(stamped);
    }

    /// Reports an event that announces a step: Ok only once it is in the journal (or there is
    /// none). On Err the step must not run; the event is not reported either (it did not happen).
    pub fn emit_durable(&self, event: RunEvent) -> Result<(), JournalError> {
        let stamped = Stamped {
            at: SystemTime::now(),
            event: crate::redact::scrub_serde(event),
        };
        if let Some(j) = &self.journal {
            j.record(&stamped)?;
        }
        // A closed receiver means reporting has shut down; the run itself goes on.
        let _ = self.tx.send(stamped);
        Ok(())
    }

    /// Why the journal stopped taking records, if it did.
    pub fn journal_failure(&self) -> Option<JournalError> {
        self.journal.as_ref().and_then(|j| j.failure())
    }

    /// Resolves once the journal stops taking records (never without a journal).
    pub async fn journal_failed(&self) {
        if let Some(j) = &self.journal {
            let mut rx = j.watch_failure();
            if rx.wait_for(Option::is_some).await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}
