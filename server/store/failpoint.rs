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

/// The environment variable that names the file a paused failpoint waits for.
pub(crate) const RELEASE_VARIABLE: &str = "QISTATUS_FAILPOINT_RELEASE";

/// Longest a failpoint stays paused when nobody releases it: a test that forgot to is not
/// held for ever.
const MOST_PAUSED: std::time::Duration = std::time::Duration::from_secs(60);

/// Pauses if the failpoint `name` is set: a slow step held open for a test. The step says it
/// is there by creating `<release>.reached`, and goes on once the file `<release>` exists
/// (`QISTATUS_FAILPOINT_RELEASE`; without it, it goes on at once), or after a minute.
pub(crate) fn pause_at(name: &str) {
    if !std::env::var(VARIABLE).is_ok_and(|set| set == name) {
        return;
    }
    let Some(release) = std::env::var_os(RELEASE_VARIABLE).map(std::path::PathBuf::from) else {
        eprintln!("qistatus: failpoint {name} reached: no {RELEASE_VARIABLE}, going on");
        return;
    };
    let mut reached = release.clone().into_os_string();
    reached.push(".reached");
    if let Err(e) = std::fs::write(&reached, name) {
        eprintln!("qistatus: failpoint {name} cannot say it is reached: {e}");
    }
    eprintln!("qistatus: failpoint {name} reached: paused until {release:?} exists");
    let since = std::time::Instant::now();
    while !release.exists() && since.elapsed() < MOST_PAUSED {
        std::thread::park_timeout(std::time::Duration::from_millis(10));
    }
}
