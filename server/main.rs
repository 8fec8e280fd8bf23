//! `qistatus-server`: parses the configuration and calls the library.

use anyhow::Context;
use clap::Parser;
use qistatus::config::{Command, Config};

/// mimalloc rather than glibc's allocator: the writer (sled's copy-on-write nodes) and the
/// intake (parsed JSON) allocate and free on every webhook, across threads; measured in
/// BENCHMARKS.md ("Where ingest time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its `mi_option_e` enum, v3), and the default it has in
/// the version linked (1,000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_PURGE_DELAY_DEFAULT: std::ffi::c_long = 1000;

/// Memory freed is given back to the system at once, not after mimalloc's delay: that delay
/// runs out only when the thread that freed the memory allocates again, so after a burst
/// (waves of near-megabyte bodies, issue 38) idle threads kept hundreds of MB for good.
/// `MIMALLOC_PURGE_DELAY` in the environment still decides, when set (how the cost is
/// measured: BENCHMARKS.md).
fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reading and setting an option are plain loads and stores of a value mimalloc
    // reads at each purge; no memory is handed over. The option's number is checked against
    // its known default first, so another mimalloc version is left as it is.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_PURGE_DELAY_DEFAULT {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_freed_memory_at_once();
    let config = Config::parse();
    config.init_logging();
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => {
            let (settings, warnings) = config.settings()?;
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            tracing::info!(
                webhook_verification = settings.webhook_verifier.is_enabled(),
                grpc_tokens = settings.grpc_tokens.is_enabled(),
                tls = settings.tls.is_some(),
                "security"
            );
            let http = qistatus::listen(config.http_addr)
                .await
                .with_context(|| format!("cannot listen on {} (--http-addr)", config.http_addr))?;
            let grpc = qistatus::listen(config.grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {} (--grpc-addr)", config.grpc_addr))?;
            let admin = qistatus::listen(config.admin_addr).await.with_context(|| {
                format!("cannot listen on {} (--admin-addr)", config.admin_addr)
            })?;
            if !config.admin_addr.ip().is_loopback() {
                tracing::warn!(
                    admin = %config.admin_addr,
                    "the admin endpoints (metrics, readiness) have no authentication: keep \
                     them off the public network"
                );
            }
            let (http_at, grpc_at, admin_at) =
                (http.local_addr()?, grpc.local_addr()?, admin.local_addr()?);
            tracing::info!(
                http = %http_at,
                grpc = %grpc_at,
                admin = %admin_at,
                data_dir = %config.data_dir.display(),
                "qistatus-server listening"
            );
            if let Some(path) = &config.ports_file {
                let ports = format!(
                    "{{\"http\":\"{http_at}\",\"grpc\":\"{grpc_at}\",\"admin\":\"{admin_at}\"}}\n"
                );
                // Written beside, then renamed: a reader never sees half a file.
                let partial = path.with_extension("partial");
                std::fs::write(&partial, ports)
                    .and_then(|()| std::fs::rename(&partial, path))
                    .with_context(|| format!("cannot write --ports-file {}", path.display()))?;
            }
            let listeners = qistatus::Listeners {
                http,
                grpc,
                admin: Some(admin),
            };
            qistatus::run(settings, listeners, qistatus::shutdown_signal()).await?;
        }
        Command::Catalog { markdown } => {
            let catalog = config.load_catalog()?;
            if markdown {
                print!("{}", qistatus::domain::truth_table::markdown(&catalog));
            } else {
                print!("{}", catalog.to_toml());
            }
        }
        Command::Quarantine { payload } => {
            let store = open_store(&config)?;
            let mut count = 0;
            for item in store.quarantined() {
                let (id, entry) = item?;
                let received = chrono::DateTime::from_timestamp_millis(entry.received_at)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                println!(
                    "{id}\t{received}\t{} bytes\t{}",
                    entry.raw.len(),
                    entry.reason
                );
                if payload {
                    println!("{}", String::from_utf8_lossy(&entry.raw));
                }
                count += 1;
            }
            println!("{count} quarantined webhook(s)");
        }
        Command::Restore {
            file,
            sha256,
            snapshot_key_file,
        } => {
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot read the snapshot {}", file.display()))?;
            let sha256 = recorded_sha256(&file, sha256.as_deref())?;
            if let Some(key_file) = &snapshot_key_file {
                check_signature(&file, key_file, sha256.as_ref())?;
            }
            if sha256.is_none() {
                eprintln!(
                    "qistatus-server: no SHA-256 recorded for {} (no --sha256, no .sha256 \
                     file): checked by its CRC and its view's consistency only",
                    file.display()
                );
            }
            let restored = qistatus::store::restore(input, &config.data_dir, sha256)
                .with_context(|| format!("cannot restore {}", file.display()))?;
            println!(
                "restored {} operation(s) through sequence {} of store {} into {}; new store \
                 identity {}",
                restored.operations,
                restored.head_sequence,
                restored.from_store_id,
                config.data_dir.display(),
                restored.store_id
            );
        }
        Command::Recover { since, until, key } => {
            let api = config.qitech_api()?;
            let now = chrono::Utc::now().timestamp_millis();
            let since = time_given(&since, now).context("--since")?;
            let until = match until {
                Some(until) => time_given(&until, now).context("--until")?,
                None => now,
            };
            anyhow::ensure!(since < until, "--since must be before --until");
            let report = qistatus::recover_by_hand(&api, since, until, key.as_deref(), |line| {
                println!("{line}")
            })
            .await?;
            println!(
                "{} window(s), {} event(s) listed, {} callback(s) QI accepted to resend",
                report.windows, report.events, report.resent
            );
        }
        Command::Verify => {
            let found = qistatus::store::verify(&config.data_dir)
                .with_context(|| format!("cannot verify {}", config.data_dir.display()))?;
            println!(
                "{} log record(s) read, the last is record {}",
                found.records, found.last_lsn
            );
            for damage in &found.damage {
                println!("damage: {damage}");
            }
            for problem in &found.problems {
                println!("problem: {problem}");
            }
            if !found.view_checked {
                println!(
                    "the view was not checked: the log must be whole first (a start cuts a torn \
                     tail, and refuses other damage)"
                );
            }
            if !found.is_sound() {
                anyhow::bail!(
                    "{} is damaged: see above; `qistatus-server salvage` copies out what is \
                     readable",
                    config.data_dir.display()
                );
            }
            println!("{} is sound", config.data_dir.display());
        }
        Command::Salvage { into } => {
            let salvaged = qistatus::store::salvage(&config.data_dir, &into)
                .with_context(|| format!("cannot salvage {}", config.data_dir.display()))?;
            for damage in &salvaged.damage {
                println!("lost: {damage}");
            }
            println!(
                "salvaged {} webhook(s) into {}; post them to a server on a fresh data \
                 directory with `qistatus replay {}`",
                salvaged.records,
                into.display(),
                into.display()
            );
        }
        Command::Rebuild => {
            let catalog = config.load_catalog()?;
            let store = open_store(&config)?;
            let report = qistatus::store::rebuild(&store, &catalog)?;
            println!(
                "rebuilt {} operation(s) ({} changed) from {} logged webhook(s); \
                 {} promoted from quarantine, {} still quarantined",
                report.operations,
                report.operations_changed,
                report.events_from_log,
                report.promoted,
                report.still_quarantined
            );
        }
    }
    Ok(())
}

/// The SHA-256 a snapshot must have: `given` (hex), else the first word of `FILE.sha256`
/// (what `qistatus snapshot save` writes, in `sha256sum`'s format), else none.
fn recorded_sha256(
    file: &std::path::Path,
    given: Option<&str>,
) -> anyhow::Result<Option<[u8; 32]>> {
    let mut beside = file.as_os_str().to_owned();
    beside.push(".sha256");
    let beside = std::path::PathBuf::from(beside);
    let text = match given {
        Some(hex) => hex.to_owned(),
        None => match std::fs::read_to_string(&beside) {
            Ok(text) => text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", beside.display())),
        },
    };
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .with_context(|| format!("{text:?} is not a SHA-256 (64 hex digits)"))?;
    Ok(Some(bytes))
}

/// Refuses a snapshot that the key in `key_file` did not sign: its `FILE.sig` must be the
/// key's signature of the SHA-256 the restore then checks the file against.
fn check_signature(
    file: &std::path::Path,
    key_file: &std::path::Path,
    sha256: Option<&[u8; 32]>,
) -> anyhow::Result<()> {
    let key = std::fs::read(key_file)
        .with_context(|| format!("cannot read --snapshot-key-file {}", key_file.display()))?;
    let sha256 = sha256.with_context(|| {
        format!(
            "{} has no SHA-256 recorded (no FILE.sha256, no --sha256): with a snapshot key, only \
             a signed snapshot is restored",
            file.display()
        )
    })?;
    let mut signature_file = file.as_os_str().to_owned();
    signature_file.push(".sig");
    let signature = std::fs::read_to_string(&signature_file).with_context(|| {
        format!(
            "{} is not signed (no {}): with a snapshot key, only a snapshot `qistatus snapshot \
             save --key-file` signed is restored",
            file.display(),
            std::path::Path::new(&signature_file).display()
        )
    })?;
    anyhow::ensure!(
        qistatus::snapshot_signed(&key, &hex::encode(sha256), &signature),
        "{} is not signed by the snapshot key (its signature, or its SHA-256, was made by \
         someone else): refused, nothing restored",
        file.display()
    );
    Ok(())
}

/// Opens the store for an offline command, with the view caught up with the log.
fn open_store(config: &Config) -> anyhow::Result<qistatus::store::Store> {
    let context = || {
        format!(
            "cannot open the store in {} (is qistatus-server running on it?)",
            config.data_dir.display()
        )
    };
    let store = qistatus::store::Store::open(&config.data_dir).with_context(context)?;
    store
        .replay(&config.load_catalog()?)
        .with_context(context)?;
    Ok(store)
}

/// A time given on the command line: RFC 3339, or how long before `now` (`3d`, `12h`), in ms
/// since the epoch.
fn time_given(text: &str, now: i64) -> anyhow::Result<i64> {
    qistatus::client::time_given(text, now).map_err(anyhow::Error::msg)
}
