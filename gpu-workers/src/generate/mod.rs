//! Text generation with SmolLM2-class llama models from a GGUF file (the generation half of
//! the inference worker).
//!
//! * [`tokenizer`]: the tokenizer, rebuilt from the GGUF metadata (candle's GGUF tokenizer
//!   gets SmolLM2 wrong);
//! * [`chat`]: ChatML prompt rendering;
//! * [`model`]: a quantized llama forward pass with a KV cache per sequence, so sequences at
//!   different positions decode in one batch;
//! * `q8_f32`: the Q8_0 matmul behind [`CpuMatmul::Auto`], with f32 activations (the logits
//!   transformers gives on the same file) and weight-stationary tiles, so a decode step of many
//!   sequences reads the weights once;
//! * [`engine`]: continuous batching (requests join and leave between steps);
//! * [`sampling`], [`stream`]: per-request sampling and UTF-8-safe, stop-aware text streaming;
//! * [`threads`]: the process-wide CPU thread budget.
//!
//! [`TextGenerator`] ties them together: load once, then [`TextGenerator::generate`] (callback),
//! [`TextGenerator::stream`] (iterator) or [`TextGenerator::engine`] (many requests).

pub mod chat;
pub mod engine;
pub mod error;
mod gguf;
pub mod kv_cache;
pub mod model;
mod q8_f32;
pub mod sampling;
pub mod stream;
pub mod threads;
pub mod tokenizer;

use std::num::NonZeroUsize;
use std::path::Path;

use candle_core::Device;

pub use chat::{render_chatml, ChatMessage, Role};
pub use engine::{BatchEngine, EngineEvent, EngineLimits, FinishReason, Generation, RequestId};
pub use error::{GenerateError, Result};
pub use gguf::LlamaConfig;
pub use model::{CpuMatmul, LlamaModel, WeightPrecision};
pub use sampling::SamplingParams;
pub use threads::{apply_cpu_thread_budget, ThreadBudget};
pub use tokenizer::GgufTokenizer;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// CUDA device `ordinal` when the crate is built with CUDA and one is present, else the CPU.
    CudaIfAvailable(usize),
}

/// Settings of a generation worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// CPU threads for inference in this process (see [`threads`]). One per worker is the safe
    /// choice on a machine shared with other actors.
    pub threads: NonZeroUsize,
    /// Where to run.
    pub device: DeviceChoice,
    /// Quantized (fast) or dequantized-f32 (reference-exact) weights.
    pub precision: WeightPrecision,
    /// The CPU kernel for quantized weights (ours where it runs, or candle's).
    pub cpu_matmul: CpuMatmul,
    /// Cap on positions per sequence (prompt + output); `None`: the model's context length.
    /// Smaller caps bound the worst-case KV-cache memory per sequence.
    pub max_context: Option<usize>,
    /// Batching limits of engines made by [`TextGenerator::engine`].
    pub limits: EngineLimits,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            threads: NonZeroUsize::MIN,
            device: DeviceChoice::Cpu,
            precision: WeightPrecision::Quantized,
            cpu_matmul: CpuMatmul::Auto,
            max_context: None,
            limits: EngineLimits::default(),
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, rendered with ChatML and a generation prompt.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenized as is.
    Text(String),
    /// Already tokenized.
    Tokens(Vec<u32>),
}

/// A loaded model and tokenizer; shareable across threads (`&self` everywhere).
#[derive(Debug)]
pub struct TextGenerator {
    model: LlamaModel,
    tokenizer: GgufTokenizer,
    threads: ThreadBudget,
    config: GeneratorConfig,
}

impl TextGenerator {
    /// Loads the GGUF at `path` (weights and tokenizer) as `config` says.
    pub fn load(path: &Path, config: GeneratorConfig) -> Result<Self> {
        if config.limits.max_batch == 0 || config.limits.prefill_chunk == 0 {
            return Err(GenerateError::InvalidConfig(
                "max_batch and prefill_chunk must be at least 1".into(),
            ));
        }
        let threads = ThreadBudget::new(config.threads)?;
        let device = match config.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::CudaIfAvailable(ordinal) => Device::cuda_if_available(ordinal)?,
        };
        let mut file = gguf::GgufFile::open(path)?;
        let tokenizer = GgufTokenizer::from_gguf(&file)?;
        let model = threads.run(|| {
            LlamaModel::load(
                &mut file,
                config.precision,
                config.cpu_matmul,
                config.max_context,
                &device,
            )
        })?;
        if tokenizer.vocab_size() > model.config().vocab {
            return Err(GenerateError::CorruptModel(format!(
                "tokenizer has {} tokens, embedding only {}",
                tokenizer.vocab_size(),
                model.config().vocab
            )));
        }
        Ok(Self {
            model,
            tokenizer,
            threads,
            config,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The generator's thread pool (see [`threads`]).
    pub fn threads(&self) -> &ThreadBudget {
        &self.threads
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Token ids of a prompt.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Chat(messages) => self.tokenizer.encode(&render_chatml(messages, true)),
            Prompt::Text(text) => self.tokenizer.encode(text),
            Prompt::Tokens(ids) => Ok(ids.clone()),
        }
    }

    /// A continuous-batching engine over this model with the configured limits.
    pub fn engine(&self) -> Result<BatchEngine<'_>> {
        BatchEngine::new(
            &self.model,
            &self.tokenizer,
            Some(&self.threads),
            self.config.limits,
        )
    }

    /// Generates for one prompt, calling `on_text` with each newly visible piece of text.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: SamplingParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let mut s = self.stream(prompt, params)?;
        for piece in s.by_ref() {
            on_text(&piece?);
        }
        s.into_output()
    }

    /// Generates for one prompt as an iterator of text pieces; the full result is available from
    /// [`TextStream::into_output`] once the iterator is exhausted.
    pub fn stream(&self, prompt: &Prompt, params: SamplingParams) -> Result<TextStream<'_>> {
        let ids = self.encode_prompt(prompt)?;
        let mut engine = BatchEngine::new(
            &self.model,
            &self.tokenizer,
            Some(&self.threads),
            EngineLimits {
                max_batch: 1,
                ..self.config.limits
            },
        )?;
        engine.submit_tokens(ids, params)?;
        Ok(TextStream {
            engine,
            queue: std::collections::VecDeque::new(),
            output: None,
            failed: false,
        })
    }
}

/// Iterator over the text pieces of one generation (non-empty pieces only).
pub struct TextStream<'m> {
    engine: BatchEngine<'m>,
    queue: std::collections::VecDeque<String>,
    output: Option<Generation>,
    failed: bool,
}

impl TextStream<'_> {
    /// The finished generation; an error if the stream was not run to its end.
    pub fn into_output(mut self) -> Result<Generation> {
        for piece in self.by_ref() {
            piece?;
        }
        self.output
            .ok_or_else(|| GenerateError::InvalidConfig("generation did not complete".into()))
    }
}

impl Iterator for TextStream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = self.queue.pop_front() {
                return Some(Ok(p));
            }
            if self.failed || self.engine.is_idle() {
                return None;
            }
            match self.engine.step() {
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Ok(events) => {
                    for ev in events {
                        match ev {
                            EngineEvent::Token { text, .. } => {
                                if !text.is_empty() {
                                    self.queue.push_back(text);
                                }
                            }
                            EngineEvent::Finished { text, output, .. } => {
                                if !text.is_empty() {
                                    self.queue.push_back(text);
                                }
                                self.output = Some(output);
                            }
                        }
                    }
                }
            }
        }
    }
}
