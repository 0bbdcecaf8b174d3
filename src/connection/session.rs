//! What a connection does with the client's messages: answers, subscriptions, and the
//! periodic re-authorisation. All of it runs on the connection's task, without waiting: an
//! answer is queued in the outbox, and the re-authorisation's backend call is a future polled
//! beside the socket.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;

use super::recovery::Recoveries;
use crate::backend::{BackendError, ConnectRequest};
use crate::hooks::Hook;
use crate::hub::{Subscriber, SubscriptionId};
use crate::node::Node;
use crate::outbox::{close_code, CloseReason, Outbox};
use crate::protocol::{self, answer, ClientMessage, Positions};
use crate::room::{AllowedRooms, Room};
use crate::stats::Stats;

type Reauthorisation =
    Pin<Box<dyn Future<Output = Result<Option<AllowedRooms>, BackendError>> + Send>>;

/// The close of a connection the backend no longer authorises (at the start, or on a
/// re-authorisation).
pub(super) const NOT_AUTHORIZED: CloseReason = CloseReason {
    code: close_code::NORMAL,
    reason: "not-authorized",
};

pub(super) struct Session {
    shared: Arc<Node>,
    request: Arc<ConnectRequest>,
    outbox: Outbox,
    allowed: AllowedRooms,
    /// This connection's subscriptions by requestId.
    subscriptions: HashMap<String, (SubscriptionId, Room)>,
    /// Subscriptions being sent what they missed.
    recoveries: Recoveries,
    /// The backend call of a re-authorisation in progress. Boxed: it is rare and large, and
    /// inline it would sit in every idle connection's task.
    reauth: Option<Reauthorisation>,
}

impl Session {
    pub fn new(
        shared: Arc<Node>,
        request: Arc<ConnectRequest>,
        outbox: Outbox,
        allowed: AllowedRooms,
    ) -> Session {
        Session {
            shared,
            request,
            outbox,
            allowed,
            subscriptions: HashMap::new(),
            recoveries: Recoveries::default(),
            reauth: None,
        }
    }

    /// The connection's outbox: where its answers and publish frames queue.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Handles one text message from the client.
    pub fn on_text(&mut self, text: &str) {
        let stats = self.shared.stats();
        Stats::incr(&stats.ws_messages_received);
        self.outbox.active(crate::clock::now_ms());
        let policy = &self.shared.config().policy;
        let message = ClientMessage::parse(text, &policy.room_limits);
        let status;
        let connection_error;
        let reply: &str = match message {
            ClientMessage::Ping => {
                self.shared.hooks().spawn(&self.request, Hook::Ping);
                answer::PONG
            }
            ClientMessage::Subscribe {
                request_id: None, ..
            }
            | ClientMessage::Unsubscribe { request_id: None } => answer::NO_REQUEST_ID,
            ClientMessage::Subscribe {
                request_id: Some(id),
                room,
                positions,
            } => match room {
                Err(_) => answer::INVALID_ROOM,
                Ok(_) if positions == Positions::InvalidSince => answer::INVALID_SINCE,
                Ok(room) if !self.allowed.allows(&room) => answer::ROOM_NOT_FOUND,
                Ok(_)
                    if self.subscriptions.len() >= policy.max_subscriptions
                        && !self.subscriptions.contains_key(&id) =>
                {
                    Stats::incr(&stats.subscription_limit_hits);
                    answer::TOO_MANY_SUBSCRIPTIONS
                }
                Ok(room) if positions == Positions::None => {
                    self.subscribe(id, room);
                    answer::SUCCESS
                }
                Ok(room) => {
                    // Answered under the sequencer's lock, before any publish it gets.
                    return self.subscribe_with_positions(id, room, positions);
                }
            },
            ClientMessage::Unsubscribe {
                request_id: Some(id),
            } => match self.subscriptions.remove(&id) {
                Some((sub_id, room)) => {
                    self.recoveries.cancel(&id);
                    self.shared.hub().unsubscribe(&room, sub_id);
                    answer::SUCCESS
                }
                None => answer::NOT_SUBSCRIBED,
            },
            ClientMessage::Status if policy.status_enabled => {
                status = self.shared.status().to_string();
                &status
            }
            ClientMessage::Status => answer::STATUS_DISABLED,
            ClientMessage::NotJson => {
                connection_error = protocol::connection_error(&self.request.id, "non-json-message");
                &connection_error
            }
            ClientMessage::TypeNotAllowed => {
                connection_error =
                    protocol::connection_error(&self.request.id, "message-type-not-allowed");
                &connection_error
            }
        };
        self.outbox.push_reply(reply);
    }

    /// A requestId names one subscription: subscribing again with it replaces the old one.
    fn subscribe(&mut self, request_id: String, room: Room) {
        self.leave(&request_id);
        let id = self.shared.next_subscription_id();
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            request_id_json: Value::from(request_id.as_str()).to_string().into(),
            positions: None,
        };
        self.shared.hub().subscribe(&room, id, subscriber);
        self.subscriptions.insert(request_id, (id, room));
    }

    /// Drops the subscription named `request_id`, if any (it is being replaced).
    fn leave(&mut self, request_id: &str) {
        self.recoveries.cancel(request_id);
        if let Some((old_id, old_room)) = self.subscriptions.remove(request_id) {
            self.shared.hub().unsubscribe(&old_room, old_id);
        }
    }

    /// A subscription with positions (PROTOCOL.md section 7): answered with the epoch and the
    /// newest position, and, resuming with `since`, whether what it missed will be replayed.
    fn subscribe_with_positions(&mut self, request_id: String, room: Room, positions: Positions) {
        self.leave(&request_id);
        let stats = self.shared.stats();
        let id = self.shared.next_subscription_id();
        let request_id_json: Arc<str> = Value::from(request_id.as_str()).to_string().into();
        let replaying = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            request_id_json: request_id_json.clone(),
            positions: Some(replaying.clone()),
        };
        let since = match &positions {
            Positions::Since(since) => Some(since),
            _ => None,
        };
        let sequencer = self.shared.sequencer();
        let outbox = &self.outbox;
        let joined = sequencer.subscribe(
            self.shared.hub(),
            &room,
            id,
            subscriber,
            since,
            &replaying,
            |joined| {
                outbox.push_reply(&protocol::subscribed(&joined.epoch, joined));
            },
        );
        if let (Some(since), Some(recovered)) = (since, joined.recovered) {
            stats.count_recovery(recovered);
            if recovered.is_ok() {
                self.recoveries.start(
                    &request_id,
                    request_id_json,
                    room.clone(),
                    since.offset,
                    replaying,
                );
            }
        }
        self.subscriptions.insert(request_id, (id, room));
    }

    /// Queues what recovering subscriptions missed, while the outbox has room; whether it
    /// queued anything.
    pub fn pump_recoveries(&mut self) -> bool {
        self.recoveries.pump(&self.shared, &self.outbox)
    }

    /// Leaves every room (the connection ends).
    pub fn unsubscribe_all(&mut self) {
        self.recoveries.clear();
        let subscriptions = std::mem::take(&mut self.subscriptions);
        self.shared
            .hub()
            .unsubscribe_all(subscriptions.values().map(|(id, room)| (room, *id)));
    }

    /// Starts a due re-authorisation and drives one in progress; `Ready` when one finished
    /// (and was applied) during this call.
    pub fn poll_reauth(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.reauth.is_none() {
            if !self.outbox.take_reauth() {
                return Poll::Pending;
            }
            let shared = self.shared.clone();
            let request = self.request.clone();
            self.reauth = Some(Box::pin(async move { shared.bootstrap(&request).await }));
        }
        let Some(call) = self.reauth.as_mut() else {
            return Poll::Pending;
        };
        let outcome = std::task::ready!(call.as_mut().poll(cx));
        self.reauth = None;
        self.apply_reauth(outcome);
        Poll::Ready(())
    }

    /// Applies the backend's new answer: rooms no longer allowed are dropped
    /// (`{"type":"unsubscribed","requestId":...}`), a refusal closes the connection, and a
    /// backend outage changes nothing (users are not logged out by our backend's downtime).
    fn apply_reauth(&mut self, outcome: Result<Option<AllowedRooms>, BackendError>) {
        let allowed = match outcome {
            Ok(allowed) => allowed,
            Err(error) => {
                let request = &self.request;
                tracing::info!(
                    conn = %request.id, client = %request.client_ip, %error,
                    "re-authorisation skipped: backend unavailable"
                );
                return;
            }
        };
        let Some(allowed) = allowed else {
            let request = &self.request;
            tracing::info!(
                conn = %request.id, client = %request.client_ip,
                "re-authorisation refused: closing"
            );
            self.outbox.push_reply(answer::NOT_AUTHORIZED);
            self.outbox.close(NOT_AUTHORIZED);
            return;
        };
        let revoked: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, (_, room))| !allowed.allows(room))
            .map(|(rid, _)| rid.clone())
            .collect();
        self.allowed = allowed;
        for rid in revoked {
            if let Some((id, room)) = self.subscriptions.remove(&rid) {
                self.recoveries.cancel(&rid);
                self.shared.hub().unsubscribe(&room, id);
                Stats::incr(&self.shared.stats().reauth_unsubscribed);
                self.outbox.push_reply(&protocol::unsubscribed(&rid));
            }
        }
    }
}
