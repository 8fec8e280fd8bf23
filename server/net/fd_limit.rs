//! File descriptors: the one bound the kernel enforces whatever the configuration says.
//!
//! Every connection holds a descriptor. If the listeners' bounds together exceed what the
//! process may open, `accept` fails with EMFILE before any bound is reached, and the store
//! itself cannot open a file. So at start the soft limit is raised to the hard limit (what Go
//! and nginx do too), and the listeners' bounds are lowered, in proportion, to fit under it
//! with room left for the store and the process itself and for each listener's
//! [`eviction_headroom`].

use super::admission::eviction_headroom;

/// Descriptors kept for the store (sled's files, log segments), stdio, the runtime and
/// snapshot or rebuild work.
const RESERVED: u64 = 128;

/// The connection bounds of the intake and the gRPC listener that fit under the process's
/// descriptor limit (raised to its hard limit first), and a warning when they had to be
/// lowered.
pub(crate) fn connection_budget(intake: usize, grpc: usize) -> (usize, usize, Option<String>) {
    #[cfg(unix)]
    let limit = {
        let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(u64::MAX);
        // On failure the current soft limit stays, and is what we read back.
        let _ = rlimit::increase_nofile_limit(hard);
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX)
    };
    #[cfg(not(unix))]
    let limit = u64::MAX;
    fit(intake, grpc, limit)
}

fn fit(intake: usize, grpc: usize, limit: u64) -> (usize, usize, Option<String>) {
    let available = limit.saturating_sub(RESERVED).max(2);
    // Each listener may hold evicted connections, still closing, beyond its bound.
    let with_headroom = |n: usize| (n + eviction_headroom(n)) as u64;
    let wanted = with_headroom(intake) + with_headroom(grpc);
    if wanted <= available {
        return (intake, grpc, None);
    }
    let scale = |n: usize| ((n as u64 * available / wanted) as usize).max(1);
    // `scale` shrinks each bound by `available / wanted`: with its headroom it fits too.
    let (i, g) = (scale(intake), scale(grpc));
    let warning = format!(
        "the process may open {limit} files: connection limits lowered to {i} (intake, \
         --max-connections {intake}) and {g} (gRPC, --grpc-max-connections {grpc}); raise \
         `ulimit -n` (LimitNOFILE= in systemd) to keep them"
    );
    (i, g, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::{eviction_headroom, fit};

    #[test]
    fn bounds_that_fit_are_kept() {
        assert_eq!(fit(1000, 500, 65536), (1000, 500, None));
    }

    #[test]
    fn bounds_that_do_not_fit_are_scaled_down_below_the_limit() {
        let (intake, grpc, warning) = fit(4096, 1024, 1024);
        let held = |n: usize| n + eviction_headroom(n);
        assert!(held(intake) + held(grpc) <= 1024 - 128, "{intake} + {grpc}");
        assert!(intake > grpc);
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("ulimit -n") && warning.contains("1024"),
            "{warning}"
        );
    }
}
