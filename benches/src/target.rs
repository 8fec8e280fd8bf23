//! The systems under test, as the load generator sees them: a [`Target`] stores a webhook
//! durably, reads an operation back, and opens a watch. One implementation per system, so a
//! scenario is written once and run against each.

use std::future::Future;
use std::sync::Arc;

use qistatus::pb;
use qistatus::pb::operation_status_service_client::OperationStatusServiceClient;
use tonic::transport::Channel;

use crate::etcd::{self, EtcdClient};
use crate::load::{HttpClient, Webhook, channels, http_client, post, post_answer};
use crate::process::Process;

/// What one watcher watches.
pub enum WatchSpec {
    /// One operation key.
    Key(String),
    /// A share of all keys: a status in qistatus, the matching key prefix in a peer.
    Share {
        /// The status qistatus filters on.
        status: String,
        /// The key prefix a key-value peer filters on.
        key_prefix: String,
    },
}

/// A system under test.
pub trait Target: Clone + Send + Sync + 'static {
    /// Stores a webhook durably; returns its position (a sequence, or a revision counted
    /// from the start of the run), which watch deliveries are matched against.
    fn write(&self, i: usize, w: &Webhook) -> impl Future<Output = Option<u64>> + Send;

    /// Reads the current state of `w`'s operation; whether it was found.
    fn read(&self, i: usize, w: &Webhook) -> impl Future<Output = bool> + Send;
}

/// A system under test that can push changes to watchers.
pub trait Watchable: Target {
    /// An open watch stream.
    type Feed: Feed;

    /// Opens a watch; returns once the server has registered it.
    fn watch(&self, i: usize, spec: WatchSpec) -> impl Future<Output = Self::Feed> + Send;
}

/// An open watch stream of a [`Target`].
pub trait Feed: Send + 'static {
    /// The positions of the next delivered writes; `None` when the stream ends.
    fn next(&mut self) -> impl Future<Output = Option<Vec<u64>>> + Send;
}

/// qistatus: webhooks over HTTP, reads and watches over gRPC.
#[derive(Clone)]
pub struct QistatusTarget {
    http: HttpClient,
    urls: Arc<[String]>,
    chans: Arc<Vec<Channel>>,
    /// How point reads ask for each webhook's data: a Struct (`Full`) or its JSON text
    /// (`Json`).
    view: pb::OperationView,
}

impl QistatusTarget {
    /// Connects to a running qistatus-server.
    pub async fn connect(server: &Process) -> Self {
        Self::connect_all(&[server]).await
    }

    /// Connects to the nodes of a cluster: sender and reader `i` use node `i % nodes`.
    pub async fn connect_all(servers: &[&Process]) -> Self {
        let mut chans = Vec::new();
        for server in servers {
            chans.extend(channels(&server.grpc, 8).await);
        }
        // Interleaved, so that `i % len` spreads over the nodes as the URLs do.
        let per_node = chans.len() / servers.len().max(1);
        let chans = (0..per_node)
            .flat_map(|c| (0..servers.len()).map(move |n| n * per_node + c))
            .map(|i| chans[i].clone())
            .collect();
        QistatusTarget {
            http: http_client(),
            urls: servers
                .iter()
                .map(|s| format!("{}/webhooks", s.http))
                .collect(),
            chans: Arc::new(chans),
            view: pb::OperationView::Full,
        }
    }

    /// The same target, reading each webhook's data in `view`.
    pub fn with_view(&self, view: pb::OperationView) -> Self {
        QistatusTarget {
            view,
            ..self.clone()
        }
    }

    /// POSTs webhook `w` by sender `i`; the JSON of a `200` answer.
    pub async fn post_answer(&self, i: usize, w: &Webhook) -> Option<serde_json::Value> {
        post_answer(&self.http, &self.urls[i % self.urls.len()], w.body.clone()).await
    }

    fn api(&self, i: usize) -> OperationStatusServiceClient<Channel> {
        OperationStatusServiceClient::new(self.chans[i % self.chans.len()].clone())
    }
}

impl Target for QistatusTarget {
    async fn write(&self, i: usize, w: &Webhook) -> Option<u64> {
        post(&self.http, &self.urls[i % self.urls.len()], w.body.clone()).await
    }

    async fn read(&self, i: usize, w: &Webhook) -> bool {
        let answer = self
            .api(i)
            .get_operation(pb::GetOperationRequest {
                key: w.key.clone(),
                kind: w.kind.clone(),
                include_raw_payload: false,
                // With each webhook's data, as etcd's get returns the stored value: the
                // same work as before the basic view became the default.
                view: self.view as i32,
            })
            .await;
        // Bytes are left as bytes, as PostgreSQL's rows are: what each form costs the reader
        // is decoding the response (a Struct is built field by field there).
        answer.is_ok()
    }
}

impl Watchable for QistatusTarget {
    type Feed = tonic::Streaming<pb::WatchOperationResponse>;

    async fn watch(&self, i: usize, spec: WatchSpec) -> Self::Feed {
        let request = match spec {
            WatchSpec::Key(key) => pb::WatchOperationRequest {
                key,
                ..Default::default()
            },
            WatchSpec::Share { status, .. } => pb::WatchOperationRequest {
                kinds: vec!["bench".into()],
                statuses: vec![status],
                ..Default::default()
            },
        };
        let mut stream = self
            .api(i)
            .watch_operation(request)
            .await
            .expect("watch")
            .into_inner();
        // The first message is the starting progress: the watcher is registered.
        stream.message().await.expect("watch").expect("progress");
        stream
    }
}

impl Feed for tonic::Streaming<pb::WatchOperationResponse> {
    async fn next(&mut self) -> Option<Vec<u64>> {
        let message = self.message().await.ok()??;
        Some(match message.event {
            Some(pb::watch_operation_response::Event::Change(c)) => vec![c.sequence],
            _ => Vec::new(),
        })
    }
}

/// The no-op HTTP receiver: writes are posts answered without storing; it has nothing to
/// read.
#[derive(Clone)]
pub struct NullTarget {
    http: HttpClient,
    url: String,
}

impl NullTarget {
    /// Posts to a running `qistatus-null-receiver`.
    pub fn connect(server: &Process) -> Self {
        NullTarget {
            http: http_client(),
            url: format!("{}/webhooks", server.http),
        }
    }
}

impl Target for NullTarget {
    async fn write(&self, _: usize, w: &Webhook) -> Option<u64> {
        post(&self.http, &self.url, w.body.clone()).await
    }

    async fn read(&self, _: usize, _: &Webhook) -> bool {
        false
    }
}

/// etcd, as a team would use it for statuses: a put per webhook under
/// `ops/<kind>/<key>`, a serializable range per question, a prefix watch to react.
#[derive(Clone)]
pub struct EtcdTarget {
    chans: Arc<Vec<Channel>>,
    /// The revision before the run: a put's position is its revision minus this.
    base_revision: i64,
}

impl EtcdTarget {
    /// Connects to a running etcd.
    pub async fn connect(server: &Process) -> Self {
        let chans = channels(&server.grpc, 8).await;
        let base_revision = EtcdClient::new(chans[0].clone())
            .range(etcd::RangeRequest {
                key: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .header
            .map_or(0, |h| h.revision);
        EtcdTarget {
            chans: Arc::new(chans),
            base_revision,
        }
    }

    fn client(&self, i: usize) -> EtcdClient {
        EtcdClient::new(self.chans[i % self.chans.len()].clone())
    }
}

fn etcd_key(w: &Webhook) -> Vec<u8> {
    format!("ops/{}/{}", w.kind, w.key).into_bytes()
}

impl Target for EtcdTarget {
    async fn write(&self, i: usize, w: &Webhook) -> Option<u64> {
        let response = self
            .client(i)
            .put(etcd::PutRequest {
                key: etcd_key(w),
                value: w.body.to_vec(),
            })
            .await
            .ok()?;
        let revision = response.header?.revision;
        Some((revision - self.base_revision).max(0) as u64)
    }

    async fn read(&self, i: usize, w: &Webhook) -> bool {
        self.client(i)
            .range(etcd::RangeRequest {
                key: etcd_key(w),
                serializable: true,
            })
            .await
            .is_ok_and(|r| r.kvs.len() == 1)
    }
}

impl Watchable for EtcdTarget {
    type Feed = EtcdFeed;

    async fn watch(&self, i: usize, spec: WatchSpec) -> EtcdFeed {
        let create = match spec {
            WatchSpec::Key(key) => etcd::WatchCreateRequest {
                key: format!("ops/bench/{key}").into_bytes(),
                ..Default::default()
            },
            WatchSpec::Share { key_prefix, .. } => {
                let prefix = format!("ops/bench/{key_prefix}").into_bytes();
                etcd::WatchCreateRequest {
                    range_end: etcd::prefix_end(&prefix),
                    key: prefix,
                }
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(etcd::WatchRequest {
            create_request: Some(create),
        })
        .await
        .expect("queue");
        let mut stream = self
            .client(i)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch");
        let created = stream.message().await.expect("watch").expect("created");
        assert!(created.created, "etcd created the watch");
        EtcdFeed {
            stream,
            _requests: tx,
            base_revision: self.base_revision,
        }
    }
}

/// An etcd watch stream.
pub struct EtcdFeed {
    stream: tonic::Streaming<etcd::WatchResponse>,
    /// Kept open: etcd ends the watch when its request stream closes.
    _requests: tokio::sync::mpsc::Sender<etcd::WatchRequest>,
    base_revision: i64,
}

impl Feed for EtcdFeed {
    async fn next(&mut self) -> Option<Vec<u64>> {
        let message = self.stream.message().await.ok()??;
        Some(
            message
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| (kv.mod_revision - self.base_revision).max(0) as u64)
                .collect(),
        )
    }
}

/// PostgreSQL, as a team would write the same service on it: an `events` table with a
/// unique content hash (deduplication) and the payload as `jsonb`, an upserted `operations`
/// table with a status index, one transaction per webhook at `synchronous_commit = on`,
/// prepared statements, one connection per sender.
#[derive(Clone)]
pub struct PostgresTarget {
    connections: Arc<Vec<PostgresConnection>>,
}

struct PostgresConnection {
    client: tokio_postgres::Client,
    insert_event: tokio_postgres::Statement,
    upsert_operation: tokio_postgres::Statement,
    read_operation: tokio_postgres::Statement,
}

/// The schema a team would write.
const POSTGRES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS events (
        id bigserial PRIMARY KEY,
        content_hash bytea NOT NULL UNIQUE,
        kind text NOT NULL,
        key text NOT NULL,
        status text NOT NULL,
        payload jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS events_operation ON events (kind, key);
    CREATE TABLE IF NOT EXISTS operations (
        kind text NOT NULL,
        key text NOT NULL,
        status text NOT NULL,
        version bigint NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX IF NOT EXISTS operations_status ON operations (status, kind, key);
";

impl PostgresTarget {
    /// Opens `connections` connections to `url`, creating the schema on the first.
    pub async fn connect(url: &str, connections: usize) -> Self {
        let mut all = Vec::with_capacity(connections);
        for i in 0..connections {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect to PostgreSQL");
            tokio::spawn(connection);
            if i == 0 {
                client
                    .batch_execute(POSTGRES_SCHEMA)
                    .await
                    .expect("create the schema");
            }
            let insert_event = client
                .prepare(
                    "INSERT INTO events (content_hash, kind, key, status, payload) \
                     VALUES ($1, $2, $3, $4, $5::text::jsonb) \
                     ON CONFLICT (content_hash) DO NOTHING RETURNING id",
                )
                .await
                .expect("prepare");
            let upsert_operation = client
                .prepare(
                    "INSERT INTO operations (kind, key, status, version, updated_at) \
                     VALUES ($1, $2, $3, 1, now()) ON CONFLICT (kind, key) DO UPDATE \
                     SET status = EXCLUDED.status, version = operations.version + 1, \
                     updated_at = now()",
                )
                .await
                .expect("prepare");
            let read_operation = client
                .prepare(
                    "SELECT o.status, o.version, e.status, e.payload::text FROM operations o \
                     JOIN events e ON e.kind = o.kind AND e.key = o.key \
                     WHERE o.kind = $1 AND o.key = $2 ORDER BY e.id",
                )
                .await
                .expect("prepare");
            all.push(PostgresConnection {
                client,
                insert_event,
                upsert_operation,
                read_operation,
            });
        }
        PostgresTarget {
            connections: Arc::new(all),
        }
    }

    fn connection(&self, i: usize) -> &PostgresConnection {
        &self.connections[i % self.connections.len()]
    }
}

/// The status a team's code would read from a webhook (the seed shapes keep it in `status`).
fn webhook_status(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Target for PostgresTarget {
    async fn write(&self, i: usize, w: &Webhook) -> Option<u64> {
        use sha2::Digest;
        let c = self.connection(i);
        let hash = sha2::Sha256::digest(&w.body).to_vec();
        let status = webhook_status(&w.body);
        let payload = std::str::from_utf8(&w.body).ok()?;
        c.client.batch_execute("BEGIN").await.ok()?;
        let inserted = c
            .client
            .query_opt(
                &c.insert_event,
                &[&hash, &w.kind, &w.key, &status, &payload],
            )
            .await
            .ok()?;
        if inserted.is_some() {
            c.client
                .execute(&c.upsert_operation, &[&w.kind, &w.key, &status])
                .await
                .ok()?;
        }
        c.client.batch_execute("COMMIT").await.ok()?;
        let id: i64 = inserted.map_or(0, |row| row.get(0));
        Some(id as u64)
    }

    async fn read(&self, i: usize, w: &Webhook) -> bool {
        let c = self.connection(i);
        c.client
            .query(&c.read_operation, &[&w.kind, &w.key])
            .await
            .is_ok_and(|rows| !rows.is_empty())
    }
}

/// Raw JetStream: each webhook's body published to a stream of three replicas with its
/// content hash as the message id, and the stream's acknowledgement awaited. What a cluster
/// node's intake does before anything of its own: the floor under the cluster's ingest.
#[derive(Clone)]
pub struct JetStreamTarget {
    contexts: Arc<Vec<async_nats::jetstream::Context>>,
}

/// The subject (and stream) the raw publishes go to.
const RAW_SUBJECT: &str = "bench-raw";

impl JetStreamTarget {
    /// Connects `connections` clients, spread over the servers in `urls` (comma-separated),
    /// and creates the stream (R3, on file, a two-minute duplicate window: as the cluster's).
    pub async fn connect(urls: &str, connections: usize) -> Self {
        use async_nats::jetstream::stream;
        let servers: Vec<&str> = urls.split(',').collect();
        let mut contexts = Vec::with_capacity(connections);
        for i in 0..connections.max(1) {
            let client = async_nats::connect(servers[i % servers.len()])
                .await
                .expect("connect to NATS");
            contexts.push(async_nats::jetstream::new(client));
        }
        contexts[0]
            .get_or_create_stream(stream::Config {
                name: RAW_SUBJECT.into(),
                subjects: vec![RAW_SUBJECT.into()],
                num_replicas: 3,
                storage: stream::StorageType::File,
                duplicate_window: std::time::Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("create the raw stream");
        JetStreamTarget {
            contexts: Arc::new(contexts),
        }
    }
}

impl Target for JetStreamTarget {
    async fn write(&self, i: usize, w: &Webhook) -> Option<u64> {
        use sha2::{Digest, Sha256};
        let id: String = Sha256::digest(&w.body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let context = &self.contexts[i % self.contexts.len()];
        let ack = context
            .publish_with_headers(RAW_SUBJECT, headers, w.body.clone())
            .await
            .ok()?
            .await
            .ok()?;
        Some(ack.sequence)
    }

    async fn read(&self, _: usize, _: &Webhook) -> bool {
        false
    }
}
