//! Blob GET/HEAD: whole or ranged (`Range: bytes=…`), streamed from storage.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use berth_api::Digest;

use super::{ApiResult, header_str, response};
use crate::name::RepositoryName;
use crate::storage::Storage;

/// A parsed `Range: bytes=…` request against a blob of `size` bytes.
pub(super) enum RangeRequest {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

pub(super) fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        // Multiple ranges: serving the whole blob is allowed (RFC 9110 §14.2).
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // Suffix range: the last `end` bytes.
        match end.parse::<u64>() {
            Ok(0) | Err(_) => return RangeRequest::Unsatisfiable,
            Ok(n) => (size.saturating_sub(n), size.saturating_sub(1)),
        }
    } else {
        let Ok(start) = start.parse::<u64>() else {
            return RangeRequest::Full;
        };
        let end = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            match end.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                // `bytes=500-0`: a range that ends before it starts matches nothing (the
                // distribution spec's conformance suite expects 416, not the whole blob).
                Ok(_) => return RangeRequest::Unsatisfiable,
                Err(_) => return RangeRequest::Full,
            }
        };
        (start, end)
    };
    if size == 0 || range.0 >= size {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Partial(range.0, range.1)
    }
}

pub(super) async fn get_blob(
    storage: &dyn Storage,
    name: &RepositoryName,
    digest: &Digest,
    req: Request,
) -> ApiResult {
    let size = storage.blob_size(name, digest).await?;
    let range = parse_range(header_str(req.headers(), header::RANGE), size);
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeRequest::Unsatisfiable => {
            return Ok(response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &[("content-range", format!("bytes */{size}"))],
                Body::empty(),
            ));
        }
    };
    let mut headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("content-length", len.to_string()),
        ("docker-content-digest", digest.to_string()),
        ("accept-ranges", "bytes".to_owned()),
        ("etag", format!("\"{digest}\"")),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        headers.push((
            "content-range",
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if req.method() == Method::HEAD {
        return Ok(response(status, &headers, Body::empty()));
    }
    let blob = storage.read_blob(name, digest, start, len).await?;
    Ok(response(status, &headers, Body::from_stream(blob.body)))
}
