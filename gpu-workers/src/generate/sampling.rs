//! Choosing the next token from logits: greedy, temperature, nucleus (top-p), seeded.
//!
//! Each request owns its RNG (ChaCha8 seeded from the request's seed), so its output depends
//! only on its own prompt, parameters and seed — not on which other requests share the batch or
//! in which order the engine serves them.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::error::{GenerateError, Result};

/// How one request samples and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to at least
    /// this; 1.0 keeps all. Must lie in (0, 1].
    pub top_p: f64,
    /// Seed of this request's RNG (same seed, same prompt, same parameters: same text).
    pub seed: u64,
    /// Most tokens to generate (also capped by the context window).
    pub max_tokens: usize,
    /// Generation stops when the visible text contains any of these (matched on decoded text,
    /// so a stop string may span tokens; special tokens count only when they are not skipped).
    /// The stop string and anything after it are not returned.
    pub stop: Vec<String>,
    /// Leave control tokens (other than EOS, which always ends generation) out of the text.
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
            skip_special_tokens: true,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            ..Self::default()
        }
    }

    /// Rejects values outside their domain before any work is done.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(GenerateError::InvalidSampling {
                name: "temperature",
                reason: format!("{} is not a finite number >= 0", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(GenerateError::InvalidSampling {
                name: "top_p",
                reason: format!("{} is not in (0, 1]", self.top_p),
            });
        }
        if self.max_tokens == 0 {
            return Err(GenerateError::InvalidSampling {
                name: "max_tokens",
                reason: "must be at least 1".into(),
            });
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(GenerateError::InvalidSampling {
                name: "stop",
                reason: "stop sequences must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// Per-request sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: ChaCha8Rng,
    /// Scratch buffer of (token, probability), reused across steps.
    scratch: Vec<(u32, f64)>,
}

/// Index of the largest logit; the first one on ties (like `torch.argmax`). NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}

/// Highest probability first; ties by id, so the order (and so the draw) is deterministic.
fn by_probability(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Moves the nucleus (the most probable tokens whose mass first reaches `threshold`) to the
/// front of `probs`, sorted; returns its length and mass.
///
/// The nucleus is usually a few dozen tokens out of ~49k, and sorting the whole vocabulary
/// every step cost several milliseconds (a tenth of a decode step), so candidates are
/// selected in growing rounds (64, 512, … tokens) and only those are sorted. The order is
/// total, so the result is exactly that of a full sort.
fn nucleus(probs: &mut [(u32, f64)], threshold: f64) -> (usize, f64) {
    let n = probs.len();
    let mut k = n.min(64);
    loop {
        if k < n {
            probs.select_nth_unstable_by(k - 1, by_probability);
        }
        probs[..k].sort_unstable_by(by_probability);
        let mut acc = 0.0;
        for (i, &(_, p)) in probs[..k].iter().enumerate() {
            acc += p;
            if acc >= threshold {
                return (i + 1, acc);
            }
        }
        if k == n {
            return (n, acc);
        }
        k = (k * 8).min(n);
    }
}

impl Sampler {
    /// A sampler for validated `params`.
    pub fn new(params: &SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            temperature: params.temperature,
            top_p: params.top_p,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            scratch: Vec::new(),
        })
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        // Softmax in f64 over the tempered logits.
        self.scratch.clear();
        let mut sum = 0.0f64;
        for (i, &l) in logits.iter().enumerate() {
            let p = if l.is_nan() {
                0.0
            } else {
                ((f64::from(l) - f64::from(max)) / self.temperature).exp()
            };
            sum += p;
            self.scratch.push((u32::try_from(i).unwrap_or(u32::MAX), p));
        }
        if !(sum.is_finite() && sum > 0.0) {
            return argmax(logits);
        }
        let mut kept = self.scratch.len();
        if self.top_p < 1.0 {
            let threshold = self.top_p * sum;
            let (k, acc) = nucleus(&mut self.scratch, threshold);
            kept = k;
            sum = acc;
        }
        let target = self.rng.random::<f64>() * sum;
        let mut acc = 0.0;
        for &(id, p) in &self.scratch[..kept] {
            acc += p;
            if acc > target {
                return id;
            }
        }
        // Rounding left `target` just above the total: take the last kept token with mass.
        self.scratch[..kept]
            .iter()
            .rev()
            .find(|(_, p)| *p > 0.0)
            .map_or_else(|| argmax(logits), |(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_params() {
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            SamplingParams {
                temperature: f64::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(
                matches!(p.validate(), Err(GenerateError::InvalidSampling { .. })),
                "{p:?}"
            );
        }
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn nucleus_equals_full_sort() {
        let mut probs: Vec<(u32, f64)> = (0..5000u32)
            .map(|i| {
                (
                    i,
                    f64::from((i * 7919) % 1000) + if i % 3 == 0 { 0.0 } else { 0.5 },
                )
            })
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut full = probs.clone();
        full.sort_unstable_by(by_probability);
        for top_p in [1e-6, 0.01, 0.3, 0.9, 0.999, 1.0] {
            let (k, acc) = nucleus(&mut probs, top_p * total);
            let mut want_acc = 0.0;
            let mut want_k = full.len();
            for (i, p) in full.iter().enumerate() {
                want_acc += p.1;
                if want_acc >= top_p * total {
                    want_k = i + 1;
                    break;
                }
            }
            assert_eq!(k, want_k, "top_p {top_p}");
            assert_eq!(&probs[..k], &full[..k]);
            assert!((acc - want_acc).abs() < 1e-9 * total);
        }
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(&SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_deterministic_and_top_p_truncates() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32) * 0.1).collect();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&p), draw(&p));
        let other = SamplingParams {
            seed: 8,
            ..p.clone()
        };
        assert_ne!(draw(&p), draw(&other));
        // Tiny top_p keeps only the most likely token.
        let narrow = SamplingParams { top_p: 1e-9, ..p };
        assert!(draw(&narrow).iter().all(|&t| t == 49));
    }
}
