//! Removing images, and with them the blobs and layer snapshots nothing else needs: what
//! `docker image rm` and `docker image prune` do. An image a container still uses keeps its last
//! name unless forced, and its layers stay as long as the container's writable snapshot sits on
//! them.

use berth_image::manifest::descriptor_digest;
use berth_image::{GcOptions, GcReport, ImageRecord, Reference};

use berth_namespaces::ContainerRuntime;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// What [`Engine::prune_images`] removed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneReport {
    /// Blobs deleted from the content store.
    pub blobs: GcReport,
    /// Layer snapshots (chain ids) deleted from the snapshotter.
    pub snapshots: Vec<String>,
}

impl<R: ContainerRuntime> Engine<R> {
    /// Removes the names `key` stands for: `NAME[:TAG]` removes that name, `NAME@DIGEST` every
    /// name of that repository on the digest, an image id (prefix) every name of the image.
    /// Refuses, unless `force`, to remove the last name of an image a container (running or
    /// not) was created from. Content stays until [`Engine::prune_images`].
    pub fn remove_image(&self, key: &str, force: bool) -> Result<Vec<ImageRecord>> {
        // The lock container creation takes: no container appears between the in-use check
        // and the removal (a create resolves the name again under it).
        let _lock = self.containers_lock()?;
        let images = self.images();
        let named = Reference::parse(key)
            .ok()
            .and_then(|reference| Some((images.resolve(&reference).ok()?, reference)));
        let (target, by_reference) = match named {
            Some((target, reference)) => (target, Some(reference)),
            None => (images.resolve_str(key)?, None),
        };
        let digest = descriptor_digest(&target)?;
        if !force {
            let names_left = images
                .list()?
                .into_iter()
                .filter(|r| r.digest().ok().as_ref() == Some(&digest))
                .filter(|r| match &by_reference {
                    Some(reference) if reference.tag().is_some() => {
                        r.reference().ok().as_ref() != Some(reference)
                    }
                    Some(reference) => r
                        .reference()
                        .map(|rr| rr.name() != reference.name())
                        .unwrap_or(true),
                    None => false,
                })
                .count();
            if names_left == 0 {
                self.refuse_if_in_use(key, &target)?;
            }
        }
        Ok(match &by_reference {
            Some(reference) => images.remove(reference)?,
            None => images.remove_digest(&digest)?,
        })
    }

    fn refuse_if_in_use(
        &self,
        key: &str,
        target: &berth_image::oci_spec::image::Descriptor,
    ) -> Result<()> {
        let mut digests = vec![descriptor_digest(target)?.to_string()];
        if let Ok(image) = self.images().load(target) {
            digests.push(image.digest()?.to_string());
        }
        match self
            .ps(true)?
            .into_iter()
            .find(|c| digests.contains(&c.image_digest))
        {
            Some(container) => Err(Error::ImageInUse {
                image: key.to_owned(),
                container: container.short_id().to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Deletes the blobs no image name references and the layer snapshots no named image
    /// needs (a snapshot under a container's writable layer stays).
    pub fn prune_images(&self) -> Result<PruneReport> {
        let blobs = self.images().gc(&GcOptions::default())?;
        let snapshots = self.images().prune_snapshots(self.snapshotter().as_ref())?;
        Ok(PruneReport { blobs, snapshots })
    }
}
