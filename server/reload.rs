//! The catalog in effect: read from its file ([`load_catalog`]: the built-in catalog, extended
//! by `--catalog`), held in one [`CatalogHandle`] that every part of a running server reads,
//! and reloaded (SIGHUP, or `POST /catalog/reload` on the admin listener): the catalog is
//! data, and teaching qistatus a new status or kind should not need a stop. The domain's
//! catalog is pure; its file and the lock that swaps it live here.
//!
//! A reload reads `--catalog` again (over the built-in catalog, as at start), checks it, and
//! puts it in effect: the intake and the API take it for every request from then on; every
//! operation is recomputed under it beside the writer, which goes on storing webhooks; then
//! the writer, between two batches ([`crate::store::WriterHandle::reload`]), promotes the
//! quarantined webhooks it can now read (new sequences: watchers see them), redoes the
//! operations that webhooks stored meanwhile touched, and writes the changes: the same pure
//! function as `qistatus-server rebuild`. The intake switches first, so no webhook arriving during the
//! reload is quarantined for want of the new catalog; those the writer applied under the
//! old one meanwhile are redone by the last step.
//!
//! Trade-off: ingest waits for the last step only (logged as `paused_ms`), whose work is the
//! changed operations, not the store's size. A catalog that fails to load changes nothing.
//!
//! A cluster node refuses: every node must decide alike, so a new catalog is rolled out by
//! restarting every node with it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::domain::catalog::{Catalog, CatalogError};
use crate::sequencer::Sequencer;
use crate::store::RebuildReport;
use crate::store::SubmitError;

/// The catalog in effect, shared by the parts of a server that read webhooks (the intake,
/// the API, the writer) and swapped whole by a reload: readers take the current one per
/// request and keep it for that request, so no request sees two catalogs.
#[derive(Debug, Clone)]
pub(crate) struct CatalogHandle(Arc<RwLock<Arc<Catalog>>>);

impl CatalogHandle {
    /// A handle on `catalog`.
    pub(crate) fn new(catalog: Catalog) -> CatalogHandle {
        CatalogHandle(Arc::new(RwLock::new(Arc::new(catalog))))
    }

    /// The catalog in effect now.
    pub(crate) fn current(&self) -> Arc<Catalog> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `catalog` in effect for every request that starts from now on.
    pub(crate) fn replace(&self, catalog: Arc<Catalog>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = catalog;
    }
}

/// The built-in catalog, extended by the catalog file at `path` when one is given.
pub fn load_catalog(path: Option<&Path>) -> Result<Catalog, CatalogError> {
    let catalog = Catalog::builtin();
    match path {
        None => Ok(catalog),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
                path: path.display().to_string(),
                source,
            })?;
            catalog.extended_with(&text)
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The catalog file is unreadable or inconsistent.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A cluster node cannot change its catalog alone.
    #[error(
        "a cluster node does not reload its catalog alone (every node must decide alike): \
         restart every node with the new --catalog"
    )]
    Cluster,
    /// The writer could not apply it.
    #[error("the writer could not apply the catalog: {0}")]
    Writer(#[from] SubmitError),
}

/// What reloads the catalog; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CatalogReloader {
    pub(crate) path: Option<PathBuf>,
    pub(crate) catalog: CatalogHandle,
    /// Where the rebuild under the new catalog is written, if this node may reload alone.
    pub(crate) sequencer: Sequencer,
}

impl CatalogReloader {
    /// Reads the catalog again and puts it in effect. See the module docs.
    pub(crate) async fn reload(&self) -> Result<RebuildReport, ReloadError> {
        let Some(writer) = self.sequencer.writer_alone() else {
            return Err(ReloadError::Cluster);
        };
        let path = self.path.clone();
        let catalog = tokio::task::spawn_blocking(move || load_catalog(path.as_deref()))
            .await
            .expect("loading a catalog does not panic: errors are values")?;
        let catalog = Arc::new(catalog);
        let before = self.catalog.current();
        self.catalog.replace(catalog.clone());
        match writer.reload(catalog).await {
            Ok(report) => Ok(report),
            Err(e) => {
                self.catalog.replace(before);
                Err(e.into())
            }
        }
    }
}
