//! One session's reading of the stream: declare, find the epoch, warm or resume, follow the
//! tail (the steps of the module doc of [`super`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::marker::{stream_offset, Marker};
use super::{epoch, new_id, MARK_INTERVAL, MAX_UNREAD_MARKS, WARM_START_MARGIN};
use crate::clock::now_ms;
use crate::config::StreamSettings;
use crate::config::AMQP_STREAM_SEGMENT_BYTES;
use crate::history::History;
use crate::node::Node;
use crate::protocol::Trigger;
use crate::sources::amqp::{AckBatch, ACK_INTERVAL, PREFETCH, ROUTING_KEY};
use crate::sources::{Link, SourceError};
use crate::stats::stream::{StreamStatus, WARM, WARMING};

/// One session's reading of the stream (see the module doc).
pub(crate) struct Session<'a> {
    pub node: &'a Arc<Node>,
    pub status: &'a StreamStatus,
    pub settings: &'a StreamSettings,
    pub exchange: &'a str,
    /// A confirm-mode channel: markers (and the node's HTTP triggers) are published on it.
    pub publish: &'a Channel,
    pub link: &'a Link<'a>,
}

impl Session<'_> {
    pub async fn run(self, connection: &Connection, channel: Channel) -> Result<(), SourceError> {
        let name = self.settings.name.as_str();
        let channel = declare(connection, channel, self.settings).await?;
        channel
            .queue_bind(
                name.into(),
                self.exchange.into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let Some(found) = epoch::find(connection, self.publish, name, self.link.stop).await? else {
            return Ok(());
        };
        self.status.epoch_read.store(found.read, Ordering::Relaxed);
        let epoch: Arc<str> = found.epoch.into();
        self.link.connected();

        let resume = self.status.resume_point(&epoch);
        let limits = self.node.sequencer().limits();
        let ttl_ms = u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX);
        // Before the probe below, so that the warm-up cannot start after it.
        let warm_from_ms = now_ms()
            .saturating_sub(ttl_ms)
            .saturating_sub(WARM_START_MARGIN.as_millis() as u64);
        let start = match resume {
            Some(offset) => AMQPValue::LongLongInt(i64::try_from(offset + 1).unwrap_or(i64::MAX)),
            None => AMQPValue::Timestamp(warm_from_ms / 1000),
        };
        // The tail as of now: the warm-up (or the catch-up) ends where this probe is read.
        let probe = new_id("p");
        Marker::Probe { id: probe.clone() }
            .publish(self.publish, name)
            .await?;
        let mut reader = Reader {
            session: &self,
            epoch,
            probe,
            last: resume,
            known: resume.unwrap_or(0).max(found.last_offset),
            warm: resume.is_none().then(|| Warm {
                history: History::new(limits),
                top: 0,
                clock_ms: warm_from_ms,
                started: Instant::now(),
                read: 0,
            }),
            unread_marks: VecDeque::new(),
        };
        if reader.warm.is_some() {
            self.status.state.store(WARMING, Ordering::Relaxed);
            self.status.warm_read.store(0, Ordering::Relaxed);
        }
        reader.mark().await?;

        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert("x-stream-offset".into(), start);
        let mut consumer = channel
            .basic_consume(
                name.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await?;
        let mut acks = AckBatch::default();
        let mut ack_timer = tokio::time::interval(ACK_INTERVAL);
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut mark_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + MARK_INTERVAL, MARK_INTERVAL);
        mark_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let headers = delivery.properties.headers().as_ref();
                        match stream_offset(headers) {
                            Some(offset) => {
                                let marker = Marker::read(headers);
                                reader.take_in(offset, marker, &delivery.data);
                            }
                            None => tracing::warn!(stream = name, "a message without its stream offset; ignored"),
                        }
                        acks.add(delivery.acker).await?;
                    }
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SourceError::Lost("the broker cancelled the stream consumer (stream deleted?)")),
                },
                _ = mark_timer.tick() => reader.mark().await?,
                _ = ack_timer.tick(), if acks.pending() => acks.flush().await?,
                _ = self.link.stop.cancelled() => {
                    acks.flush().await?;
                    return Ok(());
                }
            }
        }
    }
}

/// A history being warmed from the stream, not yet the node's.
struct Warm {
    history: History,
    /// The newest position in it (or declared lost before it).
    top: u64,
    /// When the triggers being read were published, as well as the stream tells: the newest
    /// mark read so far (marks carry their time), at first the point the read started from.
    /// Slightly early, so warmed triggers expire slightly early: never a false `recovered`.
    clock_ms: u64,
    started: Instant,
    read: u64,
}

/// Takes in what the session's consumer delivers.
struct Reader<'a> {
    session: &'a Session<'a>,
    epoch: Arc<str>,
    /// The probe published at the start of the session: reading it means reaching the tail
    /// as it was then.
    probe: String,
    /// The last offset taken in.
    last: Option<u64>,
    /// The newest offset known to be in this instance of the stream (marks carry it).
    known: u64,
    /// `Some` while warming.
    warm: Option<Warm>,
    /// When the node's marks not yet read back were published, oldest first.
    unread_marks: VecDeque<u64>,
}

impl Reader<'_> {
    /// Publishes a mark with the epoch, remembering it for the lag.
    async fn mark(&mut self) -> Result<(), SourceError> {
        let sent_ms = now_ms();
        let mark = Marker::Mark {
            epoch: self.epoch.to_string(),
            node: self.session.status.node_id.clone(),
            sent_ms,
            after: self.last.unwrap_or(0).max(self.known),
        };
        mark.publish(self.session.publish, &self.session.settings.name)
            .await?;
        if self.unread_marks.len() < MAX_UNREAD_MARKS {
            self.unread_marks.push_back(sent_ms);
        }
        self.note_lag();
        Ok(())
    }

    fn note_lag(&self) {
        let oldest = self.unread_marks.front().copied().unwrap_or(0);
        let status = self.session.status;
        status.oldest_unread_mark.store(oldest, Ordering::Relaxed);
    }

    /// One message at `offset`: a marker, or a trigger body.
    fn take_in(&mut self, offset: u64, marker: Option<Result<Marker, ()>>, body: &[u8]) {
        let node = self.session.node;
        let status = self.session.status;
        match self.last {
            // The broker may start at the beginning of the chunk holding the offset asked for.
            Some(last) if offset <= last => return,
            // What was asked for is gone: the stream dropped it before it was read.
            Some(last) if offset > last + 1 && self.warm.is_none() => {
                tracing::warn!(
                    stream = %status.name, from = last + 1, to = offset - 1,
                    "the stream no longer holds what this node had not read; declared lost"
                );
                status.losses.fetch_add(1, Ordering::Relaxed);
                node.sequencer().lose_through(offset, node.hub());
            }
            // A warm-up holds nothing before its first message.
            None => {
                if let Some(warm) = &mut self.warm {
                    warm.history.lose_through(offset);
                    warm.top = offset;
                }
            }
            Some(_) => {}
        }
        self.last = Some(offset);
        match marker {
            Some(Ok(Marker::Probe { id })) if id == self.probe => self.finish_warm_up(),
            Some(Ok(Marker::Mark {
                epoch,
                node: from,
                sent_ms,
                ..
            })) => {
                if let Some(warm) = &mut self.warm {
                    warm.clock_ms = warm.clock_ms.max(sent_ms);
                }
                if from == status.node_id {
                    while self.unread_marks.front().is_some_and(|&t| t <= sent_ms) {
                        self.unread_marks.pop_front();
                    }
                    self.note_lag();
                }
                if *epoch != *self.epoch {
                    tracing::warn!(stream = %status.name, %epoch, held = %self.epoch,
                        "a mark of another epoch in the stream; ignored");
                }
            }
            Some(_) => {}
            None => {
                if let Some(trigger) = self.session.link.inbox.parse_one(body) {
                    self.trigger(trigger, offset + 1);
                }
            }
        }
        if let Some(warm) = &mut self.warm {
            warm.read += 1;
            status.warm_read.store(warm.read, Ordering::Relaxed);
        } else {
            *status.cursor() = Some((self.epoch.clone(), Some(offset)));
        }
    }

    fn trigger(&mut self, mut trigger: Trigger, position: u64) {
        match &mut self.warm {
            Some(warm) => {
                trigger.position = position;
                warm.history.append(Arc::new(trigger), warm.clock_ms);
                warm.top = position;
            }
            None => self.session.node.publish_at(trigger, position),
        }
    }

    /// The tail is reached: the warmed history becomes the node's, and it is ready.
    fn finish_warm_up(&mut self) {
        let Some(warm) = self.warm.take() else {
            return;
        };
        let node = self.session.node;
        let status = self.session.status;
        let held = status.cursor().as_ref().map(|(epoch, _)| epoch.clone());
        let entries = warm.history.len();
        node.sequencer()
            .adopt(self.epoch.clone(), warm.history, warm.top, node.hub());
        if held.is_some_and(|held| held != self.epoch) {
            status.epoch_changes.fetch_add(1, Ordering::Relaxed);
        }
        *status.cursor() = Some((self.epoch.clone(), self.last));
        let ms = u64::try_from(warm.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        status.warm_ms.store(ms, Ordering::Relaxed);
        status.warm_read.store(warm.read, Ordering::Relaxed);
        status.state.store(WARM, Ordering::Relaxed);
        tracing::info!(
            stream = %status.name, epoch = %self.epoch, read = warm.read, entries, ms,
            "history warmed from the stream; ready"
        );
    }
}

/// Declares the stream with the configured retention. A stream that exists with other
/// arguments (another node's settings, or an operator's) is used as it is, with a warning:
/// RabbitMQ refuses to redeclare it, and it is still the shared log.
async fn declare(
    connection: &Connection,
    channel: Channel,
    settings: &StreamSettings,
) -> Result<Channel, SourceError> {
    let mut arguments = FieldTable::default();
    let text = |s: String| AMQPValue::LongString(s.into());
    arguments.insert("x-queue-type".into(), text("stream".into()));
    // Whole seconds, rounded up: retention never shorter than asked.
    let max_age = settings.max_age.as_secs() + u64::from(settings.max_age.subsec_nanos() > 0);
    arguments.insert("x-max-age".into(), text(format!("{max_age}s")));
    let bytes = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
    arguments.insert("x-max-length-bytes".into(), bytes(settings.max_bytes));
    arguments.insert(
        "x-stream-max-segment-size-bytes".into(),
        bytes(AMQP_STREAM_SEGMENT_BYTES),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let name = settings.name.as_str();
    match channel.queue_declare(name.into(), durable, arguments).await {
        Ok(_) => Ok(channel),
        Err(error) if is_precondition_failed(&error) => {
            tracing::warn!(
                stream = name, %error,
                "the stream exists with other arguments; using it as it is"
            );
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(name.into(), passive, FieldTable::default())
                .await?;
            Ok(channel)
        }
        Err(error) => Err(error.into()),
    }
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    // A soft error closes the channel and names its reply text; matching the text keeps this
    // independent of lapin's error kinds.
    error.to_string().contains("PRECONDITION_FAILED")
}
