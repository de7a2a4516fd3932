//! Continuous batching: requests join and leave the running batch between decoding steps.
//!
//! Each [`BatchEngine::step`] does, in order:
//! 1. admit waiting requests while fewer than `max_batch` are active (each gets its own
//!    [`SequenceCache`] sized for prompt + budget);
//! 2. advance the prompts still being read, at most [`PREFILLS_PER_STEP`] of them (oldest
//!    first), by one chunk of at most `prefill_chunk` tokens each (long prompts are split so they
//!    do not stall everyone else's decoding for long); a prompt that finishes yields its first
//!    token from the prefill logits;
//! 3. one batched decode step ([`LlamaModel::decode`]) for every sequence that was already
//!    generating, each at its own position.
//!
//! Sampling, stop strings and UTF-8 assembly are per request, so a request's output depends only
//! on itself (prompt, parameters, seed), never on its neighbours in the batch.

use std::collections::VecDeque;

use super::error::{GenerateError, Result};
use super::kv_cache::SequenceCache;
use super::model::LlamaModel;
use super::sampling::{Sampler, SamplingParams};
use super::stream::TextAssembler;
use super::threads::ThreadBudget;
use super::tokenizer::GgufTokenizer;

/// Output positions reserved in a new sequence's cache before it has to grow.
const INITIAL_OUTPUT_ROOM: usize = 256;

/// Identifies a request inside one engine.
pub type RequestId = u64;

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token (`<|im_end|>`).
    Eos,
    /// The text reached one of the request's stop strings.
    Stop,
    /// `max_tokens` were generated, or the context window is full.
    Length,
}

/// The complete result of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Tokens generated, in order, including the one that ended the request (EOS, or the
    /// token that completed a stop string).
    pub token_ids: Vec<u32>,
    /// Visible text (special tokens skipped if asked, stop string cut off).
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Length of the tokenized prompt.
    pub prompt_tokens: usize,
}

/// What a step produced for one request. Concatenating every `text` of a request, in order,
/// gives its final [`Generation::text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A token was sampled; `text` is what it made visible (may be empty: an incomplete UTF-8
    /// character, a possible stop-string prefix, a skipped special token).
    Token {
        /// The request.
        request: RequestId,
        /// The sampled token.
        token: u32,
        /// Newly visible text.
        text: String,
    },
    /// The request is finished and has left the batch.
    Finished {
        /// The request.
        request: RequestId,
        /// Last visible text released at the end (held-back stop prefix, incomplete bytes).
        text: String,
        /// The full result.
        output: Generation,
    },
}

/// Prompts advanced per step, at most. Prefilling every newly admitted prompt in one step made
/// each of them wait for all the others' prefills before its first token (`vcos bench
/// inference`: time to first token p50 4.8 s with 8 requests arriving together); one per step
/// lets the earliest start streaming while the later ones are read, and keeps the running
/// sequences decoding between prefills.
pub const PREFILLS_PER_STEP: usize = 1;

/// Limits of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Most prompt tokens read for one sequence in one step.
    pub prefill_chunk: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_batch: 8,
            prefill_chunk: 512,
        }
    }
}

struct Active {
    id: RequestId,
    cache: SequenceCache,
    /// Prompt tokens not yet read into the cache.
    prompt: Vec<u32>,
    prompt_read: usize,
    prompt_tokens: usize,
    sampler: Sampler,
    text: TextAssembler,
    generated: Vec<u32>,
    max_new: usize,
    skip_special: bool,
}

struct Waiting {
    id: RequestId,
    prompt: Vec<u32>,
    params: SamplingParams,
    max_new: usize,
}

/// A continuous-batching scheduler over one shared model.
pub struct BatchEngine<'m> {
    model: &'m LlamaModel,
    tokenizer: &'m GgufTokenizer,
    threads: Option<&'m ThreadBudget>,
    limits: EngineLimits,
    waiting: VecDeque<Waiting>,
    active: Vec<Active>,
    next_id: RequestId,
}

impl<'m> BatchEngine<'m> {
    /// An engine over `model`; `limits` are checked here. With `threads`, every step runs on
    /// that pool (see [`super::threads`]); without, on the caller's current rayon pool.
    pub fn new(
        model: &'m LlamaModel,
        tokenizer: &'m GgufTokenizer,
        threads: Option<&'m ThreadBudget>,
        limits: EngineLimits,
    ) -> Result<Self> {
        if limits.max_batch == 0 || limits.prefill_chunk == 0 {
            return Err(GenerateError::InvalidConfig(
                "max_batch and prefill_chunk must be at least 1".into(),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            threads,
            limits,
            waiting: VecDeque::new(),
            active: Vec::new(),
            next_id: 0,
        })
    }

    /// Queues a tokenized prompt. Everything a client can get wrong (parameters, prompt length)
    /// is rejected here, before any model work.
    pub fn submit_tokens(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestId> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let context = self.model.max_positions();
        if prompt.len() >= context {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context,
            });
        }
        let vocab = self.model.config().vocab;
        if let Some(&id) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(GenerateError::InvalidToken { id, vocab });
        }
        let max_new = params.max_tokens.min(context - prompt.len());
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiting {
            id,
            prompt,
            params,
            max_new,
        });
        Ok(id)
    }

    /// Drops a request, waiting or active; its cache is freed at once.
    pub fn cancel(&mut self, id: RequestId) -> Result<()> {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            return Ok(());
        }
        if let Some(i) = self.active.iter().position(|a| a.id == id) {
            self.active.remove(i);
            return Ok(());
        }
        Err(GenerateError::UnknownRequest(id))
    }

    /// Whether no request is waiting or active.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty()
    }

    /// Requests decoding or reading their prompt now.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Requests queued for a free batch slot.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Runs one scheduling step (see the module docs) and returns its events.
    ///
    /// Client mistakes are rejected by [`BatchEngine::submit_tokens`], so an error here is a
    /// backend failure; the step may then have been applied to some requests and not others,
    /// so the caller should fail every request of this engine and drop it.
    pub fn step(&mut self) -> Result<Vec<EngineEvent>> {
        match self.threads {
            Some(pool) => pool.run(|| self.step_here()),
            None => self.step_here(),
        }
    }

    fn step_here(&mut self) -> Result<Vec<EngineEvent>> {
        let mut events = Vec::new();
        while self.active.len() < self.limits.max_batch {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            let sampler = Sampler::new(&w.params)?;
            // Room for the prompt and the first tokens; the cache doubles when a long answer
            // needs more, so a large `max_tokens` does not reserve memory it may never use.
            let cache = self
                .model
                .new_cache(w.prompt.len() + w.max_new.min(INITIAL_OUTPUT_ROOM))?;
            self.active.push(Active {
                id: w.id,
                cache,
                prompt_tokens: w.prompt.len(),
                prompt: w.prompt,
                prompt_read: 0,
                sampler,
                text: TextAssembler::new(w.params.stop),
                generated: Vec::new(),
                max_new: w.max_new,
                skip_special: w.params.skip_special_tokens,
            });
        }

        // Sequences already generating at the start of the step take part in the decode.
        let decoding: Vec<bool> = self
            .active
            .iter()
            .map(|a| a.prompt_read == a.prompt.len())
            .collect();
        let mut finished = vec![false; self.active.len()];

        let mut prefilled = 0;
        for i in 0..self.active.len() {
            if decoding[i] {
                continue;
            }
            if prefilled == PREFILLS_PER_STEP {
                break;
            }
            prefilled += 1;
            let a = &mut self.active[i];
            let end = (a.prompt_read + self.limits.prefill_chunk).min(a.prompt.len());
            let logits = self
                .model
                .prefill(&mut a.cache, &a.prompt[a.prompt_read..end])?;
            a.prompt_read = end;
            if end == a.prompt.len() {
                a.prompt = Vec::new();
                a.prompt_read = 0;
                let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                let tok = a.sampler.sample(&logits);
                finished[i] = accept(a, tok, self.tokenizer, &mut events);
            }
        }

        let idx: Vec<usize> = (0..self.active.len()).filter(|&i| decoding[i]).collect();
        if !idx.is_empty() {
            let mut batch: Vec<(&mut SequenceCache, u32)> = Vec::with_capacity(idx.len());
            let mut k = 0;
            for (i, a) in self.active.iter_mut().enumerate() {
                if k < idx.len() && idx[k] == i {
                    let last = a.generated.last().copied().ok_or_else(|| {
                        GenerateError::InvalidConfig("decoding sequence without a token".into())
                    })?;
                    batch.push((&mut a.cache, last));
                    k += 1;
                }
            }
            let logits = self.model.decode(&mut batch)?;
            drop(batch);
            let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            for (row, &i) in rows.iter().zip(&idx) {
                let a = &mut self.active[i];
                let tok = a.sampler.sample(row);
                finished[i] = accept(a, tok, self.tokenizer, &mut events);
            }
        }

        // Finished requests leave; order of the rest is kept (admission order).
        let mut i = 0;
        self.active.retain(|_| {
            let keep = !finished[i];
            i += 1;
            keep
        });
        Ok(events)
    }

    /// Steps until every submitted request is done; returns the results in finishing order.
    pub fn run_to_completion(&mut self) -> Result<Vec<(RequestId, Generation)>> {
        let mut done = Vec::new();
        while !self.is_idle() {
            for ev in self.step()? {
                if let EngineEvent::Finished {
                    request, output, ..
                } = ev
                {
                    done.push((request, output));
                }
            }
        }
        Ok(done)
    }
}

/// Records a sampled token for `a`, emits its events, and says whether `a` is finished.
fn accept(
    a: &mut Active,
    tok: u32,
    tokenizer: &GgufTokenizer,
    events: &mut Vec<EngineEvent>,
) -> bool {
    a.generated.push(tok);
    let finish = if tok == tokenizer.eos_id() {
        events.push(EngineEvent::Token {
            request: a.id,
            token: tok,
            text: String::new(),
        });
        Some(FinishReason::Eos)
    } else {
        let bytes = if a.skip_special && tokenizer.is_special(tok) {
            &[][..]
        } else {
            tokenizer.token_bytes(tok)
        };
        let out = a.text.push(bytes);
        events.push(EngineEvent::Token {
            request: a.id,
            token: tok,
            text: out.piece,
        });
        if out.stopped {
            Some(FinishReason::Stop)
        } else if a.generated.len() >= a.max_new {
            Some(FinishReason::Length)
        } else {
            None
        }
    };
    match finish {
        None => false,
        Some(reason) => {
            let tail = a.text.finish();
            events.push(EngineEvent::Finished {
                request: a.id,
                text: tail,
                output: Generation {
                    token_ids: std::mem::take(&mut a.generated),
                    text: a.text.text().to_string(),
                    finish: reason,
                    prompt_tokens: a.prompt_tokens,
                },
            });
            true
        }
    }
}
