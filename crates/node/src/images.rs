//! A container's image on the node: looked up in the node's image store and pulled from its
//! registry with berth-registry's client when `imagePullPolicy` says so (`Always`,
//! `IfNotPresent`, `Never`; the default is `Always` for `:latest` or no tag, else
//! `IfNotPresent`). Pulls are serialised per node, so pods sharing an image pull it once.

use berth_image::Reference;
use berth_image::oci_spec::image::MediaType;
use berth_registry::client::{Client, ClientOptions};
use berth_registry::{ManifestRef, RepositoryName};
use k8s_openapi::api::core::v1::Container;

use crate::host::Host;

/// Why an image is not there (the waiting reasons of a container status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    /// `ErrImagePull`, `ErrImageNeverPull`, `InvalidImageName`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

/// The effective pull policy of `c`.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p;
    }
    let image = c.image.as_deref().unwrap_or_default();
    match Reference::parse(image) {
        Ok(r) if r.digest().is_some() => "IfNotPresent",
        Ok(r) if r.tag().is_some_and(|t| t != "latest") => "IfNotPresent",
        _ => "Always",
    }
}

/// Makes sure `c`'s image is in the node's store, pulling as its policy says.
pub async fn ensure(host: &Host, c: &Container) -> Result<(), ImageError> {
    let image = c.image.clone().unwrap_or_default();
    let reference = Reference::parse(&image).map_err(|e| ImageError {
        reason: "InvalidImageName",
        message: e.to_string(),
    })?;
    let _pulling = host.image_lock.lock().await;
    let present = host.engine.images().image(&reference).is_ok();
    match pull_policy(c) {
        "Never" if !present => Err(ImageError {
            reason: "ErrImageNeverPull",
            message: format!("image {image:?} is not present with pull policy of Never"),
        }),
        "IfNotPresent" | "Never" if present => Ok(()),
        // `Always` pulls even when present (the kubelet fails too when the registry is away).
        _ => pull(host, &reference).await.map_err(|message| ImageError {
            reason: "ErrImagePull",
            message,
        }),
    }
}

async fn pull(host: &Host, reference: &Reference) -> Result<(), String> {
    let domain = reference.domain();
    let insecure = domain.starts_with("localhost")
        || domain.starts_with("127.0.0.1")
        || host.config.insecure_registries.iter().any(|r| r == domain);
    let options = ClientOptions {
        insecure,
        ..ClientOptions::default()
    };
    let client = Client::new(domain, options).map_err(|e| e.to_string())?;
    let repo = RepositoryName::new(reference.path()).map_err(|e| e.to_string())?;
    let wanted = match (reference.digest(), reference.tag()) {
        (Some(d), _) => ManifestRef::Digest(d.clone()),
        (None, Some(t)) => ManifestRef::Tag(t.to_owned()),
        (None, None) => ManifestRef::Tag("latest".to_owned()),
    };
    let store = host.engine.images();
    let _lease = store.lease().map_err(|e| e.to_string())?;
    let pulled = client
        .pull_image(&repo, &wanted, store.content())
        .await
        .map_err(|e| crate::shim::error_chain(&e))?;
    let target = berth_image::manifest::descriptor(
        MediaType::from(pulled.descriptor.media_type.as_str()),
        &pulled.descriptor.digest,
        pulled.descriptor.size,
    );
    store.tag(reference, &target).map_err(|e| e.to_string())
}
