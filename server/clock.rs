//! The one wall clock of qistatus: receive times, retention cut-offs, snapshot dates.
//!
//! Everything that reads the time of day goes through here, so there is one place that says
//! which clock it is (the system's, in UTC milliseconds). A cluster node does not use it to
//! decide anything the nodes must agree on: those times come from the stream.

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
