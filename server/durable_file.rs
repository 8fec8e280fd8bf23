//! Writing a small file so that a crash leaves it whole or absent, never a mix.
//!
//! The one way qistatus writes a file that is not its log: the bytes go to a `.partial`
//! file beside it, synced, renamed over the path, and the directory synced, so the name too
//! survives a power loss. Used for recovery's state, and for the webhooks a cluster node
//! holds while its stream cannot take them.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` durably, replacing it whole if it exists. Returns once the file
/// and its name are on disk.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = std::fs::File::create(&partial).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // Nothing was promised from it: a full disk should not keep its half.
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_nothing_partial_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_whole(&path, b"first").unwrap();
        write_whole(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
