//! Fuzzes the normalizer: any bytes must give an event, a quarantine reason, or a malformed
//! error, never a panic; and what it returns must hold the normalizer's guarantees.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qistatus::domain::catalog::Catalog;
use qistatus::domain::reconcile::{EventSummary, Reconciler};
use qistatus::domain::webhook::{EventId, MAX_KEY_LEN, MAX_NAME_LEN, Normalized, normalize};

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|data: &[u8]| {
    match normalize(&CATALOG, data) {
        Ok(Normalized::Event(e)) => {
            assert!(!e.key.is_empty() && e.key.len() <= MAX_KEY_LEN);
            assert!(!e.key.chars().any(char::is_control));
            assert!(!e.status.is_empty() && e.status.len() <= MAX_NAME_LEN);
            assert_eq!(e.status, e.status.trim().to_lowercase());
            assert_eq!(e.kind, e.kind.trim().to_lowercase().replace('-', "_"));
            // The id is a function of the JSON value, not of its bytes.
            let value: serde_json::Value = serde_json::from_slice(data).unwrap();
            assert_eq!(e.event_id, EventId::of(&value));
            // Reconciling it must not panic either.
            let summary = EventSummary::new(&e, 1, 0);
            let op = Reconciler::new(&CATALOG).apply(None, &e.kind, &e.key, summary);
            assert_eq!(op.status, e.status);
        }
        Ok(Normalized::Quarantine { reason, .. }) => assert!(!reason.is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
