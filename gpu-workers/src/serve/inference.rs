//! [`Inference`]: the models a node serves, loaded from the model cache, each behind its pool.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::embed_pool::{EmbedBackend, EmbedOutput, EmbedPool, EmbedPoolConfig};
use super::driver::Driver;
use super::error::ServeError;
use super::gen_pool::{EngineBody, EngineRunner, GenPool, GenPoolConfig, GenTicket};
use vcos_actors::BoxFuture;
use crate::embed::{EmbedConfig, Embedder};
use crate::generate::{ChatMessage, DeviceChoice, EngineLimits, GeneratorConfig, Prompt, SamplingParams, TextGenerator};
use crate::models::{ModelCache, ModelId};

/// How a node runs its models.
#[derive(Debug, Clone)]
pub struct InferenceSettings {
    /// CPU threads of each model's own pool. One per worker is the safe choice on a machine
    /// shared with other actors (shared/models.md, "Threads").
    pub threads: NonZeroUsize,
    /// Embedding batching and bounds.
    pub embed: EmbedPoolConfig,
    /// Sequences decoding together, at most.
    pub max_batch: usize,
    /// Generation requests waiting to join the batch, at most.
    pub gen_queue: usize,
    /// Positions per sequence (prompt + output), at most: bounds KV-cache memory.
    pub max_context: usize,
    /// A model call running longer than this is given up and its worker replaced.
    pub hang_after: Duration,
    /// Where the models run (a GPU only in a build with the `cuda` feature; embeddings use GPU 0).
    pub device: DeviceChoice,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            threads: NonZeroUsize::MIN,
            embed: EmbedPoolConfig::default(),
            max_batch: 8,
            gen_queue: 256,
            max_context: 2_048,
            hang_after: Duration::from_secs(60),
            device: DeviceChoice::Cpu,
        }
    }
}

/// The embedding model behind an [`EmbedPool`].
struct EmbedderBackend {
    name: &'static str,
    embedder: Embedder,
}

impl EmbedBackend for EmbedderBackend {
    fn model(&self) -> &str {
        self.name
    }

    fn dim(&self) -> usize {
        self.embedder.dim()
    }

    fn max_batch(&self) -> usize {
        self.embedder.config().max_batch
    }

    fn check(&self, texts: &[String]) -> Result<(), String> {
        self.embedder.check_texts(texts).map_err(|e| e.to_string())
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<EmbedOutput, String>> {
        // Computed in the first poll, on the worker's own thread.
        Box::pin(async move {
            let (vectors, tokens) = self.embedder.embed_counted(texts).map_err(|e| e.to_string())?;
            Ok(EmbedOutput { vectors, tokens })
        })
    }
}

/// The generation model: its tokenizer (callers tokenize their prompts) and its pool.
pub struct Chat {
    name: &'static str,
    generator: Arc<TextGenerator>,
    pool: GenPool,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("model", &self.name).finish_non_exhaustive()
    }
}

impl Chat {
    /// The model's name.
    pub fn model(&self) -> &str {
        self.name
    }

    /// The pool (queue depth, running sequences).
    pub fn pool(&self) -> &GenPool {
        &self.pool
    }

    /// Positions per sequence, at most.
    pub fn context(&self) -> usize {
        self.generator.model().max_positions()
    }

    /// Starts generating a reply to `messages` (ChatML): the prompt's length in tokens, and the
    /// stream of its text.
    pub fn start(&self, messages: Vec<ChatMessage>, params: SamplingParams) -> Result<(usize, GenTicket), ServeError> {
        let prompt = self.generator.encode_prompt(&Prompt::Chat(messages)).map_err(|e| ServeError::Invalid(e.to_string()))?;
        let prompt_tokens = prompt.len();
        let context = self.context();
        if prompt_tokens >= context {
            return Err(ServeError::Invalid(format!(
                "the prompt is {prompt_tokens} tokens; the context holds {context}, with at least one left for the reply"
            )));
        }
        Ok((prompt_tokens, self.pool.submit(prompt, params)?))
    }
}

/// What a node serves.
#[derive(Debug, Default)]
pub struct Inference {
    embeddings: Option<EmbedPool>,
    chat: Option<Chat>,
}

impl Inference {
    /// Serves nothing (no model installed, or inference switched off).
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads every model `cache` holds and starts its worker. A model that is missing or does
    /// not load is left out, with a line in the returned notes saying why and what to do.
    pub fn load(cache: &ModelCache, settings: &InferenceSettings) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        let embeddings = match Self::load_embeddings(cache, settings) {
            Ok(pool) => Some(pool),
            Err(e) => {
                notes.push(format!("{}: not served ({e})", ModelId::MiniLmL6V2.name()));
                None
            }
        };
        let chat = match Self::load_chat(cache, settings) {
            Ok(chat) => Some(chat),
            Err(e) => {
                notes.push(format!("{}: not served ({e})", ModelId::SmolLm2_135mInstruct.name()));
                None
            }
        };
        (Self { embeddings, chat }, notes)
    }

    fn load_embeddings(cache: &ModelCache, settings: &InferenceSettings) -> Result<EmbedPool, String> {
        let device = match settings.device {
            DeviceChoice::Cpu => crate::embed::DeviceChoice::Cpu,
            DeviceChoice::CudaIfAvailable(_) => crate::embed::DeviceChoice::CudaIfAvailable,
        };
        let config = EmbedConfig { threads: settings.threads.get(), device, ..EmbedConfig::default() };
        let embedder = Embedder::from_cache(cache, config).map_err(|e| e.to_string())?;
        let backend = Arc::new(EmbedderBackend { name: ModelId::MiniLmL6V2.name(), embedder });
        EmbedPool::start(backend, settings.embed.clone()).map_err(|e| e.to_string())
    }

    fn load_chat(cache: &ModelCache, settings: &InferenceSettings) -> Result<Chat, String> {
        let files = cache.generation().map_err(|e| e.to_string())?;
        let config = GeneratorConfig {
            threads: settings.threads,
            device: settings.device,
            max_context: Some(settings.max_context),
            limits: EngineLimits { max_batch: settings.max_batch.max(1), ..EngineLimits::default() },
            ..GeneratorConfig::default()
        };
        let generator = Arc::new(TextGenerator::load(&files.gguf, config).map_err(|e| e.to_string())?);
        let name = ModelId::SmolLm2_135mInstruct.name();
        let engine_model = Arc::clone(&generator);
        let runner: EngineRunner = Arc::new(move |body: EngineBody| {
            let model = Arc::clone(&engine_model);
            Box::pin(async move {
                let mut engine = model.engine().map_err(|e| e.to_string())?;
                Ok(body(&mut engine).await)
            })
        });
        let context = Some(generator.model().max_positions());
        let config = GenPoolConfig { model: name.to_owned(), queue: settings.gen_queue, hang_after: settings.hang_after, context, driver: Driver::Threads };
        let pool = GenPool::start(config, runner)
            .map_err(|e| e.to_string())?;
        Ok(Chat { name, generator, pool })
    }

    /// The embedding model's pool, if served.
    pub fn embeddings(&self) -> Option<&EmbedPool> {
        self.embeddings.as_ref()
    }

    /// The generation model, if served.
    pub fn chat(&self) -> Option<&Chat> {
        self.chat.as_ref()
    }

    /// Names of the models served.
    pub fn models(&self) -> Vec<&str> {
        self.embeddings.iter().map(EmbedPool::model).chain(self.chat.iter().map(Chat::model)).collect()
    }
}
