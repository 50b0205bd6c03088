//! Manifest endpoints: content negotiation on GET/HEAD, PUT with validation (size, media
//! type, referenced blobs, `?tag=`), and the referrers API.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use berth_api::Digest;
use bytes::Bytes;
use http_body_util::BodyExt;

use super::super::ServerConfig;
use super::super::api_error::ApiError;
use super::{ApiResult, digest, header_str, query, query_pairs, response};
use crate::Error;
use crate::manifest::OCI_INDEX;
use crate::name::{ManifestRef, RepositoryName};
use crate::storage::Storage;

/// True when an `Accept` header (possibly several) admits `media_type`.
pub(super) fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == media_type || item == "*/*" || item == "application/*" {
                return true;
            }
        }
    }
    !any
}

pub(super) async fn get_manifest(
    storage: &dyn Storage,
    name: &RepositoryName,
    reference: &str,
    req: Request,
) -> ApiResult {
    let reference = ManifestRef::parse(reference)?;
    let stored = storage.get_manifest(name, &reference).await?;
    if matches!(reference, ManifestRef::Tag(_)) && !accepts(req.headers(), &stored.media_type) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "manifest is {}, which the Accept header does not admit",
                stored.media_type
            ),
        ));
    }
    let headers = [
        ("content-type", stored.media_type.clone()),
        ("content-length", stored.bytes.len().to_string()),
        ("docker-content-digest", stored.digest.to_string()),
        ("etag", format!("\"{}\"", stored.digest)),
    ];
    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from(stored.bytes)
    };
    Ok(response(StatusCode::OK, &headers, body))
}

pub(super) async fn put_manifest(
    storage: &dyn Storage,
    config: &ServerConfig,
    name: &RepositoryName,
    reference: &str,
    req: Request,
) -> ApiResult {
    let mut reference = ManifestRef::parse(reference)?;
    // Tags by query parameter (`?tag=a&tag=b`), answered with `OCI-Tag`.
    let pairs = query_pairs(&req);
    let mut tags: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let param_tags = tags.len();
    // A push by tag may name the digest (and so its algorithm) the client computed.
    if let (ManifestRef::Tag(tag), Some(d)) = (&reference, query(&pairs, "digest")) {
        tags.push(tag.clone());
        reference = ManifestRef::Digest(digest(d)?);
    }
    let limit = config.max_manifest_size;
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let declared =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(Error::ManifestTooLarge { size, limit }.into());
    }
    let body = http_body_util::Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::from(Error::ManifestTooLarge {
                    size: limit + 1,
                    limit,
                })
            } else if super::super::conn::is_body_timeout(&*e) {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "MANIFEST_INVALID",
                    e.to_string(),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
            }
        })?
        .to_bytes();
    let put = storage
        .put_manifest(name, &reference, content_type.as_deref(), body, &tags)
        .await?;
    let mut headers = vec![
        ("location", format!("/v2/{name}/manifests/{}", put.digest)),
        ("docker-content-digest", put.digest.to_string()),
        ("content-length", "0".to_owned()),
    ];
    if let Some(subject) = put.subject {
        headers.push(("oci-subject", subject.to_string()));
    }
    for tag in &tags[..param_tags] {
        headers.push(("oci-tag", tag.clone()));
    }
    Ok(response(StatusCode::CREATED, &headers, Body::empty()))
}

pub(super) async fn referrers(
    storage: &dyn Storage,
    name: &RepositoryName,
    subject: &Digest,
    pairs: Vec<(String, String)>,
) -> ApiResult {
    let mut found = match storage.referrers(name, subject).await {
        Ok(found) => found,
        Err(Error::NameUnknown(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let filter = query(&pairs, "artifactType");
    if let Some(filter) = filter {
        found.retain(|d| d.artifact_type.as_deref() == Some(filter));
    }
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": found,
    }))
    .expect("index serialises");
    let mut headers = vec![("content-type", OCI_INDEX.to_owned())];
    if filter.is_some() {
        headers.push(("oci-filters-applied", "artifactType".to_owned()));
    }
    Ok(response(
        StatusCode::OK,
        &headers,
        Body::from(Bytes::from(body)),
    ))
}
