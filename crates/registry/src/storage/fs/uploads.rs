//! Upload sessions of [`FsStorage`](super::FsStorage): `uploads/<uuid>/` with the data file
//! appended to and hashed as it arrives (the hash lives with the session in memory), finished
//! by comparing that hash with the client's digest and moving the file into the content store.

use std::sync::Arc;

use berth_api::Digest;

use berth_image::UploadHash;

use super::super::ByteStream;
use super::super::file_io::{self, Appender};
use crate::name::RepositoryName;
use crate::{Error, Result};

use super::*;

impl FsStorage {
    pub(super) async fn start_upload_session(&self, repo: &RepositoryName) -> Result<String> {
        let id = uuid::Uuid::new_v4().as_hyphenated().to_string();
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Error::io("create", &dir))?;
        let data = dir.join("data");
        tokio::fs::File::create(&data)
            .await
            .map_err(Error::io("create", &data))?;
        // Written last: an upload directory without it is incomplete and never served.
        tokio::fs::write(dir.join("repository"), repo.as_str())
            .await
            .map_err(Error::io("write", dir.join("repository")))?;
        self.uploads
            .lock()
            .expect("uploads lock poisoned")
            .insert(id.clone(), Arc::new(Some(UploadHash::new()).into()));
        Ok(id)
    }

    pub(super) async fn upload_session_size(&self, repo: &RepositoryName, id: &str) -> Result<u64> {
        let (id, _) = self.upload_state(repo, id).await?;
        let data = self.upload_dir(&id).join("data");
        tokio::fs::metadata(&data)
            .await
            .map(|m| m.len())
            .map_err(|_| Error::UploadUnknown(id))
    }

    pub(super) async fn append_upload(
        &self,
        repo: &RepositoryName,
        id: &str,
        offset: Option<u64>,
        expected_len: Option<u64>,
        data: ByteStream,
    ) -> Result<u64> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let session = lock.lock_owned().await;
        let path = self.upload_dir(&id).join("data");
        let (appender, start) =
            match tokio::task::spawn_blocking(move || Appender::open(path, session))
                .await
                .expect("open task panicked")
            {
                Ok(opened) => opened,
                Err(_) => return Err(Error::UploadUnknown(id)),
            };
        if let Some(offset) = offset
            && offset != start
        {
            appender.close();
            return Err(Error::RangeInvalid {
                expected: start,
                got: offset,
            });
        }
        // What the file held before this chunk, to roll back to.
        let rollback = appender.hash().cloned();
        let (mut appender, failure) = file_io::append(appender, expected_len, data).await;
        let written = appender.written();
        let short = failure.is_none() && expected_len.is_some_and(|n| n != written);
        if short || matches!(failure, Some(Error::BadRequest(_))) {
            // A chunk that does not match its Content-Range is not kept.
            let (appender, truncated) = tokio::task::spawn_blocking(move || {
                let result = appender.truncate(start, rollback);
                (appender, result)
            })
            .await
            .expect("truncate task panicked");
            appender.close();
            truncated?;
            return Err(failure.unwrap_or_else(|| {
                Error::BadRequest("chunk is shorter than its Content-Range".into())
            }));
        }
        appender.close();
        match failure {
            Some(e) => Err(e),
            None => Ok(start + written),
        }
    }

    pub(super) async fn finish_upload_session(
        &self,
        repo: &RepositoryName,
        id: &str,
        digest: &Digest,
    ) -> Result<u64> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let mut hash = lock.lock().await;
        let dir = self.upload_dir(&id);
        let data = dir.join("data");
        let size = match tokio::fs::metadata(&data).await {
            Ok(meta) => meta.len(),
            Err(_) => return Err(Error::UploadUnknown(id)),
        };
        let result = {
            let _gc = self.gc_lock.read().await;
            let known = hash.take();
            let (content, staged, expected) = (self.content.clone(), data.clone(), digest.clone());
            // The content store verifies (with the running hash when it covers the file, else
            // by reading it) before the blob becomes visible.
            let committed = tokio::task::spawn_blocking(move || {
                content.commit_upload(&staged, known, &expected)
            })
            .await
            .expect("commit task panicked");
            match committed {
                Ok(_) => self.link(repo, digest).await.map(|()| size),
                Err(e) => Err(content_error(e)),
            }
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        drop(hash);
        self.forget_upload(&id);
        result
    }

    pub(super) async fn cancel_upload_session(
        &self,
        repo: &RepositoryName,
        id: &str,
    ) -> Result<()> {
        let (id, lock) = self.upload_state(repo, id).await?;
        let _busy = lock.lock().await;
        let dir = self.upload_dir(&id);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|_| Error::UploadUnknown(id.clone()))?;
        self.forget_upload(&id);
        Ok(())
    }
}
