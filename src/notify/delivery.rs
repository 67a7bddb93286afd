//! Bounded delivery that never blocks or changes the run. Each target gets its own task: events
//! are queued, turned into [`Message`]s and sent in order through the target's [`Channel`].
//! Every attempt is bounded ([`REQUEST_TIMEOUT`]); a message gets [`ATTEMPTS`] attempts,
//! honouring Retry-After on rate limits; one that still fails stays queued and is retried on the
//! next event or tick ([`RETRY_TICK`]). A refusal (bad token, unknown channel) drops the message
//! with a warning. At the end of the run the queue gets one last flush of [`FINAL_FLUSH`], and
//! the run waits for all of it at most [`FINISH_BOUND`].
//!
//! Failures count in `rollgate_slack_delivery_failures_total{outcome}` (refused, deferred,
//! lost). Logs name the channel kind, never its URL or token.

use super::message::{Message, Narrator};
use crate::vocab::Stamped;
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The bound on one attempt (one request).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per message before it waits for the next event or tick.
pub const ATTEMPTS: u32 = 3;
/// How often deferred messages are tried again while the run goes on.
pub const RETRY_TICK: Duration = Duration::from_secs(5);
/// The last flush once the run's events are over.
pub const FINAL_FLUSH: Duration = Duration::from_secs(30);
/// How long the end of a run waits for delivery, all targets together: the final flush plus
/// the attempts that may be in flight when it ends.
pub const FINISH_BOUND: Duration = Duration::from_secs(40);
/// The longest Retry-After honoured within one message's attempts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why one attempt did not deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Worth trying again (5xx, 429, timeouts, connection errors); `after`: the receiver's
    /// Retry-After.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Said no for good (bad token, unknown channel, 4xx): dropped with a warning.
    Refused(String),
}

impl Failure {
    pub fn retry(why: impl Into<String>) -> Self {
        Failure::Retry {
            why: why.into(),
            after: None,
        }
    }
}

/// A way to tell people about a run: Slack, a webhook... One attempt per call; the caller
/// bounds it, retries it and keeps the order.
pub trait Channel: Send + 'static {
    /// For logs and warnings, e.g. "Slack" (never a URL or a token).
    fn name(&self) -> &'static str;
    /// Delivers one message with one request, or says why not. A channel that cannot do what
    /// a message's place asks (a webhook cannot edit) answers `Ok` without sending.
    fn send<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>>;
}

/// One attempt bounded by [`REQUEST_TIMEOUT`].
async fn attempt(channel: &mut dyn Channel, message: &Message) -> Result<(), Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, channel.send(message)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::retry(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// Up to [`ATTEMPTS`] attempts: Retry-After (at most 10 s) after a rate limit, else a short
/// backoff (0.5 s, 1 s). The error is the last attempt's.
pub async fn send_with_retries(
    channel: &mut dyn Channel,
    message: &Message,
) -> Result<(), Failure> {
    let mut last = Failure::retry("not tried");
    for n in 0..ATTEMPTS {
        match attempt(channel, message).await {
            Ok(()) => return Ok(()),
            Err(refused @ Failure::Refused(_)) => return Err(refused),
            Err(retry @ Failure::Retry { .. }) => {
                let pause = match &retry {
                    Failure::Retry {
                        after: Some(after), ..
                    } => (*after).min(MAX_RETRY_AFTER),
                    _ => Duration::from_millis(500 << n),
                };
                last = retry;
                if n + 1 < ATTEMPTS {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    Err(last)
}

struct Sender {
    channel: Box<dyn Channel>,
    /// `rollgate_slack_delivery_failures_total{outcome}`.
    failures: prometheus::IntCounterVec,
}

impl Sender {
    /// Sends queued messages in order; stops at the first that cannot be delivered now (kept
    /// for later).
    async fn flush(&mut self, queue: &mut VecDeque<Message>) {
        let name = self.channel.name();
        while let Some(m) = queue.front() {
            match send_with_retries(self.channel.as_mut(), m).await {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(Failure::Refused(e)) => {
                    tracing::warn!(target: "rollgate::notify", channel = name, error = %e, "{name} refused a message; dropping it");
                    self.failures.with_label_values(&["refused"]).inc();
                    queue.pop_front();
                }
                Err(Failure::Retry { why, .. }) => {
                    tracing::warn!(target: "rollgate::notify", channel = name, error = %why, queued = queue.len(), "{name} is unreachable; will retry later in the run");
                    self.failures.with_label_values(&["deferred"]).inc();
                    return;
                }
            }
        }
    }
}

/// Starts a target's delivery task: send it the run's events, drop the sender when they are
/// over, then await the task (it ends within [`FINISH_BOUND`] of that).
pub fn spawn(
    channel: Box<dyn Channel>,
    narrator: Narrator,
    failures: prometheus::IntCounterVec,
) -> (mpsc::UnboundedSender<Stamped>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = Sender { channel, failures };
    (tx, tokio::spawn(deliver(sender, rx, narrator)))
}

async fn deliver(
    mut sender: Sender,
    mut rx: mpsc::UnboundedReceiver<Stamped>,
    mut narrator: Narrator,
) {
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut tick = tokio::time::interval(RETRY_TICK);
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(e) => {
                    let new = narrator.messages(&e.event);
                    if new.is_empty() { continue; }
                    queue.extend(new);
                    sender.flush(&mut queue).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                if !queue.is_empty() {
                    sender.flush(&mut queue).await;
                }
            }
        }
    }
    // The run is over: one last bounded attempt for what is still queued.
    let deadline = Instant::now() + FINAL_FLUSH;
    while !queue.is_empty() && Instant::now() < deadline {
        sender.flush(&mut queue).await;
        if !queue.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !queue.is_empty() {
        let name = sender.channel.name();
        sender
            .failures
            .with_label_values(&["lost"])
            .inc_by(queue.len() as u64);
        tracing::warn!(
            target: "rollgate::notify",
            channel = name,
            lost = queue.len(),
            "{name} messages could not be delivered before the end of the run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::Place;
    use std::sync::{Arc, Mutex};

    /// Answers each attempt with the next scripted result (then Ok), recording the texts.
    struct Scripted {
        answers: VecDeque<Result<(), Failure>>,
        sent: Arc<Mutex<Vec<String>>>,
        /// An attempt that never answers (for the timeout).
        hang: bool,
    }

    impl Channel for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn send<'a>(&'a mut self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
            Box::pin(async move {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                let answer = self.answers.pop_front().unwrap_or(Ok(()));
                if answer.is_ok() {
                    self.sent.lock().unwrap().push(message.text.clone());
                }
                answer
            })
        }
    }

    fn scripted(answers: Vec<Result<(), Failure>>) -> (Scripted, Arc<Mutex<Vec<String>>>) {
        let sent = Arc::new(Mutex::new(vec![]));
        let channel = Scripted {
            answers: answers.into(),
            sent: Arc::clone(&sent),
            hang: false,
        };
        (channel, sent)
    }

    fn message(text: &str) -> Message {
        Message {
            place: Place::Reply,
            event: "node-done".into(),
            text: text.into(),
            fields: vec![],
            buttons: vec![],
        }
    }

    fn counter() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("f", "f"), &["outcome"]).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_waits_its_retry_after_and_a_server_error_backs_off() {
        let (mut c, sent) = scripted(vec![
            Err(Failure::Retry {
                why: "429".into(),
                after: Some(Duration::from_secs(3)),
            }),
            Err(Failure::retry("HTTP 500")),
        ]);
        let started = tokio::time::Instant::now();
        assert_eq!(send_with_retries(&mut c, &message("a")).await, Ok(()));
        // 3 s (Retry-After) + 1 s (second backoff).
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        assert_eq!(*sent.lock().unwrap(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn three_failed_attempts_give_up_for_now_and_a_refusal_at_once() {
        let (mut c, _) = scripted(vec![Err(Failure::retry("HTTP 502")); 3]);
        let started = tokio::time::Instant::now();
        assert_eq!(
            send_with_retries(&mut c, &message("a")).await,
            Err(Failure::retry("HTTP 502"))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        let (mut c, _) = scripted(vec![Err(Failure::Refused("invalid_auth".into()))]);
        let started = tokio::time::Instant::now();
        assert_eq!(
            send_with_retries(&mut c, &message("a")).await,
            Err(Failure::Refused("invalid_auth".into()))
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_without_an_answer_ends_at_the_request_timeout() {
        let (mut c, _) = scripted(vec![]);
        c.hang = true;
        let started = tokio::time::Instant::now();
        let result = send_with_retries(&mut c, &message("a")).await;
        assert!(matches!(result, Err(Failure::Retry { .. })), "{result:?}");
        assert_eq!(
            started.elapsed(),
            REQUEST_TIMEOUT * 3 + Duration::from_millis(1500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn messages_keep_their_order_through_an_outage_and_a_refused_one_is_dropped() {
        let (c, sent) = scripted(vec![
            // The run's message waits out an outage (3 attempts), then goes through.
            Err(Failure::retry("down")),
            Err(Failure::retry("down")),
            Err(Failure::retry("down")),
            Ok(()),
            // The first reply is refused for good.
            Err(Failure::Refused("msg_too_long".into())),
        ]);
        let failures = counter();
        let mut narrator = Narrator::new("r1", "p", None, None);
        let mut queue: VecDeque<Message> = narrator
            .messages(&crate::vocab::RunEvent::RunStarted {
                run_id: "r1".into(),
                playbook: "p".into(),
                nodes: 2,
                dry_run: false,
                by: None,
            })
            .into();
        for node in ["a", "b"] {
            queue.extend(narrator.messages(&crate::vocab::RunEvent::NodeDone {
                node: node.into(),
                elapsed_ms: 1000,
            }));
        }
        let mut sender = Sender {
            channel: Box::new(c),
            failures: failures.clone(),
        };
        sender.flush(&mut queue).await;
        assert_eq!(queue.len(), 5, "nothing sent past the outage");
        assert!(sent.lock().unwrap().is_empty());
        sender.flush(&mut queue).await;
        assert!(queue.is_empty());
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 4, "{sent:#?}");
        assert!(sent[0].contains("(running) — 0/2"), "{sent:#?}");
        // The reply for `a` was refused; its root update and `b` follow in order.
        assert!(sent[1].contains("1/2 nodes done"), "{sent:#?}");
        assert_eq!(sent[2], "node `b` upgraded in 1.0s");
        assert!(sent[3].contains("2/2 nodes done"), "{sent:#?}");
        assert_eq!(failures.with_label_values(&["deferred"]).get(), 1);
        assert_eq!(failures.with_label_values(&["refused"]).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_run_waits_at_most_the_final_flush_and_counts_what_is_lost() {
        let (c, _) = scripted(vec![Err(Failure::retry("down")); 1000]);
        let failures = counter();
        let (tx, task) = spawn(
            Box::new(c),
            Narrator::new("r1", "p", None, None),
            failures.clone(),
        );
        tx.send(Stamped {
            at: std::time::SystemTime::now(),
            event: crate::vocab::RunEvent::Resumed { by: None },
        })
        .unwrap();
        drop(tx);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(FINISH_BOUND, task)
            .await
            .expect("delivery ends within its bound")
            .unwrap();
        assert!(started.elapsed() >= FINAL_FLUSH);
        assert_eq!(failures.with_label_values(&["lost"]).get(), 2);
    }
}
