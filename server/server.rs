//! Starting and stopping qistatus: both listeners, the writer, and a graceful drain.
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so tests start the
//! real server on port 0 in-process, and the binary passes SIGINT/SIGTERM. On shutdown the
//! listeners stop accepting, in-flight requests finish (their webhooks are stored and
//! answered), the writer drains its queue and flushes, and `run` returns.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::admin::{self, AdminState};
use crate::auth::grpc::{BearerAuthLayer, BearerTokens};
use crate::auth::response_signing::ResponseSigner;
use crate::auth::webhook::WebhookVerifier;
use crate::cluster::{self, ClusterError, ClusterSettings, JetStreamLog, Progress, Publisher};
use crate::console::ConsoleState;
use crate::domain::catalog::{Catalog, CatalogHandle};
use crate::feed::{ChangeFeed, FeedSettings};
use crate::grpc::{GrpcLimits, MaintenanceApi, OperationStatusApi, OutcomeLayer};
use crate::intake::{self, Ingest, IntakeLimits, IntakeState};
use crate::metrics::Metrics;
use crate::net::{self, Admission, AtCapacity, HttpTimeouts};
use crate::pb;
use crate::reload::CatalogReloader;
use crate::store::{Store, StoreError};
use crate::store::{SubmitError, WriterHandle, WriterLimits};
use crate::tls::TlsIdentity;

/// Days raw webhooks and change records stay in the log, by default.
pub const DEFAULT_LOG_RETENTION_DAYS: u32 = 90;
/// How often expired log entries are dropped, by default.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(3600);

/// `days` as a duration.
pub(crate) fn days(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

/// Everything `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The effective catalog.
    pub catalog: Catalog,
    /// The file the catalog was extended with (`--catalog`), read again by a reload.
    pub catalog_file: Option<PathBuf>,
    /// Whether SIGHUP reloads the catalog (the binary: yes; tests use the admin call).
    pub reload_on_sighup: bool,
    /// Intake limits.
    pub intake: IntakeLimits,
    /// gRPC connection and request limits.
    pub grpc: GrpcLimits,
    /// Writer limits.
    pub writer: WriterLimits,
    /// Watch (change feed) limits and timings.
    pub feed: FeedSettings,
    /// How long raw webhooks and change records stay in the log.
    pub log_retention: Duration,
    /// How often expired log entries are dropped (also once at start).
    pub compaction_interval: Duration,
    /// Who may post webhooks (no verification when empty).
    pub webhook_verifier: WebhookVerifier,
    /// Signs the intake's acknowledgements, when set.
    pub response_signer: Option<ResponseSigner>,
    /// Who may call the gRPC API (open when empty).
    pub grpc_tokens: BearerTokens,
    /// TLS for both listeners, when set.
    pub tls: Option<TlsIdentity>,
    /// Bytes of sled's page cache.
    pub cache_bytes: u64,
    /// The cluster's stream, for a cluster node; `None` for a single node.
    pub cluster: Option<ClusterSettings>,
}

impl Settings {
    /// Default settings on `data_dir`, with the built-in catalog: the same defaults as the
    /// server's flags, which take theirs from the same constants.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            catalog: Catalog::builtin(),
            catalog_file: None,
            reload_on_sighup: false,
            intake: IntakeLimits::DEFAULT,
            grpc: GrpcLimits::DEFAULT,
            writer: WriterLimits::DEFAULT,
            feed: FeedSettings::DEFAULT,
            log_retention: days(DEFAULT_LOG_RETENTION_DAYS),
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            webhook_verifier: WebhookVerifier::default(),
            response_signer: None,
            grpc_tokens: BearerTokens::default(),
            tls: None,
            cache_bytes: crate::store::DEFAULT_CACHE_MB * 1024 * 1024,
            cluster: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or written.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The gRPC listener failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The writer stopped unexpectedly.
    #[error("writer: {0}")]
    Writer(#[from] SubmitError),
    /// The TLS identity is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The cluster's stream could not be joined.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The reflection service could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The sockets `run` serves, bound by the caller (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    /// The webhook intake (HTTP).
    pub http: TcpListener,
    /// The gRPC API.
    pub grpc: TcpListener,
    /// The admin endpoints (`/livez`, `/readyz`, `/metrics`), when wanted.
    pub admin: Option<TcpListener>,
}

/// How long a cluster node's watch waits for a resume point another node reached first.
const CLUSTER_CATCH_UP: Duration = Duration::from_secs(10);

/// Most connections the admin listener keeps (probes and scrapers).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Serves webhooks, the gRPC API and the admin endpoints on `listeners` until `shutdown`
/// completes, then drains and returns.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Listeners { http, grpc, admin } = listeners;
    let metrics = Arc::new(Metrics::new());
    // Check the TLS identity before touching the store.
    let tls = settings
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?
        .map(TlsAcceptor::from);
    let (intake_connections, grpc_connections, lowered) = net::connection_budget(
        settings.intake.max_connections,
        settings.grpc.max_connections,
    );
    if let Some(warning) = lowered {
        tracing::warn!("{warning}");
    }
    let store = Store::open_with_cache(&settings.data_dir, settings.cache_bytes)?;
    let quarantined = store.quarantine_len();
    if quarantined > 0 {
        tracing::warn!(
            quarantined,
            "webhooks in quarantine: see `qistatus-server quarantine`"
        );
    }
    // A cluster node binds the stream before its writer starts: the store takes the stream's
    // identity, and a store that cannot follow it is refused before anything changes.
    let mut intake_limits = settings.intake;
    let stream = match &settings.cluster {
        Some(cluster) => {
            let log = Arc::new(JetStreamLog::connect(cluster).await?);
            if log.max_webhook_bytes() < intake_limits.max_body {
                tracing::warn!(
                    max_body = log.max_webhook_bytes(),
                    "NATS takes smaller messages than --max-body: the intake refuses larger \
                     webhooks with 413; raise max_payload in the NATS servers' configuration"
                );
                intake_limits.max_body = log.max_webhook_bytes();
            }
            let (through, last) = log.bind(&store).await?;
            tracing::info!(
                stream = %cluster.stream,
                applied_through = through,
                stream_ends = last,
                "following the cluster's stream"
            );
            let progress = Arc::new(Progress::new(log.clone(), through, last));
            Some((log, progress))
        }
        None => None,
    };
    let catalog_handle = CatalogHandle::new(settings.catalog);
    let catalog = catalog_handle.current();
    let (writer, writer_task) = crate::store::spawn_writer(
        store.clone(),
        catalog.clone(),
        settings.writer,
        metrics.clone(),
    )?;
    compact_expired(&writer, settings.log_retention).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut feed = ChangeFeed::new(
        store.clone(),
        writer.recent(),
        writer.committed(),
        stop_rx.clone(),
        settings.feed,
    );
    if stream.is_some() {
        feed = feed.waiting_for_the_cluster(CLUSTER_CATCH_UP);
    }
    let compaction = tokio::spawn(compact_periodically(
        writer.clone(),
        settings.log_retention,
        settings.compaction_interval,
        stop_rx.clone(),
    ));
    let (ingest, follower) = match &stream {
        Some((log, progress)) => (
            Ingest::Cluster(Publisher {
                log: log.clone(),
                progress: progress.clone(),
                store: store.clone(),
            }),
            Some(tokio::spawn(cluster::follow(
                log.clone(),
                writer.clone(),
                catalog.clone(),
                progress.clone(),
                stop_rx.clone(),
            ))),
        ),
        None => (Ingest::Local(writer.clone()), None),
    };
    let app = intake::router(
        IntakeState {
            catalog: catalog_handle.clone(),
            ingest,
            verifier: Arc::new(settings.webhook_verifier),
            signer: settings.response_signer.map(Arc::new),
            metrics: metrics.clone(),
        },
        intake_limits,
    );
    let intake_admission = Admission::new(
        "intake",
        intake_connections,
        AtCapacity::EvictIdle,
        metrics.shed_counter("intake"),
    );
    let http_server = net::serve_http(
        net::accept_connections(
            http,
            tls.clone(),
            intake_admission.clone(),
            settings.intake.handshake_timeout,
            stop_rx.clone(),
        ),
        app,
        HttpTimeouts {
            header_read: settings.intake.header_read_timeout,
            idle: settings.intake.idle_timeout,
        },
        stop_rx.clone(),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::operation_status_service_server::OperationStatusServiceServer<OperationStatusApi>>()
        .await;
    // Reflection lists every service served, health included, in both protocol versions
    // (grpcurl and buf curl speak v1; older tools only v1alpha).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let maintenance = pb::maintenance_service_server::MaintenanceServiceServer::new(
        MaintenanceApi::new(store.clone(), feed.clone(), writer.clone()),
    )
    .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES);
    let api = pb::operation_status_service_server::OperationStatusServiceServer::new(
        OperationStatusApi::new(catalog_handle.clone(), store.clone(), feed.clone())?,
    )
    .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES);
    let grpc_admission = Admission::new(
        "grpc",
        grpc_connections,
        AtCapacity::Refuse,
        metrics.shed_counter("grpc"),
    );
    let incoming = ReceiverStream::new(net::accept_connections(
        grpc,
        tls,
        grpc_admission.clone(),
        settings.grpc.handshake_timeout,
        stop_rx.clone(),
    ))
    .map(Ok::<_, std::io::Error>);
    let grpc_server = tonic::transport::Server::builder()
        .timeout(settings.grpc.request_timeout)
        .max_connection_age(settings.grpc.max_connection_age)
        .max_connection_age_grace(Duration::from_secs(60))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(OutcomeLayer::new(metrics.clone()))
        .layer(BearerAuthLayer::new(settings.grpc_tokens.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(maintenance)
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        health
            .set_not_serving::<pb::operation_status_service_server::OperationStatusServiceServer<OperationStatusApi>>()
            .await;
        let _ = stop_tx.send(true);
    });

    // The console asks people for the same tokens as the API.
    let console_tokens = settings.grpc_tokens;
    let reloader = CatalogReloader {
        path: settings.catalog_file.clone(),
        catalog: catalog_handle.clone(),
        writer: writer.clone(),
        cluster: stream.is_some(),
    };
    // Listening for SIGHUP from here on, before any listener answers (its default action
    // would end the process).
    let sighup = match settings.reload_on_sighup {
        false => None,
        true => match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(tokio::spawn(reload_on_sighup(
                hangups,
                reloader.clone(),
                stop_rx.clone(),
            ))),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload with POST /catalog/reload");
                None
            }
        },
    };
    let admin_server = {
        let state = AdminState {
            console: ConsoleState::new(
                store.clone(),
                feed.clone(),
                catalog_handle.clone(),
                console_tokens,
            ),
            reloader,
            metrics,
            store: store.clone(),
            writer,
            feed,
            intake: intake_admission.clone(),
            grpc: grpc_admission.clone(),
            stopping: stop_rx.clone(),
            cluster: stream.as_ref().map(|(_, progress)| progress.clone()),
        };
        let stop = stop_rx.clone();
        async move {
            let Some(listener) = admin else { return };
            let admission = Admission::new(
                "admin",
                ADMIN_MAX_CONNECTIONS,
                AtCapacity::EvictIdle,
                state.metrics.shed_counter("admin"),
            );
            let incoming = net::accept_connections(
                listener,
                None,
                admission,
                crate::intake::IntakeLimits::DEFAULT.handshake_timeout,
                stop.clone(),
            );
            let timeouts = HttpTimeouts {
                header_read: crate::intake::IntakeLimits::DEFAULT.header_read_timeout,
                idle: crate::intake::IntakeLimits::DEFAULT.idle_timeout,
            };
            net::serve_http(incoming, admin::router(state), timeouts, stop).await;
        }
    };

    let ((), grpc_result, ()) = tokio::join!(http_server, grpc_server, admin_server);
    if let Err(e) = compaction.await {
        tracing::error!(error = %e, "the compaction task failed");
    }
    if let Some(sighup) = sighup
        && let Err(e) = sighup.await
    {
        tracing::error!(error = %e, "the SIGHUP task failed");
    }
    if let Some(follower) = follower
        && let Err(e) = follower.await
    {
        tracing::error!(error = %e, "the stream follower failed");
    }
    // Every writer handle lived in the HTTP app, the compaction task and the follower, which
    // are gone now:
    // the writer drains its queue, flushes and stops.
    tokio::task::spawn_blocking(move || writer_task.join())
        .await
        .expect("the writer join task does not panic: join() logs a writer panic instead");
    store.flush()?;
    grpc_result?;
    tracing::info!(
        intake_connections_shed = intake_admission.shed(),
        grpc_connections_shed = grpc_admission.shed(),
        "stopped"
    );
    Ok(())
}

/// Most log entries one compaction step drops, so that ingest is never held up for long.
const COMPACTION_STEP: usize = 10_000;

/// Drops every log entry older than `retention`, in steps between writer batches.
async fn compact_expired(writer: &WriterHandle, retention: Duration) -> Result<(), SubmitError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = crate::clock::now_millis().saturating_sub(retention_ms);
    while writer.compact(cutoff, COMPACTION_STEP).await?.more {}
    Ok(())
}

async fn compact_periodically(
    writer: WriterHandle,
    retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = compact_expired(&writer, retention).await {
            tracing::error!(error = %e, "log compaction failed");
        }
    }
}

/// Reloads the catalog on every SIGHUP until `stop`.
async fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: CatalogReloader,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tracing::info!("SIGHUP: reloading the catalog");
        if let Err(e) = reloader.reload().await {
            tracing::error!(error = %e, "catalog reload failed; the previous catalog stays in effect");
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
