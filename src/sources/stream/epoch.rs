//! Which stream this is: its epoch, found in the stream itself, the same on every node.
//!
//! AMQP 0-9-1 tells a client nothing that names a queue instance (a deleted and recreated
//! stream has the same name and starts again at offset 0), so the stream names itself with
//! [`Marker`]s:
//!
//! - The **epoch is the id of the first mark in the stream**, or, before any node has marked
//!   it, of the first claim.
//! - A node that reads the stream from its start up to a probe of its own without meeting a
//!   mark or a claim publishes a claim with a new random id and goes on reading: the first
//!   claim after its probe is the epoch. Nodes racing on a new stream all adopt the first
//!   claim, since each of them read the stream in the same order and none of their claims can
//!   come before another racer's probe.
//! - Every node then publishes marks with the epoch it adopted, at once and every
//!   [`super::MARK_INTERVAL`]: a mark follows any claim within moments, and retention (which
//!   drops the oldest segments of the stream) never removes the last one while a node runs.
//!   A losing claim that outlives the winning one is harmless: marks come first in the rule.
//! - A recreated stream holds no marker: the first node to read it claims a new epoch, so an
//!   old position never passes for a position in the new stream. Claims and marks carry the
//!   newest offset their node had read: one found at an offset not above that was published
//!   into another instance of the stream (a node that had not yet noticed the recreation) and
//!   is ignored. A stream whose every marker
//!   was dropped by retention (all nodes away for longer than `amqp_stream_max_age`) gets a
//!   new epoch too: clients then refetch (`recovered:false`) rather than risk a hole.
//!
//! The read stops at the first mark, so it costs the messages between the stream's first
//! retained message and the first mark after it: at most a mark interval of triggers, except
//! on a stream that never had marks (declared and filled before any node ran), read once
//! through up to the probe.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use super::marker::{stream_offset, Marker};
use super::new_id;
use crate::sources::amqp::{AckBatch, PREFETCH};
use crate::sources::SourceError;

/// What finding the epoch found.
pub(super) struct Found {
    pub epoch: String,
    /// Messages read to find it.
    pub read: u64,
    /// The newest offset read: certainly in this instance of the stream.
    pub last_offset: u64,
}

/// Reads `stream` from its start until its epoch is known, publishing the probe and, if the
/// stream has no epoch yet, a claim on `publish` (a confirm-mode channel). `None` when `stop`
/// is cancelled first.
pub(super) async fn find(
    connection: &Connection,
    publish: &Channel,
    stream: &str,
    stop: &CancellationToken,
) -> Result<Option<Found>, SourceError> {
    let probe = new_id("p");
    Marker::Probe { id: probe.clone() }
        .publish(publish, stream)
        .await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;
    let mut acks = AckBatch::default();
    let mut first_claim: Option<String> = None;
    let mut claimed = false;
    let mut read = 0;
    let mut last_offset = 0;
    let epoch = loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = stop.cancelled() => return Ok(None),
        };
        let delivery = match delivery {
            Some(delivery) => delivery?,
            None => {
                return Err(SourceError::Lost(
                    "the broker cancelled the stream consumer",
                ))
            }
        };
        read += 1;
        let headers = delivery.properties.headers().as_ref();
        let offset = stream_offset(headers).unwrap_or(0);
        last_offset = last_offset.max(offset);
        let marker = match Marker::read(headers) {
            Some(Ok(marker)) if marker.is_of_this_stream(offset) => Some(marker),
            Some(Ok(stale)) => {
                tracing::warn!(
                    stream,
                    ?stale,
                    offset,
                    "a marker of a deleted stream; ignored"
                );
                None
            }
            _ => None,
        };
        acks.add(delivery.acker).await?;
        match marker {
            Some(Marker::Mark { epoch, .. }) => break epoch,
            Some(Marker::Claim { epoch, .. }) if claimed => break epoch,
            Some(Marker::Claim { epoch, .. }) => {
                first_claim.get_or_insert(epoch);
            }
            Some(Marker::Probe { id }) if id == probe => match first_claim.take() {
                Some(epoch) => break epoch,
                None => {
                    let epoch = new_id("s");
                    tracing::info!(stream, %epoch, "the stream has no epoch yet: claiming one");
                    let claim = Marker::Claim {
                        epoch,
                        after: offset,
                    };
                    claim.publish(publish, stream).await?;
                    claimed = true;
                }
            },
            _ => {}
        }
    };
    acks.flush().await?;
    // Its consumer goes with it; a failure here only leaves a channel the connection closes.
    let _ = channel.close(200, "epoch found".into()).await;
    Ok(Some(Found {
        epoch,
        read,
        last_offset,
    }))
}
