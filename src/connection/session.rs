//! What a connection does with the client's messages: answers, subscriptions, and the
//! periodic re-authorisation. All of it runs on the connection's task, without waiting: an
//! answer is queued in the outbox, and the re-authorisation's backend call is a future polled
//! beside the socket.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::time::Instant;

use super::{spawn_hook, Hook, NOT_AUTHORIZED};
use crate::backend::{BackendError, ConnectRequest};
use crate::hub::{Subscriber, SubscriptionId};
use crate::outbox::{close_code, CloseReason, Outbox};
use crate::protocol::{self, answer, ClientMessage};
use crate::room::{AllowedRooms, Room};
use crate::server::Shared;
use crate::stats::Stats;

type Reauthorisation =
    Pin<Box<dyn Future<Output = Result<Option<AllowedRooms>, BackendError>> + Send>>;

pub(super) struct Session {
    pub shared: Arc<Shared>,
    pub request: Arc<ConnectRequest>,
    pub outbox: Outbox,
    pub allowed: AllowedRooms,
    /// This connection's subscriptions by requestId.
    pub subscriptions: HashMap<String, (SubscriptionId, Room)>,
    pub rate: TokenBucket,
    /// The backend call of a re-authorisation in progress. Boxed: it is rare and large, and
    /// inline it would sit in every idle connection's task.
    reauth: Option<Reauthorisation>,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        request: Arc<ConnectRequest>,
        outbox: Outbox,
        allowed: AllowedRooms,
    ) -> Session {
        let policy = &shared.config.policy;
        let rate = TokenBucket::new(policy.messages_per_second, policy.message_burst);
        Session {
            shared,
            request,
            outbox,
            allowed,
            subscriptions: HashMap::new(),
            rate,
            reauth: None,
        }
    }

    /// Handles one text message from the client.
    pub fn on_text(&mut self, text: &str) {
        let stats = &self.shared.stats;
        Stats::incr(&stats.ws_messages_received);
        self.outbox.active(crate::sweeper::now_ms());
        if !self.rate.take() {
            Stats::incr(&stats.rate_limited);
            self.outbox.close(CloseReason {
                code: close_code::POLICY,
                reason: "rate-limited",
            });
            return;
        }
        let policy = &self.shared.config.policy;
        let message = ClientMessage::parse(text, &policy.room_limits);
        let status;
        let connection_error;
        let reply: &str = match message {
            ClientMessage::Ping => {
                spawn_hook(&self.shared, &self.request, Hook::Ping);
                answer::PONG
            }
            ClientMessage::Subscribe {
                request_id: None, ..
            }
            | ClientMessage::Unsubscribe { request_id: None } => answer::NO_REQUEST_ID,
            ClientMessage::Subscribe {
                request_id: Some(id),
                room,
            } => match room {
                Err(_) => answer::INVALID_ROOM,
                Ok(room) if !self.allowed.allows(&room) => answer::ROOM_NOT_FOUND,
                Ok(_)
                    if self.subscriptions.len() >= policy.max_subscriptions
                        && !self.subscriptions.contains_key(&id) =>
                {
                    Stats::incr(&stats.subscription_limit_hits);
                    answer::TOO_MANY_SUBSCRIPTIONS
                }
                Ok(room) => {
                    self.subscribe(id, room);
                    answer::SUCCESS
                }
            },
            ClientMessage::Unsubscribe {
                request_id: Some(id),
            } => match self.subscriptions.remove(&id) {
                Some((sub_id, room)) => {
                    self.shared.hub.unsubscribe(&room, sub_id);
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

    /// Leaves every room (the connection ends).
    pub fn unsubscribe_all(&mut self) {
        let subscriptions = std::mem::take(&mut self.subscriptions);
        self.shared
            .hub
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
            self.reauth = Some(Box::pin(async move {
                shared
                    .gate
                    .bootstrap(&*shared.backend, &request, &shared.stats)
                    .await
            }));
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
                tracing::info!(%error, "re-authorisation skipped: backend unavailable");
                return;
            }
        };
        let Some(allowed) = allowed else {
            tracing::info!("re-authorisation refused: closing");
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
                self.shared.hub.unsubscribe(&room, id);
                Stats::incr(&self.shared.stats.reauth_unsubscribed);
                self.outbox.push_reply(&protocol::unsubscribed(&rid));
            }
        }
    }
}

/// Client messages per connection, as a token bucket: `rate` tokens a second up to `burst`.
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_bursts_then_the_rate() {
        let mut bucket = TokenBucket::new(10.0, 5);
        assert!((0..5).all(|_| bucket.take()));
        assert!(!bucket.take());
        tokio::time::advance(std::time::Duration::from_millis(100)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
    }
}
