//! Fuzzes the normalizer: any bytes must give an event, a quarantine reason, or a malformed
//! error, never a panic; and what it returns must hold the normalizer's guarantees.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qistatus::domain::catalog::Catalog;
use qistatus::domain::reconcile::{EventSummary, Reconciler};
use qistatus::domain::webhook::{
    MAX_KEY_LEN, MAX_NAME_LEN, Normalized, normalize, normalize_with_facts,
};

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|data: &[u8]| {
    match normalize_with_facts(&CATALOG, data) {
        Ok((Normalized::Event(e), facts)) => {
            assert!(!e.key.is_empty() && e.key.len() <= MAX_KEY_LEN);
            assert!(!e.key.chars().any(char::is_control));
            assert!(!e.status.is_empty() && e.status.len() <= MAX_NAME_LEN);
            assert_eq!(e.status, e.status.trim().to_lowercase());
            assert_eq!(e.kind, e.kind.trim().to_lowercase().replace('-', "_"));
            // The id is a function of the JSON value, not of its bytes: the same value written
            // compactly with its keys sorted has the same id. Floats aside: serde_json's float
            // parsing is not always exact, so a float written back may read as its neighbour.
            let value: serde_json::Value = serde_json::from_slice(data).unwrap();
            if !has_float(&value) {
                let again = normalize(&CATALOG, &serde_json::to_vec(&value).unwrap()).unwrap();
                assert_eq!(again.event_id(), e.event_id);
            }
            // Reconciling it must not panic either.
            let summary = EventSummary::new(&e, 1, 0, facts);
            let op = Reconciler::new(&CATALOG).apply(None, &e.kind, &e.key, summary);
            assert_eq!(op.status, e.status);
        }
        Ok((Normalized::Quarantine { reason, .. }, _)) => assert!(!reason.is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}
