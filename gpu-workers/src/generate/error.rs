//! Typed errors of the generation worker.
//!
//! Callers (the worker actor, the HTTP facade) must tell a client mistake (a prompt that does not
//! fit, a bad sampling parameter) from a broken model file or an engine fault, so each has its own
//! variant instead of one opaque string.

use std::path::PathBuf;

/// Everything that can go wrong while loading the model or generating text.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The file is not a GGUF we can run: bad header, missing or ill-typed metadata, missing
    /// tensors, inconsistent shapes.
    #[error("corrupt or unsupported GGUF model: {0}")]
    CorruptModel(String),

    /// The tokenizer described by the GGUF metadata could not be built.
    #[error("cannot build tokenizer from GGUF metadata: {0}")]
    Tokenizer(String),

    /// The prompt leaves no room for even one generated token in the model's context window.
    #[error("prompt is {prompt_tokens} tokens; the context holds {context} (at least one must be left for generation)")]
    PromptTooLong {
        /// Length of the tokenized prompt.
        prompt_tokens: usize,
        /// The context length in force (model maximum, or the configured cap).
        context: usize,
    },

    /// The prompt tokenized to nothing: there is no position to predict from.
    #[error("prompt is empty")]
    EmptyPrompt,

    /// A sampling parameter is out of its domain.
    #[error("invalid sampling parameter {name}: {reason}")]
    InvalidSampling {
        /// Which parameter.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration value (threads, batch size, context cap) is out of its domain.
    #[error("invalid generation config: {0}")]
    InvalidConfig(String),

    /// The process-wide CPU thread pool was already sized differently.
    #[error(
        "CPU thread budget already set to {active} in this process; {requested} was requested"
    )]
    ThreadBudgetConflict {
        /// The budget in force.
        active: usize,
        /// The budget asked for now.
        requested: usize,
    },

    /// A prompt token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },

    /// A request id that the engine does not know (finished, cancelled or never submitted).
    #[error("unknown request id {0}")]
    UnknownRequest(u64),

    /// The tensor backend failed while running the model.
    #[error("tensor backend error: {0}")]
    Backend(#[from] candle_core::Error),
}

/// Short alias used throughout the generation modules.
pub type Result<T> = std::result::Result<T, GenerateError>;
