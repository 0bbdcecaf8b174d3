//! The node's own messages in the stream: they name the stream's epoch and mark points in it,
//! and are never taken for triggers.
//!
//! They are published to the default exchange straight into the stream (routing key: its
//! name), so only the stream holds them: 3.1 nodes and per-node queues bound to the trigger
//! exchange never see them. A header, [`KIND`], tells them from triggers; the body only says
//! what they are to whoever reads the stream by hand.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::sources::SourceError;

/// The header that makes a message one of ours, with its kind as value.
const KIND: &str = "x-high-templar";
/// The epoch a claim or a mark names.
const EPOCH: &str = "x-high-templar-epoch";
/// A probe's own id, or the id of the node that published a mark.
const ID: &str = "x-high-templar-id";
/// When a mark was published (ms since the Unix epoch), by its node's clock.
const SENT_MS: &str = "x-high-templar-sent-ms";
/// The newest offset the publisher of a claim or mark had read in the stream: the marker's
/// own offset must be above it, or it was published into another instance of the stream.
const AFTER: &str = "x-high-templar-after";
/// The header RabbitMQ adds to every message consumed from a stream: its offset.
const STREAM_OFFSET: &str = "x-stream-offset";

/// One of the node's messages in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Marker {
    /// A point in the stream a node waits to read back: where it stands relative to the tail.
    Probe { id: String },
    /// A candidate epoch, published by a node that found no epoch in the stream.
    Claim { epoch: String, after: u64 },
    /// The epoch in force, published by every node at start and every
    /// [`super::MARK_INTERVAL`] after, so that retention never removes the last one; also how
    /// a node measures how far behind the tail it reads.
    Mark {
        epoch: String,
        node: String,
        sent_ms: u64,
        after: u64,
    },
}

impl Marker {
    fn kind(&self) -> &'static str {
        match self {
            Marker::Probe { .. } => "probe",
            Marker::Claim { .. } => "claim",
            Marker::Mark { .. } => "mark",
        }
    }

    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(KIND.into(), text(self.kind()));
        match self {
            Marker::Probe { id } => {
                headers.insert(ID.into(), text(id));
            }
            Marker::Claim { epoch, after } => {
                headers.insert(EPOCH.into(), text(epoch));
                headers.insert(AFTER.into(), long(*after));
            }
            Marker::Mark {
                epoch,
                node,
                sent_ms,
                after,
            } => {
                headers.insert(EPOCH.into(), text(epoch));
                headers.insert(ID.into(), text(node));
                headers.insert(SENT_MS.into(), long(*sent_ms));
                headers.insert(AFTER.into(), long(*after));
            }
        }
        headers
    }

    /// Reads the marker in `headers`; `None` for a trigger (no [`KIND`] header), or for a
    /// marker of a kind or shape this version does not know (ignored, never a trigger).
    pub fn read(headers: Option<&FieldTable>) -> Option<Result<Marker, ()>> {
        let headers = headers?.inner();
        let kind = text(headers.get(KIND)?);
        let string = |key: &str| headers.get(key).and_then(text).map(str::to_string);
        let number = |key: &str| headers.get(key).and_then(integer);
        let marker = match kind {
            Some("probe") => string(ID).map(|id| Marker::Probe { id }),
            Some("claim") => match (string(EPOCH), number(AFTER)) {
                (Some(epoch), Some(after)) => Some(Marker::Claim { epoch, after }),
                _ => None,
            },
            Some("mark") => match (string(EPOCH), string(ID), number(SENT_MS), number(AFTER)) {
                (Some(epoch), Some(node), Some(sent_ms), Some(after)) => Some(Marker::Mark {
                    epoch,
                    node,
                    sent_ms,
                    after,
                }),
                _ => None,
            },
            _ => None,
        };
        Some(marker.ok_or(()))
    }

    /// Whether the marker, read at `offset`, belongs to this instance of the stream: its
    /// publisher had read up to `after` in the instance it published into, so the marker
    /// comes after that. A node that had not yet noticed that the stream was deleted and
    /// recreated could publish an old epoch into the new stream; it is recognised here.
    pub fn is_of_this_stream(&self, offset: u64) -> bool {
        match self {
            Marker::Probe { .. } => true,
            Marker::Claim { after, .. } | Marker::Mark { after, .. } => *after < offset,
        }
    }

    /// Publishes the marker into `stream` and waits for the broker's confirm (the channel is
    /// in confirm mode), so that it is in the stream when this returns.
    pub async fn publish(&self, channel: &Channel, stream: &str) -> Result<(), SourceError> {
        let body = format!(r#"{{"high_templar":"{} (not a trigger)"}}"#, self.kind());
        let confirm = channel
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_headers(self.headers()),
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(SourceError::Lost("the broker refused a stream marker"));
        }
        Ok(())
    }
}

/// The stream offset RabbitMQ gave a consumed message; `None` for a message not read from a
/// stream.
pub fn stream_offset(headers: Option<&FieldTable>) -> Option<u64> {
    integer(headers?.inner().get(STREAM_OFFSET)?)
}

fn long(n: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX))
}

fn text(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// A non-negative integer of any of the widths a client may encode it in.
fn integer(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_read_back_as_published() {
        for marker in [
            Marker::Probe { id: "p1".into() },
            Marker::Claim {
                epoch: "s1".into(),
                after: 0,
            },
            Marker::Mark {
                epoch: "s1".into(),
                node: "n".into(),
                sent_ms: 1_700_000_000_000,
                after: 41,
            },
        ] {
            let headers = marker.headers();
            assert_eq!(Marker::read(Some(&headers)), Some(Ok(marker)));
        }
    }

    #[test]
    fn a_marker_from_before_a_recreation_is_not_of_this_stream() {
        let mark = |after| Marker::Mark {
            epoch: "s-old".into(),
            node: "n".into(),
            sent_ms: 0,
            after,
        };
        assert!(mark(41).is_of_this_stream(42));
        // Published by a node that had read offset 5,000 of the deleted stream, found at
        // offset 2 of the new one.
        assert!(!mark(5_000).is_of_this_stream(2));
    }

    #[test]
    fn a_message_without_the_header_is_a_trigger_and_odd_markers_are_not() {
        assert_eq!(Marker::read(None), None);
        let mut headers = FieldTable::default();
        headers.insert("x-other".into(), AMQPValue::LongString("x".into()));
        assert_eq!(Marker::read(Some(&headers)), None);
        headers.insert(KIND.into(), AMQPValue::LongString("future-kind".into()));
        assert_eq!(Marker::read(Some(&headers)), Some(Err(())));
        headers.insert(STREAM_OFFSET.into(), AMQPValue::LongLongInt(42));
        assert_eq!(stream_offset(Some(&headers)), Some(42));
    }
}
