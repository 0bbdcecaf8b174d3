//! One websocket connection, from the bootstrap call to the last close frame.
//!
//! A connection is one task running two loops side by side (`tokio::join!`, no extra task):
//! - the **reader** parses client frames, answers them through the outbox, and owns this
//!   connection's subscriptions (`requestId` → room);
//! - the **writer** drains the outbox into the socket, coalescing whatever is queued into one
//!   flush, and sends the close frame when the connection is asked to close.
//!
//! Anything may ask to close (the hub for a slow client, the reader for an idle or oversized
//! client, the server on shutdown) through [`Outbox::close`]; both loops then wind down.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Bootstrap, ConnectRequest};
use crate::hub::{Subscriber, SubscriptionId};
use crate::outbox::{close_code, CloseReason, Outbox, OutboxReceiver};
use crate::protocol::{self, answer, ClientMessage};
use crate::room::{AllowedRooms, Room};
use crate::server::Shared;
use crate::stats::Stats;

/// How long we wait for the client's close frame after sending ours, before dropping the
/// socket. Closing with unread input would reset the TCP connection and could destroy the
/// last frames we sent (the refusal message) before the client reads them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Most frames written before one flush. Bounds the write buffer a burst can grow (at ~200
/// bytes a frame, 64 frames are ~13 KiB) while still turning a burst into few syscalls.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Runs a connection to its end.
pub(crate) async fn run(socket: WebSocket, request: ConnectRequest, shared: Arc<Shared>) {
    let span = tracing::info_span!("conn", id = %request.id, peer = %request.peer);
    run_inner(socket, Arc::new(request), shared)
        .instrument(span)
        .await;
}

async fn run_inner(mut socket: WebSocket, request: Arc<ConnectRequest>, shared: Arc<Shared>) {
    let bootstrap = tokio::time::timeout(
        shared.config.backend.timeout,
        shared.backend.bootstrap(&request),
    )
    .await;
    let allowed = match bootstrap {
        Ok(Ok(Bootstrap::Authorized { allowed_rooms })) => {
            AllowedRooms::from_backend(allowed_rooms)
        }
        Ok(Ok(Bootstrap::Refused)) => None,
        Ok(Err(error)) => {
            Stats::incr(&shared.stats.backend_errors);
            tracing::warn!(%error, "bootstrap failed: refusing with backend-unavailable");
            return refuse(
                socket,
                &shared,
                answer::BACKEND_UNAVAILABLE,
                backend_unavailable(),
            )
            .await;
        }
        Err(_) => {
            Stats::incr(&shared.stats.backend_errors);
            tracing::warn!("bootstrap timed out: refusing with backend-unavailable");
            return refuse(
                socket,
                &shared,
                answer::BACKEND_UNAVAILABLE,
                backend_unavailable(),
            )
            .await;
        }
    };
    let Some(allowed) = allowed else {
        tracing::info!("backend refused the connection");
        let reason = CloseReason {
            code: close_code::NORMAL,
            reason: "not-authorized",
        };
        return refuse(socket, &shared, answer::NOT_AUTHORIZED, reason).await;
    };
    if socket
        .send(Message::Text(protocol::authorized(&allowed.raw).into()))
        .await
        .is_err()
    {
        return;
    }

    shared
        .stats
        .open_connections
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(allowed_rooms = allowed.raw.len(), "connection opened");
    spawn_hook(&shared, &request, Hook::Connect);

    let (outbox, receiver) = Outbox::new(shared.config.outgoing_queue, shared.stats.clone());
    let (sink, mut stream) = socket.split();
    let mut reader = Reader {
        shared: &shared,
        request: &request,
        outbox: outbox.clone(),
        allowed,
        subscriptions: HashMap::new(),
    };
    tokio::join!(
        async {
            reader.read_loop(&mut stream).await;
            // The client may still be sending; reading it until its close frame keeps the
            // TCP connection from being reset while our close frame is in flight.
            let _ = tokio::time::timeout(CLOSE_GRACE, drain(&mut stream)).await;
        },
        write_loop(sink, receiver, outbox.clone(), shared.stats.clone()),
    );

    let subscriptions = std::mem::take(&mut reader.subscriptions);
    shared
        .hub
        .unsubscribe_all(subscriptions.values().map(|(id, room)| (room, *id)));
    shared
        .stats
        .open_connections
        .fetch_sub(1, Ordering::Relaxed);
    let reason = outbox.close_reason().unwrap_or(CLIENT_CLOSED);
    tracing::info!(
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
    spawn_hook(&shared, &request, Hook::Disconnect);
}

const CLIENT_CLOSED: CloseReason = CloseReason {
    code: close_code::NORMAL,
    reason: "client-closed",
};

fn backend_unavailable() -> CloseReason {
    CloseReason {
        code: close_code::TRY_AGAIN_LATER,
        reason: "backend-unavailable",
    }
}

/// Sends the refusal answer, then a close frame, and waits briefly for the client's close.
async fn refuse(mut socket: WebSocket, shared: &Shared, text: &'static str, reason: CloseReason) {
    Stats::incr(&shared.stats.connections_refused);
    let _ = socket.send(Message::Text(text.into())).await;
    let _ = socket.send(close_message(reason)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, drain(&mut socket)).await;
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    }))
}

/// Reads and discards until the stream ends or errs.
async fn drain<S>(stream: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(_)) = stream.next().await {}
}

#[derive(Clone, Copy)]
enum Hook {
    Connect,
    Ping,
    Disconnect,
}

/// Hooks run beside the connection: a slow backend never delays the client.
fn spawn_hook(shared: &Arc<Shared>, request: &Arc<ConnectRequest>, hook: Hook) {
    let backend = shared.backend.clone();
    let request = request.clone();
    tokio::spawn(async move {
        match hook {
            Hook::Connect => backend.on_connect(&request).await,
            Hook::Ping => backend.on_ping(&request).await,
            Hook::Disconnect => backend.on_disconnect(&request).await,
        }
    });
}

struct Reader<'a> {
    shared: &'a Arc<Shared>,
    request: &'a Arc<ConnectRequest>,
    outbox: Outbox,
    allowed: AllowedRooms,
    /// This connection's subscriptions by requestId.
    subscriptions: HashMap<String, (SubscriptionId, Room)>,
}

impl Reader<'_> {
    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let idle_timeout = self.shared.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let outbox = self.outbox.clone();
        loop {
            tokio::select! {
                biased;
                () = outbox.closing() => return,
                () = self.shared.shutdown.cancelled() => {
                    outbox.close(CloseReason { code: close_code::GOING_AWAY, reason: "server-shutdown" });
                    return;
                }
                () = &mut idle => {
                    outbox.close(CloseReason { code: close_code::NORMAL, reason: "idle-timeout" });
                    return;
                }
                message = stream.next() => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    let keep_going = match message {
                        Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                        Some(Ok(Message::Binary(_))) => {
                            outbox.close(CloseReason {
                                code: close_code::UNSUPPORTED_DATA,
                                reason: "binary-not-supported",
                            });
                            false
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
                        Some(Ok(Message::Close(_))) | None => {
                            outbox.close(CLIENT_CLOSED);
                            false
                        }
                        Some(Err(error)) => {
                            outbox.close(read_error_reason(error));
                            false
                        }
                    };
                    if !keep_going {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one text frame; false once the connection is going away.
    async fn on_text(&mut self, text: &str) -> bool {
        Stats::incr(&self.shared.stats.ws_messages_received);
        let message = ClientMessage::parse(text, &self.shared.config.room_limits);
        let reply: std::borrow::Cow<'static, str> = match message {
            ClientMessage::Ping => {
                spawn_hook(self.shared, self.request, Hook::Ping);
                answer::PONG.into()
            }
            ClientMessage::Subscribe {
                request_id: None, ..
            }
            | ClientMessage::Unsubscribe { request_id: None } => answer::NO_REQUEST_ID.into(),
            ClientMessage::Subscribe {
                request_id: Some(id),
                room,
            } => match room {
                Err(_) => answer::INVALID_ROOM.into(),
                Ok(room) if !self.allowed.allows(&room) => answer::ROOM_NOT_FOUND.into(),
                Ok(room) => {
                    self.subscribe(id, room);
                    answer::SUCCESS.into()
                }
            },
            ClientMessage::Unsubscribe {
                request_id: Some(id),
            } => match self.subscriptions.remove(&id) {
                Some((sub_id, room)) => {
                    self.shared.hub.unsubscribe(&room, sub_id);
                    answer::SUCCESS.into()
                }
                None => answer::NOT_SUBSCRIBED.into(),
            },
            ClientMessage::Status => self.shared.status().to_string().into(),
            ClientMessage::NotJson => {
                protocol::connection_error(&self.request.id, "non-json-message").into()
            }
            ClientMessage::TypeNotAllowed => {
                protocol::connection_error(&self.request.id, "message-type-not-allowed").into()
            }
        };
        self.outbox.reply(reply).await
    }

    /// A requestId names one subscription: subscribing again with it replaces the old one.
    fn subscribe(&mut self, request_id: String, room: Room) {
        if let Some((old_id, old_room)) = self.subscriptions.remove(&request_id) {
            self.shared.hub.unsubscribe(&old_room, old_id);
        }
        let id = self.shared.next_subscription_id();
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            request_id_json: Value::from(request_id.as_str()).to_string().into(),
        };
        self.shared.hub.subscribe(&room, id, subscriber);
        self.subscriptions.insert(request_id, (id, room));
    }
}

/// The close to send after a read error: 1009 for an oversized frame, 1002 otherwise.
fn read_error_reason(error: axum::Error) -> CloseReason {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => CloseReason {
            code: close_code::TOO_BIG,
            reason: "message-too-big",
        },
        _ => {
            tracing::debug!(error = %inner, "websocket read error");
            CloseReason {
                code: close_code::PROTOCOL_ERROR,
                reason: "protocol-error",
            }
        }
    }
}

/// Drains the outbox into the socket until the connection closes, then sends the close frame.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut receiver: OutboxReceiver,
    outbox: Outbox,
    stats: Arc<Stats>,
) {
    loop {
        tokio::select! {
            biased;
            () = outbox.closing() => break,
            first = receiver.rx.recv() => {
                let Some(first) = first else { break };
                // A dead peer can stall a write forever: a close request interrupts it.
                let written = tokio::select! {
                    biased;
                    () = outbox.closing() => break,
                    written = write_batch(&mut sink, &mut receiver, first) => written,
                };
                match written {
                    Ok(n) => Stats::add(&stats.ws_messages_send, n as u64),
                    Err(error) => {
                        Stats::incr(&stats.ws_messages_send_error);
                        tracing::debug!(%error, "websocket write failed");
                        outbox.close(CloseReason { code: close_code::NORMAL, reason: "write-error" });
                        return;
                    }
                }
            }
        }
    }
    match outbox.close_reason() {
        // The peer closed first: tungstenite already queued its close reply; flush it.
        Some(CLIENT_CLOSED) | None => {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
        }
        Some(reason) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_message(reason))).await;
        }
    }
}

/// Writes `first` and whatever else is already queued (up to a bound), then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    receiver: &mut OutboxReceiver,
    first: Message,
) -> Result<usize, axum::Error> {
    sink.feed(first).await?;
    let mut written = 1;
    while written < MAX_FRAMES_PER_FLUSH {
        match receiver.rx.try_recv() {
            Ok(message) => {
                sink.feed(message).await?;
                written += 1;
            }
            Err(_) => break,
        }
    }
    sink.flush().await?;
    Ok(written)
}
