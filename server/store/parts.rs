//! The parts of an operation: the operations the catalog says are parts of it (a debt's
//! installments), read from the `B` space, which [`super::index::put_operation`] keeps.
//!
//! Guarantee: a whole lists a part from the batch that gave the part the fact naming the
//! whole (an installment's payment webhook), with the part as that batch left it; a part
//! whose fact later names another whole moves there in the same batch. A whole need not
//! exist: parts whose whole never came are listed under its key all the same.

use super::keys::parts_prefix;
use super::record::decode;
use super::{Store, StoreError};
use crate::domain::reconcile::Operation;

/// The most parts a reader lists (`GetOperation`, the console's page): more than a debt has
/// installments (QI's longest loans are monthly over 35 years, 420).
pub const MOST_PARTS_LISTED: usize = 1000;

impl Store {
    /// Up to `limit` parts of the `whole_kind` operation `whole_key`, without history, in
    /// (kind, key) order, and how many more there are past them.
    pub fn parts_of(
        &self,
        whole_kind: &str,
        whole_key: &str,
        limit: usize,
    ) -> Result<(Vec<Operation>, u64), StoreError> {
        let mut parts = Vec::new();
        let mut more = 0u64;
        for entry in self
            .trees
            .parts
            .scan_prefix(&parts_prefix(whole_kind, whole_key))
        {
            let (_, value) = entry?;
            if parts.len() < limit {
                parts.push(decode(&value, "parts")?);
            } else {
                more += 1;
            }
        }
        Ok((parts, more))
    }
}
