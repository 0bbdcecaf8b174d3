//! RabbitMQ (AMQP 0.9.1) trigger source, and the publisher behind
//! `amqp_publish_http_triggers`.
//!
//! Topology, as high-templar 3.1 (PROTOCOL.md section 4): exchange `hightemplar` (configurable),
//! type direct, not durable, declared by the server; per node one exclusive, non-durable,
//! auto-delete, server-named queue bound with routing key `*`. Every node thus gets its own copy
//! of every trigger; the queue disappears with the connection, so a node that is away misses
//! the triggers of that time (a realtime feed has no use for stale ones).
//!
//! With `amqp_stream`, the per-node queue is replaced by one shared stream that every node
//! reads ([`super::stream`]); the exchange, the connection and the publisher stay as here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::value::RawValue;

use super::stream;
use super::{Engine, Link, SourceError};
use crate::config::AmqpSettings;
use crate::node::Node;
use crate::stats::stream::StreamStatus;
use crate::stats::TriggerSource;

/// The routing key of the original's publishers and of our queue binding.
pub const ROUTING_KEY: &str = "*";
/// Unacknowledged deliveries the broker may push ahead of our acks. At 50k triggers/s and a
/// 20 ms ack round trip, 1000 keeps the pipe full; at ~200 bytes a trigger it costs ~200 KiB
/// of buffered messages per node.
pub(super) const PREFETCH: u16 = 1000;
/// Deliveries acknowledged with one `basic.ack multiple=true`: a quarter of the window, so
/// the broker never waits for an ack to send more.
const ACK_BATCH: u32 = PREFETCH as u32 / 4;
/// Longest a delivery waits for its ack when traffic is too slow to fill a batch, so a quiet
/// stream does not sit on unacked messages (and the management UI shows them as consumed).
pub(super) const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Consumes triggers from the exchange.
pub(crate) struct AmqpEngine {
    settings: AmqpSettings,
    /// Shown in the broker's connection list: which node this is.
    connection_name: String,
    publisher: Publisher,
    /// With `amqp_stream`: the node, and the stream's cursor and state.
    stream: Option<(Arc<Node>, Arc<StreamStatus>)>,
}

impl AmqpEngine {
    /// `publisher` receives a confirm-mode channel while connected, if HTTP triggers are to be
    /// published through the exchange.
    pub fn new(settings: AmqpSettings, connection_name: String, publisher: Publisher) -> Self {
        AmqpEngine {
            settings,
            connection_name,
            publisher,
            stream: None,
        }
    }

    /// Reads the shared stream (`settings.stream`) into `node` instead of a per-node queue.
    pub fn with_stream(mut self, node: Arc<Node>, status: Arc<StreamStatus>) -> Self {
        self.stream = Some((node, status));
        self
    }

    async fn consume(&self, connection: &Connection, link: &Link<'_>) -> Result<(), SourceError> {
        let exchange = self.settings.exchange.as_str();
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: false,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if let (Some(settings), Some((node, status))) = (&self.settings.stream, &self.stream) {
            let publish = self.publishing_channel(connection).await?;
            let session = stream::Session {
                node,
                status,
                settings,
                exchange,
                publish: &publish,
                link,
            };
            return session.run(connection, channel).await;
        }
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if self.settings.publish_http_triggers {
            self.publishing_channel(connection).await?;
        }
        link.connected();

        let mut acks = AckBatch::default();
        let mut ack_timer = tokio::time::interval(ACK_INTERVAL);
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        link.inbox.deliver(&delivery.data).await;
                        acks.add(delivery.acker).await?;
                    }
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SourceError::Lost("the broker cancelled the consumer")),
                },
                _ = ack_timer.tick(), if acks.pending() => acks.flush().await?,
                _ = link.stop.cancelled() => {
                    acks.flush().await?;
                    return Ok(());
                }
            }
        }
    }
}

impl AmqpEngine {
    /// A confirm-mode channel, handed to the publisher (HTTP triggers) for this session.
    async fn publishing_channel(&self, connection: &Connection) -> Result<Channel, SourceError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.publisher.set(Some(channel.clone()));
        Ok(channel)
    }
}

#[async_trait]
impl Engine for AmqpEngine {
    fn source(&self) -> TriggerSource {
        TriggerSource::Amqp
    }

    fn describe(&self) -> String {
        match &self.settings.stream {
            Some(stream) => format!(
                "amqp stream {:?} on exchange {:?}",
                stream.name, self.settings.exchange
            ),
            None => format!("amqp exchange {:?}", self.settings.exchange),
        }
    }

    async fn session(&self, link: &Link<'_>) -> Result<(), SourceError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        let connection = tokio::select! {
            connection = Connection::connect(&self.settings.url, properties) => connection?,
            _ = link.stop.cancelled() => return Ok(()),
        };
        let result = self.consume(&connection, link).await;
        self.publisher.set(None);
        // Polite close on shutdown and after channel errors; fails harmlessly when the
        // connection is already gone.
        let _ = connection.close(200, "high-templar: closing".into()).await;
        result
    }
}

/// The last unacknowledged delivery, and how many are pending up to it. (A stream keeps its
/// messages whatever the acks; there they only give the broker credit to send more.)
#[derive(Default)]
pub(super) struct AckBatch {
    last: Option<Acker>,
    count: u32,
}

impl AckBatch {
    /// Adds a delivery, acknowledging the batch once it holds [`ACK_BATCH`].
    pub async fn add(&mut self, acker: Acker) -> Result<(), lapin::Error> {
        self.last = Some(acker);
        self.count += 1;
        if self.count >= ACK_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Whether deliveries wait for their ack.
    pub fn pending(&self) -> bool {
        self.count > 0
    }

    /// Acknowledges every pending delivery at once (`multiple=true`).
    pub async fn flush(&mut self) -> Result<(), lapin::Error> {
        self.count = 0;
        if let Some(acker) = self.last.take() {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

/// Why an HTTP trigger could not be published through the exchange.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the AMQP broker")]
    NotConnected,
    #[error("the AMQP broker failed the publish: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the AMQP broker refused the message (nack)")]
    Nacked,
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
}

/// Publishes into the exchange on the source's connection, while it is up.
#[derive(Clone)]
pub(crate) struct Publisher {
    exchange: Arc<str>,
    /// A confirm-mode channel while connected. A std mutex: only cloned out, never held across
    /// an `.await`.
    channel: Arc<Mutex<Option<Channel>>>,
}

impl Publisher {
    pub fn new(exchange: &str) -> Publisher {
        Publisher {
            exchange: exchange.into(),
            channel: Arc::new(Mutex::new(None)),
        }
    }

    fn set(&self, channel: Option<Channel>) {
        *self
            .channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = channel;
    }

    /// Publishes a validated trigger body exactly as the original's backends do: each trigger
    /// of a batch as its own message, so 3.1 nodes on the same exchange understand them too.
    /// Returns the number of messages the broker confirmed.
    pub async fn publish(&self, body: &[u8]) -> Result<usize, PublishError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| PublishError::NotJson(e.to_string()))?;
        let messages: Vec<&RawValue> = if raw.get().starts_with('[') {
            serde_json::from_str(raw.get()).map_err(|e| PublishError::NotJson(e.to_string()))?
        } else {
            vec![raw]
        };
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in &messages {
            let confirm = channel
                .basic_publish(
                    self.exchange.as_ref().into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions::default(),
                    message.get().as_bytes(),
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if confirm.await?.is_nack() {
                return Err(PublishError::Nacked);
            }
        }
        Ok(messages.len())
    }
}
