//! Redis pub/sub trigger source: `SUBSCRIBE hightemplar` (configurable), the same JSON body
//! as over AMQP. Every node subscribes, so every node sees every trigger, like the per-node
//! AMQP queues. A publisher does `PUBLISH hightemplar '{"rooms": [...], "data": ...}'`.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Engine, Link, SourceError};
use crate::config::RedisSettings;
use crate::stats::TriggerSource;

/// How often the idle subscription is checked with a PING. Pub/sub connections carry no
/// heartbeat: without this, a broker that vanished without closing TCP (host down, network
/// cut) would go unnoticed until the kernel gives up, which can take many minutes.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A PING not answered within this long counts as a lost connection.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Receives triggers from a Redis channel.
pub(crate) struct RedisEngine {
    settings: RedisSettings,
}

impl RedisEngine {
    pub fn new(settings: RedisSettings) -> Self {
        RedisEngine { settings }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn source(&self) -> TriggerSource {
        TriggerSource::Redis
    }

    fn describe(&self) -> String {
        format!("redis channel {:?}", self.settings.channel)
    }

    async fn session(&self, link: &Link<'_>) -> Result<(), SourceError> {
        let client = ::redis::Client::open(self.settings.url.as_str())?;
        let pubsub = tokio::select! {
            pubsub = client.get_async_pubsub() => pubsub?,
            _ = link.stop.cancelled() => return Ok(()),
        };
        let (mut sink, mut messages) = pubsub.split();
        sink.subscribe(self.settings.channel.as_str()).await?;
        link.connected();

        let mut ping_timer = tokio::time::interval(PING_INTERVAL);
        ping_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping_timer.reset();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => link.inbox.deliver(message.get_payload_bytes()).await,
                    None => return Err(SourceError::Lost("the Redis connection closed")),
                },
                _ = ping_timer.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(error.into()),
                        Err(_) => return Err(SourceError::Lost("Redis did not answer a PING")),
                    }
                }
                _ = link.stop.cancelled() => return Ok(()),
            }
        }
    }
}
