//! [`Embedder`]: load all-MiniLM-L6-v2 from the model cache, embed batches of texts.

use std::path::Path;

use candle_core::Device;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, DTYPE};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::config::{DeviceChoice, EmbedConfig};
use super::error::EmbedError;
use super::threads::ThreadBudget;
use super::packed_bert::{mean_pool, PackedBert};
use super::{pooling, tokenize};
use crate::models::{EmbeddingFiles, ModelCache};

/// The part of `sentence_bert_config.json` we read.
#[derive(Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

/// A loaded embedding model: tokenizer, BERT weights, thread pool. `Send + Sync`; one call
/// at a time uses the pool (calls from several threads queue on it).
pub struct Embedder {
    model: PackedBert,
    tokenizer: Tokenizer,
    device: Device,
    budget: ThreadBudget,
    config: EmbedConfig,
    dim: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.dim)
            .field("max_tokens", &self.max_tokens)
            .field("device", &self.device)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the installed model from `cache` (fails with "run `vcos models install`" when
    /// it is missing).
    pub fn from_cache(cache: &ModelCache, config: EmbedConfig) -> Result<Self, EmbedError> {
        Self::load(&cache.embedding()?, config)
    }

    /// Loads the model from its files.
    pub fn load(files: &EmbeddingFiles, config: EmbedConfig) -> Result<Self, EmbedError> {
        let _span = tracing::info_span!("embedder_load", threads = config.threads).entered();
        if config.max_batch == 0 || config.max_text_bytes == 0 {
            return Err(EmbedError::Setting("max_batch and max_text_bytes must be at least 1".into()));
        }
        let bert: Config = read_json(&files.config)?;
        let sentence: SentenceConfig = read_json(&files.sentence_config)?;
        let max_tokens = sentence.max_seq_length.unwrap_or(bert.max_position_embeddings).min(bert.max_position_embeddings);
        let device = match config.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::CudaIfAvailable => Device::cuda_if_available(0)?,
        };
        let budget = ThreadBudget::new(config.threads)?;
        let tokenizer = tokenize::load(&files.tokenizer, max_tokens)?;
        let weights = files.weights.clone();
        let model = budget.run(|| {
            // The safetensors file is read into memory (not mapped): mapping would need
            // `unsafe`, which this workspace forbids; 91 MB, once per embedder.
            let bytes = std::fs::read(&weights)
                .map_err(|e| EmbedError::ModelFile { path: weights.clone(), detail: e.to_string() })?;
            let vb = VarBuilder::from_buffered_safetensors(bytes, DTYPE, &device)?;
            PackedBert::load(vb, &bert).map_err(EmbedError::from)
        })?;
        tracing::info!(dim = bert.hidden_size, max_tokens, device = ?device, "embedder loaded");
        Ok(Embedder { model, tokenizer, device, budget, config, dim: bert.hidden_size, max_tokens })
    }

    /// Dimensions of an embedding (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens kept per text (special tokens included); the rest is truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Threads of this embedder's own pool.
    pub fn threads(&self) -> usize {
        self.budget.threads()
    }

    /// The settings it was built with.
    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    /// One unit-length embedding per text, in order. The whole batch runs as one forward
    /// pass, its texts packed without padding; results equal those of embedding texts one at
    /// a time (to float rounding).
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_counted(texts).map(|(vectors, _)| vectors)
    }

    /// Checks texts as [`Self::embed`] would, without embedding them (a server refuses bad
    /// input before queueing it).
    pub fn check_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<(), EmbedError> {
        self.check(texts).map(|_| ())
    }

    /// [`Self::embed`], and the tokens each text was read as (after truncation, without
    /// padding): what a tenant is charged for.
    pub fn embed_counted<S: AsRef<str>>(&self, texts: &[S]) -> Result<(Vec<Vec<f32>>, Vec<usize>), EmbedError> {
        let span = tracing::info_span!("embed", texts = texts.len(), tokens = tracing::field::Empty);
        let _enter = span.enter();
        let texts = self.check(texts)?;
        self.budget.run(|| {
            let packed = tokenize::encode(&self.tokenizer, &texts)?;
            span.record("tokens", packed.ids.len());
            let states = self.model.forward(&packed.ids, &packed.packing)?;
            let pooled = mean_pool(&states, &packed.packing)?;
            let normed = pooling::l2_normalize(&pooled)?;
            let counts = packed.packing.lengths;
            Ok((normed.to_vec2::<f32>()?, counts))
        })
    }

    /// Rejects empty and oversized input before any work.
    fn check<'a, S: AsRef<str>>(&self, texts: &'a [S]) -> Result<Vec<&'a str>, EmbedError> {
        if texts.is_empty() {
            return Err(EmbedError::EmptyBatch);
        }
        if texts.len() > self.config.max_batch {
            return Err(EmbedError::TooManyTexts { count: texts.len(), max: self.config.max_batch });
        }
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let text = text.as_ref();
                if text.len() > self.config.max_text_bytes {
                    Err(EmbedError::TextTooLong { index, bytes: text.len(), max: self.config.max_text_bytes })
                } else if text.trim().is_empty() {
                    Err(EmbedError::EmptyText { index })
                } else {
                    Ok(text)
                }
            })
            .collect()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EmbedError> {
    let file_error = |detail: String| EmbedError::ModelFile { path: path.to_owned(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_error(e.to_string()))
}
