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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::catalog::Catalog;
    use crate::domain::webhook::normalize;
    use crate::store::writer::BatchPlan;
    use crate::store::{Key, Writes, view};

    /// Stores raw webhooks received at `at`, as the writer does.
    fn store_webhooks(store: &Store, catalog: &Catalog, bodies: &[String], at: i64) {
        let mut plan = BatchPlan::new(store.counters().expect("counters"));
        for raw in bodies {
            let normalized = normalize(catalog, raw.as_bytes()).expect("a JSON object");
            plan.add(store, normalized, Bytes::from(raw.clone()), at, None)
                .expect("planned");
        }
        let refs = store.log().append(&plan.records).expect("appended");
        view::apply(store, catalog, &plan.records, &refs).expect("applied");
    }

    fn payment(debt: &str, installment: &str, status: &str) -> String {
        format!(
            r#"{{"key":"{debt}","webhook_type":"laas.credit_operation.installment.payment","data":{{"installment_key":"{installment}","installment_status":"{status}"}}}}"#
        )
    }

    fn listed(store: &Store, debt: &str) -> Vec<(String, String)> {
        let (parts, more) = store.parts_of("debt", debt, 10).expect("read");
        assert_eq!(more, 0);
        parts.into_iter().map(|p| (p.key, p.status)).collect()
    }

    #[test]
    fn a_part_is_listed_under_the_whole_its_fact_names_as_it_is_now() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a fresh store");
        let catalog = Catalog::builtin();
        let status_change = |installment: &str, status: &str| {
            format!(
                r#"{{"key":"{installment}","webhook_type":"installment.status_change","data":{{"status":"{status}"}}}}"#
            )
        };
        // Named by no payment yet: part of nothing.
        store_webhooks(&store, &catalog, &[status_change("i-1", "opened")], 1);
        assert_eq!(listed(&store, "d-1"), []);
        store_webhooks(
            &store,
            &catalog,
            &[payment("d-1", "i-1", "paid_partial")],
            2,
        );
        assert_eq!(
            listed(&store, "d-1"),
            [("i-1".into(), "paid_partial".into())]
        );
        // A later webhook of the part, naming no debt, updates it where it is listed.
        store_webhooks(&store, &catalog, &[status_change("i-1", "paid")], 3);
        assert_eq!(listed(&store, "d-1"), [("i-1".into(), "paid".into())]);
        assert_eq!(store.check_indexes().unwrap(), Vec::<String>::new());
        // Bounded: the rest is counted, not read.
        store_webhooks(
            &store,
            &catalog,
            &[payment("d-1", "i-2", "paid"), payment("d-1", "i-3", "paid")],
            4,
        );
        let (parts, more) = store.parts_of("debt", "d-1", 2).unwrap();
        assert_eq!((parts.len(), more), (2, 1));
        assert_eq!(store.parts_of("debt", "d-2", 2).unwrap().0, []);

        // An entry the operation does not back is found by the check: a part that does not
        // exist, and one whose facts name another whole.
        let op = store
            .operation("installment.status_change", "i-1")
            .unwrap()
            .unwrap();
        let mut writes = Writes::default();
        for (whole, key) in [("d-1", "i-9"), ("d-7", "i-1")] {
            writes.put(
                Key::Part {
                    whole_kind: "debt",
                    whole_key: whole,
                    kind: "installment.status_change",
                    key,
                },
                super::super::index::index_value(&op),
            );
        }
        writes.apply(&store.trees.all).unwrap();
        let problems = store.check_indexes().unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("no such operation"), "{problems:?}");
        assert!(
            problems[1].contains("no fact of it names that whole"),
            "{problems:?}"
        );
    }
}
