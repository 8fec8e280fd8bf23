//! Crashes on purpose, for the crash tests: `QISTATUS_FAILPOINT=<name>` makes the process
//! abort where the code says `abort_at(<name>)`, as a kill at that moment would, or pause
//! where it says `pause_at(<name>)`. Unset in production.
//!
//! The writer's counted failpoint (`abort-after-log-append:N`) is read by the writer itself.

/// The environment variable that names the failpoint.
pub(crate) const VARIABLE: &str = "QISTATUS_FAILPOINT";

/// Aborts the process if the failpoint `name` is set.
pub(crate) fn abort_at(name: &str) {
    if std::env::var(VARIABLE).is_ok_and(|set| set == name) {
        eprintln!("qistatus: failpoint {name} reached");
        std::process::abort();
    }
}

/// Sleeps two seconds if the failpoint `name` is set: a slow step made visible to a test.
pub(crate) fn pause_at(name: &str) {
    if std::env::var(VARIABLE).is_ok_and(|set| set == name) {
        eprintln!("qistatus: failpoint {name} reached: pausing 2 s");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
