//! Atomic file writes, shared by everything that persists state.
//!
//! Every file lb-agent writes (haproxy.cfg, map files, certificates, the
//! server-state file, the BIRD include, the last-known-good cache, the drain
//! flag) goes through [`write_atomic`]: a temp file in the same directory,
//! fsync, rename over the target, fsync of the directory. A full or read-only
//! disk therefore fails the write and leaves the previous file intact.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `data` to `path` atomically with permission bits `mode`.
///
/// The temp file lives next to the target so the final `rename(2)` never
/// crosses a filesystem. It is created 0600 and gets `mode` only after the
/// data is written, so a copy of a secret is never readable by others, not
/// even for a moment. On any error the target is untouched and the temp
/// file is removed. A symlink at `path` is replaced, not followed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "lb-agent".into())
        ))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Permission bits of the file at `path` (following a symlink to what it
/// points to), `None` when it does not exist.
pub fn mode_of(path: &Path) -> std::io::Result<Option<u32>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.permissions().mode() & 0o7777)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a file, mapping "does not exist" to `None`.
pub fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        write_atomic(&p, b"one", 0o640).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failure_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        write_atomic(&p, b"old", 0o644).unwrap();
        // A target whose parent is a regular file cannot be written.
        let bad = p.join("child");
        assert!(write_atomic(&bad, b"new", 0o644).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }
}
