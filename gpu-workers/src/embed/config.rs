//! Settings of an [`super::Embedder`].

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// CUDA device 0 when the crate is built with candle's `cuda` feature and a GPU is
    /// present; the CPU otherwise.
    CudaIfAvailable,
}

/// Settings of an embedder.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// CPU threads for this embedder's matrix products, softmax and layer norms (its own
    /// rayon pool). Default 1: a worker sharing cores with other actors should not spin
    /// on all of them (shared/models.md, "Threads").
    pub threads: usize,
    /// Most texts in one call; more is [`super::EmbedError::TooManyTexts`]. Bounds memory:
    /// the attention scores alone take batch x 12 heads x tokens² x 4 bytes, 200 MB for 64
    /// texts at the 256-token limit.
    pub max_batch: usize,
    /// Most bytes of one text; more is [`super::EmbedError::TextTooLong`]. Tokens past the
    /// model's sequence length are truncated anyway; this bounds tokenizer work.
    pub max_text_bytes: usize,
    /// Where the model runs.
    pub device: DeviceChoice,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig { threads: 1, max_batch: 64, max_text_bytes: 64 * 1024, device: DeviceChoice::Cpu }
    }
}
