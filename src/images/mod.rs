//! Images in, for the vision models: a client's data URI decoded within the configured limits
//! ([`decode`]), then made into the tensor its model's processor would make ([`preprocess`]).

pub mod decode;
pub mod preprocess;
mod resample;

pub use decode::{ImageError, Limits, decode_bytes, decode_data_uri};
pub use preprocess::{Preprocess, Resample, Size};
