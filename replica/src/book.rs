//! Where a site's remotes are kept, behind one narrow trait: [`RemoteBook`]. A repository
//! keeps them in its `remotes.json` ([`FileBook`]); a cluster keeps them in its replicated
//! catalog (the `bora` binary's Raft-backed book), so that every coordinator that leads
//! has them. [`conformance::check`] is the one behaviour every book must show.
//!
//! A book keeps tokens: redacting them is for whoever shows a remote (the `Remotes`
//! service lists [`Remote::redacted`]).

use std::path::PathBuf;

use async_trait::async_trait;
use tonic::Status;

use crate::remote::{self, Remote, RemoteError};

/// Why a book could not list or change its remotes.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// About the remotes themselves: invalid, unknown, already there, an unreadable file.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Where the remotes are kept could not answer, already mapped to the status a client
    /// gets (a replicated catalog's member that does not lead: UNAVAILABLE naming the
    /// leader in its metadata; no quorum; stopped). Sent back as it is.
    #[error("the remotes' catalog: {}", .0.message())]
    Catalog(Box<Status>),
    #[error("the remotes' store: {0}")]
    Task(String),
}

/// A site's remotes: list, find, add (validated), remove.
#[async_trait]
pub trait RemoteBook: Send + Sync + 'static {
    /// Every remote, tokens included.
    async fn list(&self) -> Result<Vec<Remote>, BookError>;

    /// Adds `remote` after validating it; one of the same name is replaced only with
    /// `replace` ([`RemoteError::Exists`] otherwise).
    async fn add(&self, remote: Remote, replace: bool) -> Result<(), BookError>;

    /// Removes the remote `name` ([`RemoteError::Unknown`] if there is none).
    async fn remove(&self, name: &str) -> Result<(), BookError>;

    /// The remote `name` ([`RemoteError::Unknown`], naming the known ones, if there is
    /// none).
    async fn find(&self, name: &str) -> Result<Remote, BookError> {
        Ok(remote::find_in(self.list().await?, name)?)
    }
}

/// The remotes of a repository (or an older coordinator's data dir): `remotes.json` in
/// `dir`, mode 0600, changed one at a time.
pub struct FileBook {
    dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileBook {
    pub fn new(dir: impl Into<PathBuf>) -> FileBook {
        FileBook {
            dir: dir.into(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(PathBuf) -> Result<T, RemoteError> + Send + 'static,
    ) -> Result<T, BookError> {
        let dir = self.dir.clone();
        Ok(tokio::task::spawn_blocking(move || f(dir))
            .await
            .map_err(|e| BookError::Task(e.to_string()))??)
    }
}

#[async_trait]
impl RemoteBook for FileBook {
    async fn list(&self) -> Result<Vec<Remote>, BookError> {
        self.blocking(|dir| remote::load(&dir)).await
    }

    async fn add(&self, r: Remote, replace: bool) -> Result<(), BookError> {
        let _one = self.lock.lock().await;
        self.blocking(move |dir| remote::add(&dir, r, replace))
            .await
    }

    async fn remove(&self, name: &str) -> Result<(), BookError> {
        let _one = self.lock.lock().await;
        let name = name.to_string();
        self.blocking(move |dir| remote::remove(&dir, &name)).await
    }
}

/// The behaviour every [`RemoteBook`] must show, run by each implementation's tests.
pub mod conformance {
    use super::*;

    fn remote(name: &str, url: &str) -> Remote {
        Remote {
            name: name.into(),
            url: url.into(),
            fingerprint: Some("ab".repeat(32)),
            ca_pem: None,
            token: Some(format!("token-of-{name}")),
            insecure: false,
            vms: vec!["web01".into()],
            auto: true,
        }
    }

    fn names(all: &[Remote]) -> Vec<String> {
        let mut n: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
        n.sort();
        n
    }

    fn expect(ok: bool, what: &str) -> Result<(), String> {
        match ok {
            true => Ok(()),
            false => Err(what.to_string()),
        }
    }

    /// Checks an empty `book`: adds (validated, refused twice without `replace`), finds,
    /// replaces, removes; tokens are kept. The first behaviour that differs is the error.
    pub async fn check(book: &dyn RemoteBook) -> Result<(), String> {
        let e = |e: BookError| e.to_string();
        expect(
            book.list().await.map_err(e)?.is_empty(),
            "a new book is empty",
        )?;
        expect(
            matches!(
                book.find("dr").await,
                Err(BookError::Remote(RemoteError::Unknown { .. }))
            ),
            "finding a remote that is not there is Unknown",
        )?;
        let mut bad = remote("dr", "https://dr.example:7300");
        bad.fingerprint = None;
        expect(
            matches!(
                book.add(bad, false).await,
                Err(BookError::Remote(RemoteError::Invalid { .. }))
            ),
            "a remote without trust is refused as Invalid",
        )?;
        expect(
            book.list().await.map_err(e)?.is_empty(),
            "a refused remote is not kept",
        )?;
        let dr = remote("dr", "https://dr.example:7300");
        book.add(dr.clone(), false).await.map_err(e)?;
        expect(
            book.find("dr").await.map_err(e)? == dr,
            "a remote is found as added, token included",
        )?;
        expect(
            matches!(
                book.add(remote("dr", "https://other:7300"), false).await,
                Err(BookError::Remote(RemoteError::Exists(_)))
            ),
            "adding a remote twice without replace is refused as Exists",
        )?;
        expect(
            book.find("dr").await.map_err(e)? == dr,
            "a refused add changes nothing",
        )?;
        let moved = remote("dr", "https://other:7300");
        book.add(moved.clone(), true).await.map_err(e)?;
        expect(
            book.find("dr").await.map_err(e)? == moved,
            "replace changes the remote",
        )?;
        book.add(remote("dr2", "https://dr2:7300"), false)
            .await
            .map_err(e)?;
        expect(
            names(&book.list().await.map_err(e)?) == ["dr", "dr2"],
            "both remotes are listed",
        )?;
        expect(
            matches!(
                book.remove("nope").await,
                Err(BookError::Remote(RemoteError::Unknown { .. }))
            ),
            "removing a remote that is not there is Unknown",
        )?;
        book.remove("dr").await.map_err(e)?;
        expect(
            names(&book.list().await.map_err(e)?) == ["dr2"],
            "a removed remote is gone, the other stays",
        )?;
        match book.find("dr").await {
            Err(BookError::Remote(RemoteError::Unknown { known, .. })) => {
                expect(known == "dr2", "Unknown names the known remotes")
            }
            other => Err(format!("a removed remote is Unknown, not {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_book_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let book = FileBook::new(dir.path());
        conformance::check(&book).await.unwrap();
    }
}
