//! Blob uploads: start (POST, also a monolithic upload or a cross-repository mount), chunks
//! (PATCH with `Content-Range`), finish (PUT with the digest) and the upload status responses.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use berth_api::Digest;

use super::super::api_error::ApiError;
use super::{
    Action, ApiResult, AppState, Need, authorize, body_stream, digest, header_str, query,
    query_pairs, range_header, repo, response,
};
use crate::Error;
use crate::name::RepositoryName;
use crate::storage::Storage;

pub(super) fn upload_response(
    status: StatusCode,
    name: &RepositoryName,
    id: &str,
    size: u64,
) -> Response {
    response(
        status,
        &[
            ("location", format!("/v2/{name}/blobs/uploads/{id}")),
            ("range", range_header(size)),
            ("docker-upload-uuid", id.to_owned()),
            ("content-length", "0".to_owned()),
        ],
        Body::empty(),
    )
}

pub(super) fn blob_created(name: &RepositoryName, digest: &Digest) -> Response {
    response(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
            ("content-length", "0".to_owned()),
        ],
        Body::empty(),
    )
}

pub(super) async fn start_upload(
    state: &AppState,
    name: &RepositoryName,
    req: Request,
) -> ApiResult {
    let storage = state.storage.as_ref();
    let pairs = query_pairs(&req);
    if let Some(mount) = query(&pairs, "mount") {
        let mount = digest(mount)?;
        // Not the request itself: its body is not `Sync`, and this is held across awaits.
        let headers = req.headers().clone();
        let may_pull = |from: &RepositoryName| {
            authorize(state, &headers, Need::Repo(from.as_str(), Action::Pull)).is_ok()
        };
        let sources = match query(&pairs, "from") {
            Some(from) => vec![repo(from)?],
            // No source named: any repository holding the blob that the caller may read
            // (automatic content discovery).
            None => storage
                .repositories_with_blob(&mount, MOUNT_CANDIDATES)
                .await?
                .into_iter()
                .filter(|r| r != name)
                .collect(),
        };
        for from in sources.iter().filter(|r| may_pull(r)) {
            if storage.mount_blob(from, name, &mount).await?.is_some() {
                return Ok(blob_created(name, &mount));
            }
        }
    } else if let Some(d) = query(&pairs, "digest") {
        let d = digest(d)?;
        storage.put_blob(name, &d, body_stream(req)).await?;
        return Ok(blob_created(name, &d));
    }
    let id = storage.start_upload(name).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &id, 0))
}

/// Repositories considered for a mount that names no source.
pub(super) const MOUNT_CANDIDATES: usize = 64;

/// Parses `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>`).
pub(super) fn parse_content_range(value: &str) -> Result<(u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("bad Content-Range {value:?}"),
        )
    };
    let v = value.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (start, end) = v.split_once('-').ok_or_else(bad)?;
    let start = start.trim().parse::<u64>().map_err(|_| bad())?;
    let end = end.trim().parse::<u64>().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok((start, end))
}

pub(super) async fn write_chunk(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> Result<u64, ApiError> {
    let range = header_str(req.headers(), header::CONTENT_RANGE)
        .map(parse_content_range)
        .transpose()?;
    let (offset, expected) = match range {
        Some((start, end)) => (Some(start), Some(end - start + 1)),
        None => (None, None),
    };
    match storage
        .write_upload(name, id, offset, expected, body_stream(req))
        .await
    {
        Ok(size) => Ok(size),
        Err(Error::RangeInvalid { expected, got }) => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("chunk starts at {got}, but the upload holds {expected} bytes"),
        )
        .header(header::RANGE, &range_header(expected))
        .header(header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn patch_upload(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> ApiResult {
    let size = write_chunk(storage, name, id, req).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, id, size))
}

pub(super) async fn finish_upload(
    storage: &dyn Storage,
    name: &RepositoryName,
    id: &str,
    req: Request,
) -> ApiResult {
    let pairs = query_pairs(&req);
    let Some(d) = query(&pairs, "digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the digest query parameter is required",
        ));
    };
    let d = digest(d)?;
    let has_body = header_str(req.headers(), header::CONTENT_LENGTH).is_some_and(|l| l != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        write_chunk(storage, name, id, req).await?;
    }
    storage.finish_upload(name, id, &d).await?;
    Ok(blob_created(name, &d))
}
