//! Embedding errors: bad input is told apart from a broken model or runtime.

use std::path::PathBuf;

use crate::models::ModelError;

/// What went wrong while loading the embedder or embedding texts.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model is not installed, or damaged.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No texts were given.
    #[error("no texts to embed")]
    EmptyBatch,
    /// A text is empty or only whitespace.
    #[error("text {index} is empty or only whitespace: nothing to embed")]
    EmptyText {
        /// Its position in the batch.
        index: usize,
    },
    /// More texts than [`super::EmbedConfig::max_batch`].
    #[error("{count} texts in one call, the limit is {max}: split the batch")]
    TooManyTexts {
        /// Texts given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text longer than [`super::EmbedConfig::max_text_bytes`].
    #[error("text {index} is {bytes} bytes, the limit is {max}")]
    TextTooLong {
        /// Its position in the batch.
        index: usize,
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A setting is out of range.
    #[error("invalid embedder setting: {0}")]
    Setting(String),
    /// A model file (config, tokenizer) could not be read or parsed.
    #[error("model file {path}: {detail}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The tokenizer failed on an input.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// The embedder's thread pool could not start.
    #[error("thread pool: {0}")]
    ThreadPool(String),
    /// candle failed (loading weights or running the model).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}
