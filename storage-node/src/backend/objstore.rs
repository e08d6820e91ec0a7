//! [`PackBackend`] over any `object_store::ObjectStore`.

use std::fmt;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload};

use super::{BackendError, PackBackend};

/// Pack objects in an object store.
#[derive(Clone)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreBackend({})", self.store)
    }
}

impl ObjectStoreBackend {
    /// Wraps any object store. The store's `put` must be durable when it returns (true of
    /// S3-compatible stores; use [`ObjectStoreBackend::local`] for the local filesystem).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        ObjectStoreBackend { store }
    }

    /// Objects as files under `dir` (created if missing). Every put fsyncs the file before
    /// it is renamed into place and then its parent directory, so it is durable on return.
    pub fn local(dir: &FsPath) -> Result<Self, BackendError> {
        let name = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| BackendError::Other {
            op: "create directory",
            name: name.clone(),
            source: e.into(),
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| BackendError::Other {
                op: "open directory",
                name,
                source: e.into(),
            })?
            .with_fsync(true);
        Ok(Self::new(Arc::new(fs)))
    }

    /// Objects in memory, gone when the last clone is dropped. For tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(InMemory::new()))
    }
}

/// Parses an object name, insisting it is already in canonical form.
fn object_path(name: &str) -> Result<Path, BackendError> {
    let invalid = |reason: String| BackendError::InvalidName {
        name: name.to_string(),
        reason,
    };
    let path = Path::parse(name).map_err(|e| invalid(e.to_string()))?;
    if name.is_empty() || path.as_ref() != name {
        return Err(invalid(
            "expected a non-empty relative path without leading or trailing '/'".into(),
        ));
    }
    Ok(path)
}

fn map_err(op: &'static str, name: &str, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::NotFound {
            name: name.to_string(),
        },
        other => BackendError::Other {
            op,
            name: name.to_string(),
            source: other.into(),
        },
    }
}

impl ObjectStoreBackend {
    /// After a failed ranged read: is the reason that the range starts past the end? Stores
    /// report that in their own ways, so ask for the size instead of parsing messages.
    async fn range_error(
        &self,
        path: &Path,
        name: &str,
        range: Range<u64>,
        e: object_store::Error,
    ) -> BackendError {
        if matches!(e, object_store::Error::NotFound { .. }) {
            return map_err("read", name, e);
        }
        match self.store.head(path).await {
            Ok(meta) if range.end > meta.size => BackendError::OutOfRange {
                name: name.to_string(),
                range,
                len: meta.size,
            },
            _ => map_err("read", name, e),
        }
    }
}

#[async_trait]
impl PackBackend for ObjectStoreBackend {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), BackendError> {
        let path = object_path(name)?;
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|e| map_err("write", name, e))?;
        Ok(())
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = object_path(name)?;
        if range.start >= range.end {
            return Err(BackendError::InvalidRange {
                name: name.to_string(),
                range,
            });
        }
        let options = GetOptions::new().with_range(Some(range.clone()));
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(e) => return Err(self.range_error(&path, name, range, e).await),
        };
        // Stores clamp a range that ends past the object; we promise exact reads.
        if result.range != range {
            return Err(BackendError::OutOfRange {
                name: name.to_string(),
                range,
                len: result.meta.size,
            });
        }
        let bytes = result.bytes().await.map_err(|e| map_err("read", name, e))?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(BackendError::OutOfRange {
                name: name.to_string(),
                range,
                len: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    async fn get(&self, name: &str) -> Result<Bytes, BackendError> {
        let path = object_path(name)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| map_err("read", name, e))?;
        result.bytes().await.map_err(|e| map_err("read", name, e))
    }

    async fn delete(&self, name: &str) -> Result<(), BackendError> {
        let path = object_path(name)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", name, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        // object_store lists by whole path segments: list the directory that holds
        // `prefix`'s last segment, then filter by the string prefix.
        let dir = match prefix.rfind('/') {
            Some(i) => Some(object_path(&prefix[..i])?),
            None => None,
        };
        let metas: Vec<_> = self
            .store
            .list(dir.as_ref())
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        let mut names: Vec<String> = metas
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}
