//! The reader half of a connection: client frames in, answers out, subscriptions owned.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{spawn_hook, Hook, CLIENT_CLOSED};
use crate::backend::{Bootstrap, ConnectRequest};
use crate::hub::{Subscriber, SubscriptionId};
use crate::outbox::{close_code, CloseReason, Outbox};
use crate::protocol::{self, answer, ClientMessage};
use crate::room::{AllowedRooms, Room};
use crate::server::Shared;
use crate::stats::Stats;

pub(super) struct Reader<'a> {
    pub shared: &'a Arc<Shared>,
    pub request: &'a Arc<ConnectRequest>,
    pub outbox: Outbox,
    pub allowed: AllowedRooms,
    /// This connection's subscriptions by requestId.
    pub subscriptions: HashMap<String, (SubscriptionId, Room)>,
    pub rate: TokenBucket,
}

/// What the read loop does after a frame.
enum Flow {
    Continue,
    Stop,
}

impl Reader<'_> {
    pub async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let policy = &self.shared.config.policy;
        let idle_timeout = self.shared.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // A disabled timer does not exist: no timer entry, no bytes in this future.
        let mut ping = policy.ws_ping_interval.map(every);
        let mut reauth = policy.reauth_interval.map(every);
        let mut heard_since_ping = true;
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
                () = tick(&mut ping) => {
                    if !heard_since_ping {
                        Stats::incr(&self.shared.stats.ping_timeouts);
                        outbox.close(CloseReason { code: close_code::GOING_AWAY, reason: "ping-timeout" });
                        return;
                    }
                    heard_since_ping = false;
                    outbox.try_control(Message::Ping(Default::default()));
                }
                () = tick(&mut reauth) => {
                    // Boxed: re-authorisation is rare and its future (a backend call) is large;
                    // inline, it would sit in every idle connection's task.
                    if let Flow::Stop = Box::pin(self.reauthorize()).await {
                        return;
                    }
                }
                message = stream.next() => {
                    heard_since_ping = true;
                    let flow = match message {
                        Some(Ok(Message::Text(text))) => {
                            // Only client messages count as activity: automatic pongs from an
                            // abandoned tab must not keep it open past the idle timeout.
                            idle.as_mut().reset(Instant::now() + idle_timeout);
                            self.on_text(&text).await
                        }
                        Some(Ok(Message::Binary(_))) => {
                            outbox.close(CloseReason {
                                code: close_code::UNSUPPORTED_DATA,
                                reason: "binary-not-supported",
                            });
                            Flow::Stop
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                        Some(Ok(Message::Close(_))) | None => {
                            outbox.close(CLIENT_CLOSED);
                            Flow::Stop
                        }
                        Some(Err(error)) => {
                            let reason = read_error_reason(error);
                            if reason.code == close_code::TOO_BIG {
                                Stats::incr(&self.shared.stats.frames_too_big);
                            }
                            outbox.close(reason);
                            Flow::Stop
                        }
                    };
                    if let Flow::Stop = flow {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one text frame.
    async fn on_text(&mut self, text: &str) -> Flow {
        let stats = &self.shared.stats;
        Stats::incr(&stats.ws_messages_received);
        if !self.rate.take() {
            Stats::incr(&stats.rate_limited);
            self.outbox.close(CloseReason {
                code: close_code::POLICY,
                reason: "rate-limited",
            });
            return Flow::Stop;
        }
        let message = ClientMessage::parse(text, &self.shared.config.policy.room_limits);
        let reply: Cow<'static, str> = match message {
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
                Ok(_)
                    if self.subscriptions.len() >= self.shared.config.policy.max_subscriptions
                        && !self.subscriptions.contains_key(&id) =>
                {
                    Stats::incr(&stats.subscription_limit_hits);
                    answer::TOO_MANY_SUBSCRIPTIONS.into()
                }
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
            ClientMessage::Status if self.shared.config.policy.status_enabled => {
                self.shared.status().to_string().into()
            }
            ClientMessage::Status => answer::STATUS_DISABLED.into(),
            ClientMessage::NotJson => {
                protocol::connection_error(&self.request.id, "non-json-message").into()
            }
            ClientMessage::TypeNotAllowed => {
                protocol::connection_error(&self.request.id, "message-type-not-allowed").into()
            }
        };
        self.reply(reply).await
    }

    async fn reply(&self, text: impl Into<String>) -> Flow {
        if self.outbox.reply(text).await {
            Flow::Continue
        } else {
            Flow::Stop
        }
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

    /// Asks the backend again with the original request: rooms no longer allowed are dropped
    /// (`{"type":"unsubscribed","requestId":...}`), a refusal closes the connection, and a
    /// backend outage changes nothing (users are not logged out by our backend's downtime).
    async fn reauthorize(&mut self) -> Flow {
        let shared = self.shared;
        let outcome = shared
            .gate
            .bootstrap(&*shared.backend, self.request, &shared.stats)
            .await;
        let allowed = match outcome {
            Ok(Bootstrap::Authorized { allowed_rooms }) => {
                AllowedRooms::from_backend(allowed_rooms)
            }
            Ok(Bootstrap::Refused) => None,
            Err(error) => {
                tracing::info!(%error, "re-authorisation skipped: backend unavailable");
                return Flow::Continue;
            }
        };
        let Some(allowed) = allowed else {
            tracing::info!("re-authorisation refused: closing");
            let _ = self.outbox.reply(answer::NOT_AUTHORIZED).await;
            self.outbox.close(CloseReason {
                code: close_code::NORMAL,
                reason: "not-authorized",
            });
            return Flow::Stop;
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
                shared.hub.unsubscribe(&room, id);
                Stats::incr(&shared.stats.reauth_unsubscribed);
                if let Flow::Stop = self.reply(protocol::unsubscribed(&rid)).await {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }
}

/// A timer that first fires one `period` from now, then every `period`, late ticks delayed
/// rather than bunched.
fn every(period: Duration) -> Interval {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The next tick of an enabled timer; never, for a disabled one.
async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
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
