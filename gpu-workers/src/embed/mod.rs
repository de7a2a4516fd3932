//! Sentence embeddings with all-MiniLM-L6-v2 on candle.
//!
//! Semantics are sentence-transformers' (`Transformer -> Pooling(mean) -> Normalize`):
//! BERT over the tokens, mean of the last hidden states over the attention mask, L2
//! normalisation. Truncation is at `max_seq_length` from `sentence_bert_config.json` (256),
//! capped by the model's `max_position_embeddings` (512), as sentence-transformers does.
//!
//! Two traps of the shipped files, handled in `tokenize.rs`: `tokenizer.json` pads every
//! input to 128 tokens (batches would be mostly padding) and truncates at 128 (not
//! sentence-transformers' 256). Texts of a batch are packed, not padded (`packed_bert.rs`).
//!
//! Threads are a setting ([`EmbedConfig::threads`]); what that controls in candle and what
//! stays process-wide is in [`threads`].

mod config;
mod embedder;
mod error;
mod gelu;
mod packed_bert;
mod pooling;
pub mod threads;
mod tokenize;

pub use config::{DeviceChoice, EmbedConfig};
pub use embedder::Embedder;
pub use error::EmbedError;
