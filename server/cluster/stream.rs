//! The JetStream side: connecting, creating or binding the stream, publishing.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::backoff::Backoff;
use crate::domain::overdue::OverdueMark;
use crate::domain::webhook::EventId;
use crate::store::{Store, StoreError};

/// The header that marks a stream message the intake did not publish, and what it is.
pub(crate) const RECORD_HEADER: &str = "Qistatus-Record";
/// The header of a webhook published after it was held ([`super::held`]): when the node
/// received it, ms since the epoch. Every node takes it as the webhook's received time.
pub(crate) const RECEIVED_HEADER: &str = "Qistatus-Received";
/// [`RECORD_HEADER`]'s value on the overdue clock's proposals.
pub(crate) const OVERDUE_RECORD: &str = "overdue";

/// The body of an overdue proposal in the stream.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct OverdueProposal {
    /// The proposer's clock, in whole seconds: what tells two proposals of the same marks
    /// apart once the first was stored.
    pub(crate) second: i64,
    /// The operations proposed.
    pub(crate) marks: Vec<OverdueMark>,
}

/// Where the cluster's stream is.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS server URLs (any of the cluster's; the client learns the others).
    pub urls: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// Copies JetStream keeps of every message (1, 3 or 5), when it creates the stream.
    pub replicas: usize,
    /// The largest webhook the intake accepts: the stream's message limit follows it.
    pub max_message_bytes: usize,
    /// How long a publish waits for the stream before the webhook is held on this node
    /// ([`super::held`]).
    pub hold_after: Duration,
    /// Most bytes of webhooks held at once; 0 never holds.
    pub hold_bytes: u64,
}

impl ClusterSettings {
    /// The stream's name, by default.
    pub const DEFAULT_STREAM: &str = "qistatus";
    /// Copies of each message, by default: survives the loss of one NATS server.
    pub const DEFAULT_REPLICAS: u8 = 3;
}

/// Why a cluster node cannot start, or a webhook could not be replicated.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server could be reached.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// Why.
        reason: String,
    },
    /// The stream could not be created, bound or read.
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Publishing failed or JetStream did not acknowledge in time: the sender retries.
    #[error("the cluster's stream did not take the webhook: {0}")]
    Publish(String),
    /// This node's view stopped following the stream.
    #[error("this node stopped following the stream: {0}")]
    Follower(String),
    /// The message is in the stream, but this node's view does not show it.
    #[error("stream message {0} is not in this node's view")]
    NotApplied(u64),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node's data directory cannot join this stream.
    #[error("{0}")]
    Incompatible(String),
}

/// The cluster's stream, as one node sees it.
#[derive(Debug)]
pub struct JetStreamLog {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: stream::Stream,
    name: String,
    subject: String,
    max_payload: usize,
}

/// What JetStream said about a published webhook.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    /// Its stream sequence (the first delivery's, for a repeat).
    pub(crate) sequence: u64,
    /// Whether JetStream recognized it as a repeat within its duplicate window.
    pub(crate) duplicate: bool,
}

/// How long one try of a publish waits for JetStream's acknowledgement before it is tried
/// again: a leader that died with the message in flight never answers, and its successor is
/// elected within a few seconds; trying again is safe (the message id makes a repeat a
/// duplicate).
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a publish goes on trying, through a leader election or a reconnect to another
/// NATS server; the intake's request timeout bounds a webhook's before.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// The longest wait between two tries of a publish.
const PUBLISH_RETRY_CEILING: Duration = Duration::from_millis(400);
/// Longest a node waits at its start for the NATS cluster to form (a JetStream leader).
const FORMING: Duration = Duration::from_secs(30);
/// Room for a message's subject and headers within NATS's `max_payload`.
const MESSAGE_OVERHEAD: usize = 4096;

impl JetStreamLog {
    /// Connects, and creates the stream or binds the existing one.
    pub async fn connect(settings: &ClusterSettings) -> Result<JetStreamLog, ClusterError> {
        let urls = settings.urls.join(",");
        let client = async_nats::ConnectOptions::new()
            .name("qistatus")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection");
            })
            .connect(settings.urls.as_slice())
            .await
            .map_err(|e| ClusterError::Connect {
                urls: urls.clone(),
                reason: e.to_string(),
            })?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(PUBLISH_ACK_TIMEOUT);
        let subject = format!("{}.webhooks", settings.stream);
        // Retried while the NATS cluster forms (no JetStream leader yet), for at most
        // `FORMING`.
        let forming = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        let mut attempt = 0;
        let stream = loop {
            let config = stream::Config {
                name: settings.stream.clone(),
                subjects: vec![subject.clone()],
                num_replicas: settings.replicas,
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                max_message_size: i32::try_from(settings.max_message_bytes + MESSAGE_OVERHEAD)
                    .unwrap_or(i32::MAX),
                duplicate_window: Duration::from_secs(120),
                description: Some("qistatus: every webhook received, in order".into()),
                ..Default::default()
            };
            match context.get_or_create_stream(config).await {
                Ok(stream) => break stream,
                Err(e) if forming.elapsed() < FORMING => {
                    attempt += 1;
                    tracing::info!(error = %e, attempt, "waiting for JetStream");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    return Err(ClusterError::Stream {
                        stream: settings.stream.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        };
        // Known once connected, which creating the stream took.
        let max_payload = client.server_info().max_payload;
        Ok(JetStreamLog {
            client,
            context,
            stream,
            name: settings.stream.clone(),
            subject,
            max_payload,
        })
    }

    /// The stream's first and last sequence now.
    pub(crate) async fn bounds(&self) -> Result<(u64, u64), ClusterError> {
        let info = self.info().await?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    async fn info(&self) -> Result<stream::Info, ClusterError> {
        let mut stream = self.stream.clone();
        stream
            .info()
            .await
            .cloned()
            .map_err(|e| ClusterError::Stream {
                stream: self.name.clone(),
                reason: e.to_string(),
            })
    }

    /// Checks that `store` can follow this stream and gives it the stream's identity: 16
    /// bytes from the stream's name and creation time, the same on every node, different for
    /// a stream deleted and made again. Returns the last stream sequence the view took into
    /// account, and the stream's last sequence now.
    pub(crate) async fn bind(&self, store: &Store) -> Result<(u64, u64), ClusterError> {
        let through = store.stream_through()?;
        if through == 0 && store.holds_webhooks()? {
            return Err(ClusterError::Incompatible(
                "the data directory holds a single node's store; a cluster node starts on an \
                 empty --data-dir, or on a snapshot of another node of the cluster"
                    .into(),
            ));
        }
        let info = self.info().await?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if through > last {
            return Err(ClusterError::Incompatible(format!(
                "this node's view followed stream {:?} to message {through}, but the stream ends \
                 at {last}: it is another stream (deleted and made again?); start on an empty \
                 --data-dir",
                self.name
            )));
        }
        if last > 0 && through + 1 < first {
            return Err(ClusterError::Incompatible(format!(
                "this node's view followed stream {:?} to message {through}, but the stream now \
                 starts at {first}: the messages between are gone. Restore a snapshot of another \
                 node (`qistatus snapshot save` there, `qistatus-server restore` here) or start \
                 on an empty --data-dir",
                self.name
            )));
        }
        let mut hash = Sha256::new();
        hash.update(self.name.as_bytes());
        hash.update(info.created.unix_timestamp_nanos().to_be_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.finalize()[..16]);
        store.adopt_identity(id)?;
        Ok((through, last))
    }

    /// Publishes a webhook's verified body with its content hash as the message id, and
    /// waits for JetStream's acknowledgement.
    pub(crate) async fn publish(
        &self,
        event_id: EventId,
        raw: Bytes,
    ) -> Result<Published, ClusterError> {
        self.publish_webhook(&event_id.to_string(), raw, None).await
    }

    /// Publishes a webhook this node held ([`super::held`]) with the time it received it
    /// (ms since the epoch), which every node takes as its received time instead of the
    /// stream's timestamp.
    pub(crate) async fn publish_received(
        &self,
        message_id: &str,
        raw: Bytes,
        received_at: i64,
    ) -> Result<Published, ClusterError> {
        self.publish_webhook(message_id, raw, Some(received_at))
            .await
    }

    async fn publish_webhook(
        &self,
        message_id: &str,
        raw: Bytes,
        received_at: Option<i64>,
    ) -> Result<Published, ClusterError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        if let Some(received_at) = received_at {
            headers.insert(RECEIVED_HEADER, received_at.to_string().as_str());
        }
        let ack = self.publish_until_acknowledged(headers, raw).await?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes `body` with `headers` (its message id among them) and waits for JetStream's
    /// acknowledgement, trying again (with the one retry schedule, [`Backoff`]) while the
    /// stream cannot take it for a passing reason: no leader yet ("no stream found"), an
    /// acknowledgement that never came from a leader that died, a connection being remade to
    /// another server. Safe to repeat: within the duplicate window the message id makes a
    /// second copy a duplicate, acknowledged with the first one's sequence. Only a message
    /// larger than NATS takes fails at once; anything else after [`PUBLISH_PATIENCE`].
    async fn publish_until_acknowledged(
        &self,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck, ClusterError> {
        let started = tokio::time::Instant::now();
        // Short waits: the new leader is there at a moment nobody announces, and a sender
        // waits for the answer.
        let mut backoff = Backoff::up_to(PUBLISH_RETRY_CEILING);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let tried = async {
                self.context
                    .publish_with_headers(self.subject.clone(), headers.clone(), body.clone())
                    .await?
                    .await
            };
            match tried.await {
                Ok(ack) => {
                    if tries > 1 {
                        tracing::info!(
                            tries,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "the stream took a message after retries"
                        );
                    }
                    return Ok(ack);
                }
                Err(e)
                    if e.kind() != jetstream::context::PublishErrorKind::MaxPayloadExceeded
                        && started.elapsed() < PUBLISH_PATIENCE =>
                {
                    tracing::debug!(error = %e, tries, "the stream did not take a message yet; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(ClusterError::Publish(e.to_string())),
            }
        }
    }

    /// Publishes the overdue clock's proposal of `marks`, read at `tick` (ms), marked as
    /// such by a header (the intake publishes only webhooks, never with it), and returns its
    /// stream sequence. Its message id is its content's hash: nodes that propose the same
    /// marks in the same second are stored once; proposals that repeat one already recorded
    /// change nothing when applied (see `crate::store::due`).
    pub(crate) async fn publish_overdue(
        &self,
        marks: &[OverdueMark],
        tick: i64,
    ) -> Result<u64, ClusterError> {
        let body = serde_json::to_vec(&OverdueProposal {
            second: tick.div_euclid(1000),
            marks: marks.to_vec(),
        })
        .expect("a proposal serializes: strings and numbers");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("overdue-{}", hex::encode(Sha256::digest(&body))).as_str(),
        );
        headers.insert(RECORD_HEADER, OVERDUE_RECORD);
        let ack = self
            .publish_until_acknowledged(headers, body.into())
            .await?;
        Ok(ack.sequence)
    }

    /// The largest webhook the stream takes: NATS's `max_payload` less room for headers.
    pub(crate) fn max_webhook_bytes(&self) -> usize {
        self.max_payload.saturating_sub(MESSAGE_OVERHEAD)
    }

    /// The stream, for the follower.
    pub(crate) fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// The cluster's key-value bucket for `what` (`recovery`: its state and who recovers),
    /// beside the stream and replicated as it is: created if missing. Its values are kept
    /// one revision deep, and updated with compare-and-set by revision, which is how nodes
    /// agree through JetStream rather than among themselves.
    pub(crate) async fn bucket(
        &self,
        what: &str,
    ) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
        let bucket = format!("{}-{what}", self.name);
        let replicas = self.stream.cached_info().config.num_replicas;
        let config = async_nats::jetstream::kv::Config {
            bucket: bucket.clone(),
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            description: format!("qistatus: {what}"),
            ..Default::default()
        };
        let failed = |reason: String| ClusterError::Stream {
            stream: bucket.clone(),
            reason,
        };
        match self.context.get_key_value(&bucket).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .context
                .create_key_value(config)
                .await
                .map_err(|e| failed(e.to_string())),
        }
    }

    /// Whether the client is connected to a NATS server now.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
