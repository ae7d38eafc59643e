//! Model packages: the manifest format, streaming verification, the verified store and
//! `caxton pack`.

pub mod error;
pub mod manifest;
pub mod pack;
pub mod settle;
pub mod signature;
pub mod store;
pub mod verify;

pub use error::PackageError;
pub use manifest::{Architecture, Manifest, Pooling};
pub use store::{Store, StoredPackage};
