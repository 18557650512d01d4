//! The last-known-good cache (`source.cache`): the raw bytes of the last
//! document the daemon applied, so a host can boot while the API is down.
//!
//! The raw bytes are stored, not a re-serialisation, so the cache goes
//! through exactly the same parser and validation as a fresh answer.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{Accepted, CacheBody, Document, Parser};

/// Why the cache could not be used (a missing cache is not an error).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("reading the cache {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cache {path} does not hold a valid document: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Loads and parses the cached document; `Ok(None)` when there is no cache.
///
/// The result has `from_cache: true` and no ETag (the cache is a fallback,
/// the server's ETag for it is unknown).
pub fn load_cache<T: Document>(
    path: &Path,
    parser: &Parser<T>,
) -> Result<Option<Accepted<T>>, CacheError> {
    let raw = match crate::fsutil::read_optional(path) {
        Ok(Some(raw)) => Bytes::from(raw),
        Ok(None) => return Ok(None),
        Err(source) => {
            return Err(CacheError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let doc = parser(&raw).map_err(|reason| CacheError::Invalid {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Some(Accepted {
        doc: Arc::new(doc),
        raw: CacheBody::Bytes(raw),
        etag: None,
        from_cache: true,
    }))
}

/// Stores `raw` as the cache, atomically (mode 0640; the parent directory
/// is created if missing). Call it after the document was applied.
pub fn store_cache(path: &Path, raw: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic(path, raw, 0o640)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Doc(u64);
    impl Document for Doc {
        fn revision(&self) -> u64 {
            self.0
        }
    }

    fn parser() -> Parser<Doc> {
        Arc::new(|raw: &[u8]| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(Doc)
                .ok_or_else(|| "not a number".to_string())
        })
    }

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/last-good.json");
        assert!(load_cache(&path, &parser()).unwrap().is_none());

        store_cache(&path, b"42").unwrap();
        let a = load_cache(&path, &parser()).unwrap().unwrap();
        assert_eq!((a.doc.0, a.from_cache, a.etag.as_deref()), (42, true, None));
        assert_eq!(&a.raw.bytes().unwrap()[..], b"42");

        store_cache(&path, b"garbage").unwrap();
        let e = load_cache(&path, &parser()).unwrap_err();
        assert!(matches!(e, CacheError::Invalid { .. }), "{e}");
    }
}
