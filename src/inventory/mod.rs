//! What the store holds: the inventory, the blob store, manifests, digests.
pub mod blobs;
pub mod digest;
pub mod manifest;
pub mod scan;
