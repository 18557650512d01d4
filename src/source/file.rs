//! `file://` sources: a local desired-state file, re-checked every `poll_interval`.
//!
//! The single-host setup and the demo feed the agent from a file that some
//! other tool rewrites. Each check `stat`s the file; only when its identity
//! (device, inode, size, mtime, ctime) changed is it read again, and its
//! SHA-256 is the "ETag": a rewrite with identical content (a `touch`, a
//! config-management run) is "not modified", and the loop's rule that only
//! an *accepted* document's ETag is remembered makes a file with a broken
//! document keep failing (and go stale) until it is fixed.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::poll::{Fetch, Fetched, Known};
use super::FetchError;

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Polls a local file.
pub(crate) struct FileFetcher {
    path: PathBuf,
    max_bytes: usize,
    /// Stamp and content hash of the last read.
    seen: Option<(Stamp, String)>,
}

impl FileFetcher {
    pub(crate) fn new(path: PathBuf, max_bytes: usize) -> Self {
        FileFetcher {
            path,
            max_bytes,
            seen: None,
        }
    }

    async fn fetch_once(&mut self, known: Known) -> Result<Fetched, FetchError> {
        let io_error = |source| FetchError::File {
            path: self.path.clone(),
            source,
        };
        let meta = tokio::fs::metadata(&self.path).await.map_err(io_error)?;
        let stamp = Stamp::of(&meta);
        if let Some((seen, hash)) = &self.seen {
            if *seen == stamp && known.etag.as_deref() == Some(hash.as_str()) {
                return Ok(Fetched::NotModified);
            }
        }
        if meta.len() > self.max_bytes as u64 {
            return Err(FetchError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let raw = tokio::fs::read(&self.path).await.map_err(io_error)?;
        let hash = hex::encode(Sha256::digest(&raw));
        self.seen = Some((stamp, hash.clone()));
        if known.etag.as_deref() == Some(hash.as_str()) {
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::Document {
            raw: Bytes::from(raw),
            etag: Some(hash),
        })
    }
}

impl Fetch for FileFetcher {
    fn fetch(
        &mut self,
        known: Known,
    ) -> impl std::future::Future<Output = Result<Fetched, FetchError>> + Send {
        self.fetch_once(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(etag: Option<&str>) -> Known {
        Known {
            etag: etag.map(str::to_string),
            revision: None,
        }
    }

    #[tokio::test]
    async fn unchanged_touched_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        std::fs::write(&path, b"one").unwrap();
        let mut f = FileFetcher::new(path.clone(), 1 << 20);

        let Fetched::Document { raw, etag } = f.fetch_once(known(None)).await.unwrap() else {
            panic!("first read must be a document");
        };
        assert_eq!(&raw[..], b"one");
        let etag = etag.unwrap();
        assert_eq!(etag.len(), 64);

        // Accepted (etag known) and untouched: not modified, without reading.
        assert!(matches!(
            f.fetch_once(known(Some(&etag))).await.unwrap(),
            Fetched::NotModified
        ));
        // Not accepted (e.g. it failed to parse): delivered again.
        assert!(matches!(
            f.fetch_once(known(None)).await.unwrap(),
            Fetched::Document { .. }
        ));
        // Rewritten with the same content: still not modified.
        std::fs::write(&path, b"one").unwrap();
        assert!(matches!(
            f.fetch_once(known(Some(&etag))).await.unwrap(),
            Fetched::NotModified
        ));
        // Same size, new content: a new document.
        std::fs::write(&path, b"two").unwrap();
        let Fetched::Document { raw, etag: e2 } = f.fetch_once(known(Some(&etag))).await.unwrap()
        else {
            panic!("changed content must be a document");
        };
        assert_eq!(&raw[..], b"two");
        assert_ne!(e2.unwrap(), etag);
    }

    #[tokio::test]
    async fn missing_and_oversized_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        let mut f = FileFetcher::new(path.clone(), 4);
        let e = f.fetch_once(known(None)).await.unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
        std::fs::write(&path, b"12345").unwrap();
        assert!(matches!(
            f.fetch_once(known(None)).await.unwrap_err(),
            FetchError::TooLarge { limit: 4 }
        ));
    }
}
