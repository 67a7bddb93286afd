//! The stand-in's Socket Mode side: a websocket server on an ephemeral loopback port (a thread
//! per connection) speaking Slack's protocol (<https://api.slack.com/apis/socket-mode>):
//! `apps.connections.open` hands out single-use tickets; a connection with a valid ticket gets
//! `hello`, envelopes go to one live connection in turn and wait for their acknowledgement
//! (`{"envelope_id": ...}`), `disconnect` envelopes precede the server closing the socket.

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Error, Message, WebSocket};

/// How long after a `disconnect` envelope the server closes the socket (Slack: a few seconds).
const CLOSE_AFTER: Duration = Duration::from_secs(1);
/// How long a closing socket waits for the client's close frame before cutting it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often a connection's thread looks at its commands between reads.
const POLL: Duration = Duration::from_millis(50);

enum Command {
    Send(String),
    Disconnect(String),
    Drop,
}

struct Conn {
    id: u64,
    tx: Sender<Command>,
    /// Sent a `disconnect`: no more envelopes, no longer counted as live.
    closing: bool,
}

#[derive(Default)]
struct Inner {
    tickets: HashSet<String>,
    /// Every open connection, closing ones included.
    conns: Vec<Conn>,
    connected_total: u64,
    next_id: u64,
    turn: usize,
    acks: HashMap<String, Sender<Value>>,
}

/// The live connections and what is pending on them (kept by `/_reset`).
pub struct Sockets {
    addr: SocketAddr,
    inner: Mutex<Inner>,
}

/// What became of an envelope sent by [`Sockets::deliver`].
#[derive(Debug, PartialEq)]
pub enum Delivery {
    NoSocket,
    NotAcknowledged,
    Acknowledged,
}

pub fn hello(num_connections: usize) -> Value {
    json!({"type": "hello", "num_connections": num_connections,
           "debug_info": {"host": "applink-standin", "build_number": 1, "approximate_connection_time": 18060},
           "connection_info": {"app_id": super::click::APP_ID}})
}

pub fn disconnect_envelope(reason: &str) -> Value {
    json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-standin"}})
}

impl Sockets {
    /// Listens on 127.0.0.1 at an ephemeral port and accepts connections in a thread.
    pub fn start() -> std::io::Result<Arc<Sockets>> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let sockets = Arc::new(Sockets {
            addr: listener.local_addr()?,
            inner: Mutex::new(Inner::default()),
        });
        let accepting = Arc::clone(&sockets);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sockets = Arc::clone(&accepting);
                std::thread::spawn(move || sockets.connection(stream));
            }
        });
        Ok(sockets)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sockets lock")
    }

    /// A new single-use ticket and the URL to connect with it.
    pub fn open_url(&self) -> String {
        let ticket = super::random_id();
        self.lock().tickets.insert(ticket.clone());
        format!(
            "ws://{}/link/?ticket={ticket}&app_id={}",
            self.addr,
            super::click::APP_ID
        )
    }

    /// `{"live": n, "connected_total": m}` (live: open and not told to disconnect).
    pub fn counts(&self) -> Value {
        let inner = self.lock();
        let live = inner.conns.iter().filter(|c| !c.closing).count();
        json!({"live": live, "connected_total": inner.connected_total})
    }

    /// Sends `envelope` (with id `envelope_id`) on one live connection, in turn like Slack, and
    /// waits up to `timeout` for its acknowledgement.
    pub fn deliver(&self, envelope_id: &str, envelope: &Value, timeout: Duration) -> Delivery {
        let (tx, rx) = mpsc::channel();
        let sent = {
            let mut inner = self.lock();
            inner.acks.insert(envelope_id.to_owned(), tx);
            let mut sent = false;
            while !sent {
                let live: Vec<usize> = (0..inner.conns.len())
                    .filter(|&i| !inner.conns[i].closing)
                    .collect();
                if live.is_empty() {
                    break;
                }
                let i = live[inner.turn % live.len()];
                inner.turn = inner.turn.wrapping_add(1);
                sent = inner.conns[i]
                    .tx
                    .send(Command::Send(envelope.to_string()))
                    .is_ok();
                if !sent {
                    inner.conns.remove(i);
                }
            }
            sent
        };
        let outcome = if !sent {
            Delivery::NoSocket
        } else if rx.recv_timeout(timeout).is_ok() {
            Delivery::Acknowledged
        } else {
            Delivery::NotAcknowledged
        };
        self.lock().acks.remove(envelope_id);
        outcome
    }

    /// Sends `disconnect` (`reason`) to every live connection, which closes a second later;
    /// `reason: None` cuts them without a word (a network drop). Returns how many.
    pub fn disconnect_all(&self, reason: Option<&str>) -> usize {
        let mut inner = self.lock();
        let mut affected = 0;
        for conn in inner.conns.iter_mut().filter(|c| !c.closing) {
            affected += 1;
            conn.closing = reason.is_some();
            let _ = conn.tx.send(match reason {
                Some(r) => Command::Disconnect(r.to_owned()),
                None => Command::Drop,
            });
        }
        affected
    }

    fn forget(&self, id: u64) {
        self.lock().conns.retain(|c| c.id != id);
    }

    fn connection(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        // The error type is tungstenite's (an HTTP response), large or not.
        #[allow(clippy::result_large_err)]
        let check_ticket = |request: &Request, response: Response| {
            let ticket = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("ticket="))
                .map(super::api::url_decode);
            let valid = request.uri().path() == "/link/"
                && ticket.is_some_and(|t| self.lock().tickets.remove(&t));
            if valid {
                Ok(response)
            } else {
                let mut refusal = ErrorResponse::new(Some("invalid or used ticket".to_owned()));
                *refusal.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, check_ticket) else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let (id, count) = {
            let mut inner = self.lock();
            inner.next_id += 1;
            inner.connected_total += 1;
            let id = inner.next_id;
            inner.conns.push(Conn {
                id,
                tx,
                closing: false,
            });
            let live = inner.conns.iter().filter(|c| !c.closing).count();
            (id, live)
        };
        if ws.send(Message::text(hello(count).to_string())).is_ok()
            && ws.get_ref().set_read_timeout(Some(POLL)).is_ok()
        {
            self.converse(id, &mut ws, &rx);
        }
        self.forget(id);
    }

    /// Reads acknowledgements (answering pings) and carries out commands until the socket ends.
    fn converse(&self, id: u64, ws: &mut WebSocket<TcpStream>, rx: &Receiver<Command>) {
        let mut close_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        loop {
            while let Ok(command) = rx.try_recv() {
                match command {
                    Command::Send(text) => {
                        if ws.send(Message::text(text)).is_err() {
                            return;
                        }
                    }
                    Command::Disconnect(reason) => {
                        let text = disconnect_envelope(&reason).to_string();
                        if ws.send(Message::text(text)).is_err() {
                            return;
                        }
                        close_at = Some(Instant::now() + CLOSE_AFTER);
                    }
                    Command::Drop => {
                        let _ = ws.get_ref().shutdown(Shutdown::Both);
                        return;
                    }
                }
            }
            let now = Instant::now();
            if close_at.is_some_and(|t| now >= t) {
                close_at = None;
                give_up_at = Some(now + CLOSE_GRACE);
                self.forget(id);
                let _ = ws.close(None);
            }
            if give_up_at.is_some_and(|t| now >= t) {
                let _ = ws.get_ref().shutdown(Shutdown::Both);
                return;
            }
            match ws.read() {
                Ok(Message::Text(text)) => self.acknowledged(text.as_str()),
                Ok(_) => {}
                Err(Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    let _ = ws.flush();
                }
                Err(_) => return,
            }
        }
    }

    fn acknowledged(&self, frame: &str) {
        let Ok(ack) = serde_json::from_str::<Value>(frame) else {
            return;
        };
        if let Some(id) = ack["envelope_id"].as_str()
            && let Some(waiter) = self.lock().acks.remove(id)
        {
            let _ = waiter.send(ack);
        }
    }
}
