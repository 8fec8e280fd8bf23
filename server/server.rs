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
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminLimits, AdminState};
use crate::auth::grpc::{BearerAuthLayer, BearerTokens};
use crate::auth::response_signing::ResponseSigner;
use crate::auth::webhook::WebhookVerifier;
use crate::clock::Clock;
use crate::cluster::{self, ClusterError, ClusterSettings, Held, JetStreamLog, Progress};
use crate::console::{ConsoleAccess, ConsoleState};
use crate::domain::catalog::Catalog;
use crate::feed::{ChangeFeed, FeedSettings};
use crate::grpc::{GrpcLimits, MaintenanceApi, OperationStatusApi, OutcomeLayer};
use crate::intake::{self, IntakeLimits, IntakeState};
use crate::listing::Lists;
use crate::metrics::Metrics;
use crate::net::{self, Admission, AtCapacity, HttpTimeouts};
use crate::overdue_clock;
use crate::pb;
use crate::qitech_api::{QiApi, QiApiError, QiApiSettings};
use crate::recovery::ledger::Ledger;
use crate::recovery::{Recovery, RecoveryError, RecoveryHandle, RecoverySettings};
use crate::reload::{CatalogHandle, CatalogReloader};
use crate::sequencer::Sequencer;
use crate::store::{ScrubProgress, Store, StoreError};
use crate::store::{
    SubmitError, WriterHandle, WriterLimits, WriterTask, rebuild_if_the_catalog_changed,
    spawn_writer,
};
use crate::tls::TlsIdentity;

/// Days raw webhooks (and the change feed they make) stay in the log, by default.
pub const DEFAULT_LOG_RETENTION_DAYS: u32 = 90;
/// How often expired log entries are dropped, by default.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the log is scrubbed, by default: daily.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How soon after a start the first scrub pass begins, by default: damage a stopped server's
/// disk took is reported within minutes.
pub const DEFAULT_SCRUB_FIRST_DELAY: Duration = Duration::from_secs(60);
/// How fast the scrub reads, by default, in MiB per second: a small share of a disk.
pub const DEFAULT_SCRUB_MB_PER_SECOND: u64 = 16;

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
    /// The admin listener's connection limits.
    pub admin: AdminLimits,
    /// Host names the admin listener answers for besides `localhost` and IP addresses.
    pub admin_hosts: Vec<String>,
    /// Proxies in front of the admin listener whose `X-Forwarded-For` names a sign-in's
    /// client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Writer limits.
    pub writer: WriterLimits,
    /// Watch (change feed) limits and timings.
    pub feed: FeedSettings,
    /// How long raw webhooks (and the change feed they make) stay in the log.
    pub log_retention: Duration,
    /// How often expired log entries are dropped (also once at start).
    pub compaction_interval: Duration,
    /// How often the overdue clock looks for operations that fell overdue.
    pub overdue_tick: Duration,
    /// How often every sealed log segment is read back and checked; `None`: never.
    pub scrub_interval: Option<Duration>,
    /// How fast the scrub reads, in bytes per second.
    pub scrub_bytes_per_second: u64,
    /// How soon after the start the first scrub pass begins (at most `scrub_interval`).
    pub scrub_first_delay: Duration,
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
    /// Whether writes keep the flow's counters (stage durations, lag, cohorts): `--no-flow`
    /// saves their cost per webhook, and `GetFlow` then answers FAILED_PRECONDITION.
    pub flow: bool,
    /// The cluster's stream, for a cluster node; `None` for a single node.
    pub cluster: Option<ClusterSettings>,
    /// The clock every part reads the time of day from: the system's, or a test's
    /// [`crate::ManualClock`].
    pub clock: Clock,
    /// QI's API, when configured: recovery asks it to resend what it failed to deliver.
    pub qitech_api: Option<QiApiSettings>,
    /// How recovery goes about it.
    pub recovery: RecoverySettings,
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
            admin: AdminLimits::DEFAULT,
            admin_hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            writer: WriterLimits::DEFAULT,
            feed: FeedSettings::DEFAULT,
            log_retention: days(DEFAULT_LOG_RETENTION_DAYS),
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            overdue_tick: crate::overdue_clock::DEFAULT_TICK,
            scrub_interval: Some(DEFAULT_SCRUB_INTERVAL),
            scrub_bytes_per_second: DEFAULT_SCRUB_MB_PER_SECOND * 1024 * 1024,
            scrub_first_delay: DEFAULT_SCRUB_FIRST_DELAY,
            webhook_verifier: WebhookVerifier::default(),
            response_signer: None,
            grpc_tokens: BearerTokens::default(),
            tls: None,
            cache_bytes: crate::store::DEFAULT_CACHE_MB * 1024 * 1024,
            flow: true,
            cluster: None,
            clock: Clock::system(),
            qitech_api: None,
            recovery: RecoverySettings::DEFAULT,
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
    /// Recovery could not start (QI API's settings, or its state).
    #[error("recovery: {0}")]
    Recovery(String),
    /// The reflection service could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl From<QiApiError> for ServerError {
    fn from(e: QiApiError) -> Self {
        ServerError::Recovery(e.to_string())
    }
}

impl From<RecoveryError> for ServerError {
    fn from(e: RecoveryError) -> Self {
        ServerError::Recovery(e.to_string())
    }
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

/// Serves webhooks, the gRPC API and the admin endpoints on `listeners` until `shutdown`
/// completes, then drains and returns.
///
/// The shape: [`Core::start`] opens the store, binds a cluster node to its stream and starts
/// the writer and the change feed; each listener is served by a function of its own; every
/// background task is spawned on one [`TaskTracker`] and every part stops on one
/// [`CancellationToken`]. On shutdown the listeners stop accepting and finish the requests in
/// flight, the background tasks end, and then the core stops: the writer drains its queue and
/// the view is flushed.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
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
    let core = Core::start(&settings, Metrics::new().into(), &stop, &tasks).await?;
    let metrics = &core.metrics;

    let intake_admission = Admission::new(
        "intake",
        intake_connections,
        AtCapacity::EvictWaiting,
        metrics.shed_counter("intake"),
    );
    let grpc_admission = Admission::new(
        "grpc",
        grpc_connections,
        AtCapacity::EvictUnproven {
            grace: settings.grpc.first_call_grace,
        },
        metrics.shed_counter("grpc"),
    );
    let http_server = serve_intake(
        &core,
        &settings,
        listeners.http,
        tls.clone(),
        intake_admission.clone(),
        stop.clone(),
    );
    let (health, grpc_server) = serve_grpc(
        &core,
        &settings,
        listeners.grpc,
        tls.clone(),
        grpc_admission.clone(),
        stop.clone(),
    )
    .await?;
    let reloader = CatalogReloader {
        path: settings.catalog_file.clone(),
        catalog: core.catalog.clone(),
        sequencer: core.sequencer.clone(),
    };
    if settings.reload_on_sighup {
        reload_on_sighup(reloader.clone(), &stop, &tasks);
    }
    let admin_server = serve_admin(
        AdminState {
            // The console asks people for the same tokens as the API.
            console: ConsoleState::new(
                core.store.clone(),
                core.feed.clone(),
                core.catalog.clone(),
                core.lists.clone(),
                core.clock.clone(),
                ConsoleAccess {
                    tokens: settings.grpc_tokens.clone(),
                    secure_cookies: tls.is_some(),
                    max_live_streams: settings.admin.max_live_streams(),
                    trusted_proxies: settings.trusted_proxies.clone(),
                },
            )
            .with_recovery(core.recovery.clone()),
            reloader,
            metrics: core.metrics.clone(),
            catalog: core.catalog.clone(),
            store: core.store.clone(),
            writer: core.writer.clone(),
            feed: core.feed.clone(),
            intake: intake_admission.clone(),
            grpc: grpc_admission.clone(),
            stopping: stop.clone(),
            last_reload: Default::default(),
            cluster: core.sequencer.stream_progress(),
            held: core.sequencer.held(),
            clock: core.clock.clone(),
            recovery: core.recovery.as_ref().map(|r| r.figures.clone()),
            hosts: Arc::new(settings.admin_hosts.clone()),
            log_damage: core.log_damage.clone(),
        },
        listeners.admin,
        tls.clone(),
        settings.admin,
        stop.clone(),
    );

    tasks.spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => return,
            }
            tracing::info!("shutting down: draining in-flight requests");
            health
                .set_not_serving::<pb::operation_status_service_server::OperationStatusServiceServer<OperationStatusApi>>()
                .await;
            stop.cancel();
        }
    });

    let ((), grpc_result, ()) = tokio::join!(http_server, grpc_server, admin_server);
    // A listener that ended on its own (gRPC's failed) stops everything else too.
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    core.stop().await?;
    grpc_result?;
    tracing::info!(
        intake_connections_shed = intake_admission.shed(),
        grpc_connections_shed = grpc_admission.shed(),
        "stopped"
    );
    Ok(())
}

/// What every listener serves from: the store, the writer, the change feed and the catalog,
/// and a cluster node's stream.
struct Core {
    store: Store,
    writer: WriterHandle,
    writer_task: WriterTask,
    feed: ChangeFeed,
    catalog: CatalogHandle,
    /// Where webhooks are put in order: the writer, or a cluster's stream.
    sequencer: Sequencer,
    /// The intake's limits, lowered to what the cluster's stream takes.
    intake: IntakeLimits,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// The lists the API and the console read.
    lists: Lists,
    /// Recovery, when QI's API is configured.
    recovery: Option<RecoveryHandle>,
    /// The damage the scrub found, for `/readyz` to say.
    log_damage: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Core {
    /// Opens the store, binds a cluster node to its stream, starts the writer (which replays
    /// what the view missed), compacts what retention dropped, and starts the change feed.
    /// Compaction, the overdue clock, and a cluster node's follower, run on `tasks` until
    /// `stop`.
    async fn start(
        settings: &Settings,
        metrics: Arc<Metrics>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Core, ServerError> {
        let clock = settings.clock.clone();
        let store = match Store::open_with_cache(&settings.data_dir, settings.cache_bytes) {
            // A cluster node's copy is not the record: the stream is. A damaged copy is set
            // aside whole (nothing deleted) and the node reads the stream again from its start.
            Err(e) if settings.cluster.is_some() && e.is_damage() => {
                let aside = set_aside(&settings.data_dir, &clock)?;
                tracing::error!(
                    error = %e,
                    set_aside = %aside.display(),
                    "this node's data directory is damaged: set aside as it was, and the node \
                     reads the cluster's stream again from its start"
                );
                Store::open_with_cache(&settings.data_dir, settings.cache_bytes)?
            }
            opened => opened?,
        };
        store.set_flow(settings.flow)?;
        let quarantined = store.quarantine_len();
        if quarantined > 0 {
            tracing::warn!(
                quarantined,
                "webhooks in quarantine: see `qistatus-server quarantine`"
            );
        }
        // A cluster node binds the stream before its writer starts: the store takes the
        // stream's identity, and a store that cannot follow it is refused before anything
        // changes.
        let mut intake = settings.intake;
        let stream = match &settings.cluster {
            Some(cluster) => Some(bind_stream(cluster, &store, &mut intake).await?),
            None => None,
        };
        let catalog = CatalogHandle::new(settings.catalog.clone());
        // A single node finishes (or redoes) a rebuild under its catalog before serving. A
        // cluster node does not: rebuilding promotes quarantined webhooks into sequences of
        // its own, which only the stream may assign (reloads are refused there too). No
        // replay first: a rebuild replays the log itself, and the writer does at its start.
        if stream.is_none() {
            rebuild_if_the_catalog_changed(&store, &catalog.current())?;
        }
        let (writer, writer_task) = spawn_writer(
            store.clone(),
            catalog.current(),
            settings.writer,
            metrics.clone(),
            clock.clone(),
        )?;
        compact_expired(&writer, settings.log_retention, &clock).await?;
        tasks.spawn(compact_periodically(
            writer.clone(),
            settings.log_retention,
            settings.compaction_interval,
            clock.clone(),
            stop.clone(),
        ));
        let log_damage = Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(interval) = settings.scrub_interval {
            tasks.spawn(scrub_periodically(
                store.clone(),
                interval,
                settings.scrub_first_delay.min(interval),
                settings.scrub_bytes_per_second,
                metrics.clone(),
                clock.clone(),
                log_damage.clone(),
                stop.clone(),
            ));
        }
        let recovery_bucket = match (&stream, &settings.qitech_api) {
            (Some((log, _)), Some(_)) => Some(log.bucket("recovery").await?),
            _ => None,
        };
        // The one place that says which this node is: everything else asks the sequencer.
        let sequencer = match stream {
            Some((log, progress)) => {
                tasks.spawn(cluster::follow(
                    log.clone(),
                    writer.clone(),
                    catalog.current(),
                    progress.clone(),
                    stop.clone(),
                ));
                let cluster = settings
                    .cluster
                    .as_ref()
                    .expect("a stream is bound only on a cluster node");
                let held = Arc::new(
                    Held::open(&settings.data_dir, cluster.hold_after, cluster.hold_bytes)
                        .map_err(StoreError::from)?,
                );
                tasks.spawn(cluster::release(held.clone(), log.clone(), stop.clone()));
                Sequencer::stream(log, progress, store.clone(), held, clock.clone())
            }
            None => Sequencer::writer(writer.clone()),
        };
        tasks.spawn(overdue_clock::run(
            store.clone(),
            sequencer.clone(),
            settings.overdue_tick,
            clock.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        let feed = ChangeFeed::new(
            store.clone(),
            catalog.clone(),
            writer.recent(),
            writer.committed(),
            stop.clone(),
            settings.feed,
        )
        .waiting_for_resume_points(sequencer.resume_wait());
        let recovery = match &settings.qitech_api {
            Some(api) => {
                let api = QiApi::new(api, clock.clone(), metrics.clone())?;
                // A cluster recovers once, from the state its nodes share (see the ledger).
                let ledger = match &recovery_bucket {
                    Some(kv) => Ledger::in_bucket(kv.clone(), node_name(), settings.recovery.lease),
                    None => Ledger::in_dir(&settings.data_dir),
                };
                let (recovery, handle) = Recovery::new(
                    api,
                    ledger,
                    store.clone(),
                    clock.clone(),
                    metrics.clone(),
                    settings.recovery,
                )
                .await?;
                tasks.spawn(recovery.run(feed.clone(), stop.clone()));
                Some(handle)
            }
            None => None,
        };
        Ok(Core {
            log_damage,
            recovery,
            lists: Lists::new(store.clone())?,
            store,
            writer,
            writer_task,
            feed,
            catalog,
            sequencer,
            intake,
            metrics,
            clock,
        })
    }

    /// Stops the writer once every other handle on it is gone (the listeners' and the
    /// background tasks'): it drains its queue and stops; then the view is flushed.
    async fn stop(self) -> Result<(), ServerError> {
        let Core {
            store,
            writer,
            writer_task,
            sequencer,
            ..
        } = self;
        // The sequencer of a single node is a handle on the writer too.
        drop(sequencer);
        drop(writer);
        tokio::task::spawn_blocking(move || writer_task.join())
            .await
            .expect("the writer join task does not panic: join() logs a writer panic instead");
        // The log is the record: a view that cannot be flushed now (a full disk) is caught up
        // by the next start's replay, so the stop is still a clean one.
        if let Err(e) = store.flush() {
            tracing::warn!(
                error = %e,
                "the view could not be flushed at stop: nothing acknowledged is lost, the next \
                 start replays the log into the view"
            );
        }
        Ok(())
    }
}

/// This process, as a cluster's recovery lease names it: random, so that a restarted node
/// claims anew rather than inheriting its former self's claim.
fn node_name() -> String {
    let mut bytes = [0u8; 8];
    // A name only: if the system has no randomness, the time of day tells nodes apart.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = Clock::system().now_millis().to_le_bytes();
    }
    hex::encode(bytes)
}

/// Moves `data_dir` to a new `<data_dir>.damaged-<ms since the epoch>` beside it.
fn set_aside(data_dir: &std::path::Path, clock: &Clock) -> Result<PathBuf, ServerError> {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(format!(".damaged-{}", clock.now_millis()));
    let aside = PathBuf::from(name);
    std::fs::rename(data_dir, &aside).map_err(StoreError::from)?;
    // What a cluster node held for its stream is not its copy of the stream: acknowledged
    // webhooks no node has yet. They stay with the node, to be published.
    let held = aside.join("held");
    if held.exists() {
        std::fs::create_dir_all(data_dir).map_err(StoreError::from)?;
        std::fs::rename(&held, data_dir.join("held")).map_err(StoreError::from)?;
    }
    Ok(aside)
}

/// Connects a cluster node to its stream and binds the store to it; lowers the intake's
/// body limit to the largest message the stream takes.
async fn bind_stream(
    cluster: &ClusterSettings,
    store: &Store,
    intake: &mut IntakeLimits,
) -> Result<(Arc<JetStreamLog>, Arc<Progress>), ServerError> {
    let log = Arc::new(JetStreamLog::connect(cluster).await?);
    if log.max_webhook_bytes() < intake.max_body {
        tracing::warn!(
            max_body = log.max_webhook_bytes(),
            "NATS takes smaller messages than --max-body: the intake refuses larger \
             webhooks with 413; raise max_payload in the NATS servers' configuration"
        );
        intake.max_body = log.max_webhook_bytes();
    }
    let (through, last) = log.bind(store).await?;
    tracing::info!(
        stream = %cluster.stream,
        applied_through = through,
        stream_ends = last,
        "following the cluster's stream"
    );
    let progress = Arc::new(Progress::new(log.clone(), through, last));
    Ok((log, progress))
}

/// The webhook intake on `listener` until `stop`.
fn serve_intake(
    core: &Core,
    settings: &Settings,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admission: Admission,
    stop: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let app = intake::router(
        IntakeState {
            catalog: core.catalog.clone(),
            sequencer: core.sequencer.clone(),
            verifier: Arc::new(settings.webhook_verifier.clone()),
            signer: settings.response_signer.clone().map(Arc::new),
            metrics: core.metrics.clone(),
            clock: core.clock.clone(),
        },
        core.intake,
    );
    let incoming = net::accept_connections(
        listener,
        tls,
        admission,
        settings.intake.handshake_timeout,
        stop.clone(),
    );
    let timeouts = HttpTimeouts {
        header_read: settings.intake.header_read_timeout,
        idle: settings.intake.idle_timeout,
    };
    net::serve_http(incoming, app, timeouts, stop)
}

/// The gRPC API (the status service, maintenance, health, reflection) on `listener` until
/// `stop`; the health reporter, to say NOT_SERVING when shutdown begins.
async fn serve_grpc(
    core: &Core,
    settings: &Settings,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admission: Admission,
    stop: CancellationToken,
) -> Result<
    (
        HealthReporter,
        impl Future<Output = Result<(), tonic::transport::Error>> + use<>,
    ),
    ServerError,
> {
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
    let maintenance =
        pb::maintenance_service_server::MaintenanceServiceServer::new(MaintenanceApi::new(
            core.store.clone(),
            core.feed.clone(),
            core.writer.clone(),
            core.catalog.clone(),
            core.clock.clone(),
        ))
        .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES);
    let api = pb::operation_status_service_server::OperationStatusServiceServer::new(
        OperationStatusApi::new(
            core.catalog.clone(),
            core.store.clone(),
            core.lists.clone(),
            core.feed.clone(),
            core.clock.clone(),
        ),
    )
    .max_decoding_message_size(crate::grpc::MAX_REQUEST_BYTES);
    let incoming = ReceiverStream::new(net::accept_connections(
        listener,
        tls,
        admission,
        settings.grpc.handshake_timeout,
        stop.clone(),
    ))
    .map(Ok::<_, std::io::Error>);
    let server = tonic::transport::Server::builder()
        .timeout(settings.grpc.request_timeout)
        .max_connection_age(settings.grpc.max_connection_age)
        .max_connection_age_grace(Duration::from_secs(60))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(OutcomeLayer::new(core.metrics.clone()))
        .layer(BearerAuthLayer::new(settings.grpc_tokens.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(maintenance)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
    Ok((health, server))
}

/// The admin endpoints and the console on `listener`, when there is one, until `stop`; over
/// TLS when the server has a certificate (the console's sign-in carries a token).
async fn serve_admin(
    state: AdminState,
    listener: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    limits: AdminLimits,
    stop: CancellationToken,
) {
    let Some(listener) = listener else { return };
    let admission = Admission::new(
        "admin",
        limits.max_connections,
        AtCapacity::EvictWaiting,
        state.metrics.shed_counter("admin"),
    );
    let incoming = net::accept_connections(
        listener,
        tls,
        admission,
        limits.handshake_timeout,
        stop.clone(),
    );
    let timeouts = HttpTimeouts {
        header_read: limits.header_read_timeout,
        idle: limits.idle_timeout,
    };
    net::serve_http(incoming, admin::router(state), timeouts, stop).await;
}

/// Most log entries one compaction step drops, so that ingest is never held up for long.
const COMPACTION_STEP: usize = 10_000;

/// Drops every log entry older than `retention` on `clock`, in steps between writer batches.
async fn compact_expired(
    writer: &WriterHandle,
    retention: Duration,
    clock: &Clock,
) -> Result<(), SubmitError> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = clock.now_millis().saturating_sub(retention_ms);
    while writer.compact(cutoff, COMPACTION_STEP).await?.more {}
    Ok(())
}

async fn compact_periodically(
    writer: WriterHandle,
    retention: Duration,
    interval: Duration,
    clock: Clock,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = clock.sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = compact_expired(&writer, retention, &clock).await {
            tracing::error!(error = %e, "log compaction failed");
        }
    }
}

/// Scrubs the log: a pass `first_delay` after every start (so that damage a stopped
/// server's disk took is reported within minutes, not a whole interval later), then one
/// every `interval`. A pass cut by a stop goes on from where it was at the next start (the
/// progress is kept, [`crate::store::ScrubProgress`]), so a node restarted more often than a
/// pass takes still completes passes. Damage is logged, counted, and listed in `damage` for
/// `/readyz` to say.
#[allow(clippy::too_many_arguments)]
async fn scrub_periodically(
    store: Store,
    interval: Duration,
    first_delay: Duration,
    bytes_per_second: u64,
    metrics: Arc<Metrics>,
    clock: Clock,
    damage: Arc<std::sync::Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    // Every start scrubs soon: what a stopped server's disk took is found within minutes.
    let mut due = clock.now_millis().saturating_add(millis(first_delay));
    loop {
        let progress = store.scrub_progress();
        tokio::select! {
            () = clock.sleep_until(due) => {}
            () = stop.cancelled() => return,
        }
        let mut progress = ScrubProgress {
            pass_started_at: Some(progress.pass_started_at.unwrap_or(clock.now_millis())),
            ..progress
        };
        if let Err(e) = store.save_scrub_progress(&progress) {
            tracing::warn!(error = %e, "the scrub cannot keep its progress");
        }
        let (reading, counted, stopping) = (store.clone(), metrics.clone(), stop.clone());
        let scrubbed = tokio::task::spawn_blocking(move || {
            let mut cut = false;
            let found = reading.scrub_from(progress.next_segment, &mut |segment, bytes| {
                counted.scrubbed(bytes, 0);
                progress.next_segment = segment + 1;
                let _ = reading.save_scrub_progress(&progress);
                let rest = Duration::from_secs_f64(bytes as f64 / bytes_per_second.max(1) as f64);
                std::thread::sleep(rest);
                cut = stopping.is_cancelled();
                !cut
            });
            (found, cut, progress)
        })
        .await;
        match scrubbed {
            Ok((Ok(scrub), cut, _)) => {
                for found in &scrub.damage {
                    tracing::error!(damage = %found, "the scrub found damage in the log: run `qistatus-server verify` and see the runbook");
                    let mut listed = damage.lock().unwrap_or_else(|e| e.into_inner());
                    let text = found.to_string();
                    if !listed.contains(&text) && listed.len() < 16 {
                        listed.push(text);
                    }
                }
                metrics.scrubbed(0, scrub.damage.len());
                tracing::debug!(
                    segments = scrub.segments,
                    bytes = scrub.bytes,
                    "log scrubbed"
                );
                if cut {
                    return;
                }
                let progress = ScrubProgress {
                    next_segment: 0,
                    pass_started_at: None,
                    last_completed_at: Some(clock.now_millis()),
                };
                if let Err(e) = store.save_scrub_progress(&progress) {
                    tracing::warn!(error = %e, "the scrub cannot keep its progress");
                }
                due = clock.now_millis().saturating_add(millis(interval));
            }
            Ok((Err(e), _, _)) => {
                tracing::error!(error = %e, "the log scrub failed");
                tokio::select! {
                    () = clock.sleep(interval.min(Duration::from_secs(600))) => {}
                    () = stop.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the log scrub task failed");
                return;
            }
        }
    }
}

/// Reloads the catalog on every SIGHUP until `stop`. Listening starts here, before any
/// listener answers (SIGHUP's default action would end the process).
fn reload_on_sighup(reloader: CatalogReloader, stop: &CancellationToken, tasks: &TaskTracker) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: reload with POST /catalog/reload");
            return;
        }
    };
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                () = stop.cancelled() => return,
            }
            tracing::info!("SIGHUP: reloading the catalog");
            if let Err(e) = reloader.reload().await {
                tracing::error!(error = %e, "catalog reload failed; the previous catalog stays in effect");
            }
        }
    });
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
