//! A quantized llama forward pass built for continuous batching.
//!
//! Same weights and math as candle-transformers' `quantized_llama` (GGUF tensor names
//! `blk.N.attn_q` …, interleaved RoPE because llama.cpp's converter permutes Q/K for it,
//! RMS-norm, SwiGLU MLP, tied output embedding), but the key/value state lives in a
//! [`SequenceCache`] per sequence instead of inside the model. That allows:
//!
//! * [`LlamaModel::prefill`]: run one new prompt (all its positions at once, causal mask) into
//!   that sequence's cache;
//! * [`LlamaModel::decode`]: one step for many sequences at *different* positions. Their new
//!   tokens' hidden states are stacked into one `[B, hidden]` matrix, so every projection and
//!   MLP matmul reads the weights once for the whole batch (decode is memory-bound: that is
//!   where batching pays); attention runs per sequence against its own cache, with RoPE at its
//!   own position.
//!
//! Rows of a matmul do not interact, and attention is per sequence, so a sequence's logits do
//! not depend on what else is in the batch (a test checks token-for-token equality).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::error::{GenerateError, Result};
use super::gguf::{GgufFile, LlamaConfig};
use super::kv_cache::SequenceCache;

/// How the weight matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// As stored in the file (Q8_0, Q4_1…). Q8_0 weights run our kernel, which dequantizes
    /// them in registers and keeps the activations f32: the logits of an fp32 run to ~3e-5.
    /// Other types run candle's kernels, which quantize the activations to 8 bits inside each
    /// matmul, so their logits differ from an fp32 run by up to ~1.
    #[default]
    Quantized,
    /// Dequantized to f32 at load (about 4× the memory, slower): numerically the same model
    /// that transformers runs from the GGUF, for every weight type; used to check the forward
    /// pass against it.
    DequantizedF32,
}

/// Which CPU kernel multiplies activations by Q8_0 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuMatmul {
    /// Our kernel with f32 activations (see `q8_f32`) for every Q8_0 weight: each weight is
    /// dequantized in registers to the f32 transformers holds, so logits agree with
    /// transformers on the same file to about 3e-5, and a result is the same bit for bit on
    /// every CPU and at every batch size. candle's matmul for other weight types.
    #[default]
    Auto,
    /// Always candle's `QMatMul`, which quantizes the activations to 8 bits (the baseline our
    /// kernel is measured against).
    Candle,
}

/// One projection `y = x · Wᵀ`.
#[derive(Debug, Clone)]
enum Linear {
    Candle(QMatMul),
    F32Activations(super::q8_f32::Q8F32Matmul),
}

impl Linear {
    fn new(
        t: Arc<QTensor>,
        precision: WeightPrecision,
        kernel: CpuMatmul,
        device: &Device,
    ) -> Result<Self> {
        match Self::weight_stationary(&t, precision, kernel) {
            Some(l) => Ok(l),
            None => Ok(Self::Candle(matmul_weight(t, precision, device)?)),
        }
    }

    /// Our kernel for `t`, if chosen and able to run it (a Q8_0 weight on the CPU).
    fn weight_stationary(
        t: &Arc<QTensor>,
        precision: WeightPrecision,
        kernel: CpuMatmul,
    ) -> Option<Self> {
        if !Self::ours_may_run(t, precision, kernel) {
            return None;
        }
        super::q8_f32::Q8F32Matmul::try_new(t).map(Self::F32Activations)
    }

    /// Whether our kernel is chosen for `t` and can take it (checked without repacking it).
    fn ours_may_run(t: &QTensor, precision: WeightPrecision, kernel: CpuMatmul) -> bool {
        precision == WeightPrecision::Quantized
            && kernel == CpuMatmul::Auto
            && !candle_forced()
            && t.dtype() == candle_core::quantized::GgmlDType::Q8_0
            && t.device().is_cpu()
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(q) => Ok(q.forward(x)?),
            Self::F32Activations(q) => Ok(x.contiguous()?.apply_op1_no_bwd(q)?),
        }
    }
}

/// Projections of one input: `[q, k, v]` or `[gate, up]`. Where our kernel runs all of them,
/// their weights are stacked into one matrix at load, so the weights are walked in one pass;
/// each row's result is what its own matrix gives, bit for bit (rows do not depend on each
/// other), so only the split of the output differs.
#[derive(Debug, Clone)]
enum Projections {
    /// One matrix; output columns `0..n[0]`, `n[0]..n[0] + n[1]`, … per projection.
    Stacked { w: Linear, n: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    fn new(
        parts: Vec<Arc<QTensor>>,
        precision: WeightPrecision,
        kernel: CpuMatmul,
        device: &Device,
    ) -> Result<Self> {
        if let Some(stacked) = Self::stacked(&parts, precision, kernel) {
            return Ok(stacked);
        }
        let parts = parts
            .into_iter()
            .map(|t| Linear::new(t, precision, kernel, device))
            .collect::<Result<_>>()?;
        Ok(Self::Separate(parts))
    }

    /// The parts stacked into one matrix, if our kernel runs each of them (Q8_0 parts of one
    /// row length).
    fn stacked(parts: &[Arc<QTensor>], precision: WeightPrecision, kernel: CpuMatmul) -> Option<Self> {
        let mut n = Vec::with_capacity(parts.len());
        let mut bytes = Vec::new();
        let mut k0 = None;
        for t in parts {
            let (rows, k) = t.shape().dims2().ok()?;
            if *k0.get_or_insert(k) != k || !Linear::ours_may_run(t, precision, kernel) {
                return None;
            }
            n.push(rows);
            bytes.extend_from_slice(&t.data().ok()?);
        }
        let total = n.iter().sum();
        let w = super::q8_f32::Q8F32Matmul::from_rows(&bytes, total, k0?)?;
        Some(Self::Stacked { w: Linear::F32Activations(w), n })
    }

    /// Each projection of `x`, in order, contiguous.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Stacked { w, n } => {
                let y = w.forward(x)?;
                let last = y.rank() - 1;
                let mut at = 0;
                let mut out = Vec::with_capacity(n.len());
                for &len in n {
                    out.push(y.narrow(last, at, len)?.contiguous()?);
                    at += len;
                }
                Ok(out)
            }
            Self::Separate(ws) => ws.iter().map(|w| w.forward(x)).collect(),
        }
    }
}

/// `[a, b, c]` from a vector of three projections.
fn three(v: Vec<Tensor>) -> Result<(Tensor, Tensor, Tensor)> {
    match <[Tensor; 3]>::try_from(v) {
        Ok([a, b, c]) => Ok((a, b, c)),
        Err(v) => Err(GenerateError::InvalidConfig(format!("{} projections, 3 expected", v.len()))),
    }
}

struct Layer {
    attn_norm: Tensor,
    /// q, k, v.
    wqkv: Projections,
    wo: Linear,
    ffn_norm: Tensor,
    /// gate, up.
    w_gate_up: Projections,
    w_down: Linear,
}

/// Model weights plus RoPE tables; immutable after load, so it can be shared across threads.
pub struct LlamaModel {
    cfg: LlamaConfig,
    embed: QMatMul,
    output: Linear,
    norm: Tensor,
    layers: Vec<Layer>,
    /// `[max_positions, head_dim / 2]` each.
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
    device: Device,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("cfg", &self.cfg)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn matmul_weight(t: Arc<QTensor>, precision: WeightPrecision, device: &Device) -> Result<QMatMul> {
    Ok(match precision {
        WeightPrecision::Quantized => QMatMul::from_arc(t)?,
        WeightPrecision::DequantizedF32 => QMatMul::Tensor(t.dequantize(device)?),
    })
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, w, eps as f32)?)
}

impl LlamaModel {
    /// Loads every tensor of a llama GGUF onto `device`. `max_positions` caps the context
    /// (RoPE tables are built for that many positions); `None` uses the model's own length.
    pub(crate) fn load(
        f: &mut GgufFile,
        precision: WeightPrecision,
        kernel: CpuMatmul,
        max_positions: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(f)?;
        let max_positions = max_positions
            .unwrap_or(cfg.context_length)
            .min(cfg.context_length);
        if max_positions < 2 {
            return Err(GenerateError::InvalidConfig(format!(
                "context of {max_positions} positions"
            )));
        }
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let kv = cfg.n_kv_head * hd;
        let embed_t = Arc::new(f.tensor("token_embd.weight", &[cfg.vocab, h], device)?);
        let embed = matmul_weight(Arc::clone(&embed_t), precision, device)?;
        let output = if f.has_tensor("output.weight") {
            Linear::new(
                Arc::new(f.tensor("output.weight", &[cfg.vocab, h], device)?),
                precision,
                kernel,
                device,
            )?
        } else {
            // Tied embeddings (SmolLM2): the output projection is the embedding matrix
            // (a shared handle, not a second copy).
            Linear::weight_stationary(&embed_t, precision, kernel)
                .unwrap_or_else(|| Linear::Candle(embed.clone()))
        };
        let norm = f
            .tensor("output_norm.weight", &[h], device)?
            .dequantize(device)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let mut t = |name: &str, shape: &[usize]| -> Result<Arc<QTensor>> {
                Ok(Arc::new(f.tensor(&format!("blk.{i}.{name}.weight"), shape, device)?))
            };
            let wqkv = vec![t("attn_q", &[h, h])?, t("attn_k", &[kv, h])?, t("attn_v", &[kv, h])?];
            let wqkv = Projections::new(wqkv, precision, kernel, device)?;
            let wo = Linear::new(t("attn_output", &[h, h])?, precision, kernel, device)?;
            let w_gate_up = vec![t("ffn_gate", &[cfg.ffn_hidden, h])?, t("ffn_up", &[cfg.ffn_hidden, h])?];
            let w_gate_up = Projections::new(w_gate_up, precision, kernel, device)?;
            let w_down = Linear::new(t("ffn_down", &[h, cfg.ffn_hidden])?, precision, kernel, device)?;
            let attn_norm = f
                .tensor(&format!("blk.{i}.attn_norm.weight"), &[h], device)?
                .dequantize(device)?;
            let ffn_norm = f
                .tensor(&format!("blk.{i}.ffn_norm.weight"), &[h], device)?
                .dequantize(device)?;
            layers.push(Layer {
                attn_norm,
                wqkv,
                wo,
                ffn_norm,
                w_gate_up,
                w_down,
            });
        }
        let (cos, sin) = rope_tables(hd, cfg.rope_theta, max_positions, device)?;
        Ok(Self {
            cfg,
            embed,
            output,
            norm,
            layers,
            cos,
            sin,
            max_positions,
            device: device.clone(),
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Positions a sequence may span (prompt plus generated tokens).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh cache with room for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<SequenceCache> {
        SequenceCache::new(
            self.cfg.n_layer,
            self.cfg.n_kv_head,
            self.cfg.head_dim,
            capacity.min(self.max_positions),
            &self.device,
        )
    }

    fn check_room(&self, cache: &SequenceCache, t: usize) -> Result<()> {
        if cache.len() + t > self.max_positions {
            return Err(GenerateError::PromptTooLong {
                prompt_tokens: cache.len() + t,
                context: self.max_positions,
            });
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            Some(&id) => Err(GenerateError::InvalidToken {
                id,
                vocab: self.cfg.vocab,
            }),
            None => Ok(()),
        }
    }

    fn mlp(&self, l: &Layer, x: &Tensor) -> Result<Tensor> {
        let h = rms_norm(x, &l.ffn_norm, self.cfg.rms_eps)?;
        let (gate, up) = match <[Tensor; 2]>::try_from(l.w_gate_up.forward(&h)?) {
            Ok([gate, up]) => (gate.silu()?, up),
            Err(v) => {
                return Err(GenerateError::InvalidConfig(format!(
                    "{} projections, 2 expected",
                    v.len()
                )))
            }
        };
        Ok(l.w_down.forward(&(gate * up)?)?)
    }

    /// Attention of `q` (`[n_head, t, head_dim]`, already rotated) against a sequence's whole
    /// history `k`, `v` (`[n_kv_head, s, head_dim]`). Query heads are grouped by the KV head
    /// they share, so no key/value copy per query head is needed. Returns `[t, hidden]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let c = &self.cfg;
        let rep = c.n_head / c.n_kv_head;
        let t = q.dim(1)?;
        let s = k.dim(1)?;
        let q = q.reshape((c.n_kv_head, rep * t, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            Some(m) => att
                .reshape((c.n_kv_head, rep, t, s))?
                .broadcast_add(m)?
                .reshape((c.n_kv_head, rep * t, s))?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(v)?; // [n_kv_head, rep * t, head_dim]
        let y = y
            .reshape((c.n_head, t, c.head_dim))?
            .transpose(0, 1)?
            .contiguous()?;
        Ok(y.reshape((t, c.hidden))?)
    }

    /// Runs `tokens` (a prompt, or a chunk of one) through the model for one sequence,
    /// appending to its cache, and returns the logits after the last token (`[vocab]`).
    pub fn prefill(&self, cache: &mut SequenceCache, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        if t == 0 {
            return Err(GenerateError::EmptyPrompt);
        }
        self.check_ids(tokens)?;
        self.check_room(cache, t)?;
        cache.reserve(t)?;
        let c = &self.cfg;
        let p0 = cache.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.embedding(&ids)?; // [t, hidden]
        let cos = self.cos.narrow(0, p0, t)?;
        let sin = self.sin.narrow(0, p0, t)?;
        let mask = if t > 1 {
            Some(causal_mask(t, p0, &self.device)?)
        } else {
            None
        };
        for (li, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, c.rms_eps)?;
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((1, t, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = three(l.wqkv.forward(&h)?)?;
            let q = heads(q, c.n_head)?;
            let k = heads(k, c.n_kv_head)?;
            let v = heads(v, c.n_kv_head)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?.squeeze(0)?;
            let v = v.squeeze(0)?;
            let (k_all, v_all) = cache.write_layer(li, &k, &v)?;
            let y = self.attend(&q, &k_all, &v_all, mask.as_ref())?;
            x = (x + l.wo.forward(&y)?)?;
            x = (&x + self.mlp(l, &x)?)?;
        }
        cache.advance(t);
        let last = x.narrow(0, t - 1, 1)?;
        let last = rms_norm(&last, &self.norm, c.rms_eps)?;
        Ok(self.output.forward(&last)?.squeeze(0)?)
    }

    /// One decoding step for a batch: `batch[i]` feeds one token to its own sequence, at that
    /// sequence's current position. Returns logits `[batch.len(), vocab]`, row `i` for
    /// sequence `i`.
    pub fn decode(&self, batch: &mut [(&mut SequenceCache, u32)]) -> Result<Tensor> {
        let b = batch.len();
        if b == 0 {
            return Ok(Tensor::zeros(
                (0, self.cfg.vocab),
                DType::F32,
                &self.device,
            )?);
        }
        let c = &self.cfg;
        let mut ids = Vec::with_capacity(b);
        let mut positions = Vec::with_capacity(b);
        for (cache, tok) in batch.iter_mut() {
            self.check_room(cache, 1)?;
            cache.reserve(1)?;
            ids.push(*tok);
            positions.push(
                u32::try_from(cache.len())
                    .map_err(|_| GenerateError::InvalidConfig("position overflow".into()))?,
            );
        }
        self.check_ids(&ids)?;
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        let half = c.head_dim / 2;
        // Each row's own position: [B, 1, head_dim / 2], the batched form rope_i accepts.
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, half))?;
        let mut x = self.embed.embedding(&ids)?; // [B, hidden]
        for (li, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, c.rms_eps)?;
            let (q, k, v) = three(l.wqkv.forward(&h)?)?;
            let q = q.reshape((b, c.n_head, 1, c.head_dim))?;
            let k = k.reshape((b, c.n_kv_head, 1, c.head_dim))?;
            let v = v.reshape((b, c.n_kv_head, 1, c.head_dim))?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let mut ys = Vec::with_capacity(b);
            for (i, (cache, _)) in batch.iter_mut().enumerate() {
                let (k_all, v_all) = cache.write_layer(li, &k.get(i)?, &v.get(i)?)?;
                ys.push(self.attend(&q.get(i)?, &k_all, &v_all, None)?);
            }
            let y = Tensor::cat(&ys, 0)?; // [B, hidden]
            x = (x + l.wo.forward(&y)?)?;
            x = (&x + self.mlp(l, &x)?)?;
        }
        for (cache, _) in batch.iter_mut() {
            cache.advance(1);
        }
        let x = rms_norm(&x, &self.norm, c.rms_eps)?;
        Ok(self.output.forward(&x)?)
    }
}

/// RoPE angle tables, computed in f64 then stored as f32: `theta_i = base^(-2i/d)`.
fn rope_tables(
    head_dim: usize,
    base: f32,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(base).powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (positions, half), device)?,
        Tensor::from_vec(sin, (positions, half), device)?,
    ))
}

/// Additive causal mask `[t, p0 + t]`: 0 where query `i` (at position `p0 + i`) may look,
/// -inf at later positions.
fn causal_mask(t: usize, p0: usize, device: &Device) -> Result<Tensor> {
    let s = p0 + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > p0 + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}

/// `VCOS_CPU_MATMUL=candle` keeps candle's own matmul for every quantized weight, whatever
/// [`CpuMatmul`] says: for a kernel suspected of a fault, without a rebuild. Outputs then depend
/// on the CPU (candle quantizes some activations differently with and without VNNI).
fn candle_forced() -> bool {
    std::env::var("VCOS_CPU_MATMUL").as_deref() == Ok("candle")
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn q8(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Arc<QTensor> {
        let v: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let t = Tensor::from_vec(v, (n, k), &Device::Cpu).expect("tensor");
        Arc::new(QTensor::quantize(&t, GgmlDType::Q8_0).expect("quantize"))
    }

    /// Stacked projections give each projection's own result bit for bit, for one row
    /// (decode of one sequence) and several (prefill, batched decode); where our kernel cannot
    /// run, they stay separate.
    #[test]
    fn stacked_projections_equal_separate_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let k = 96;
        let parts = vec![q8(&mut rng, 40, k), q8(&mut rng, 8, k), q8(&mut rng, 8, k)];
        let q = WeightPrecision::Quantized;
        let stacked = Projections::new(parts.clone(), q, CpuMatmul::Auto, &Device::Cpu).expect("new");
        assert!(matches!(stacked, Projections::Stacked { .. }), "Q8_0 parts of one row length stack on every CPU");
        let separate: Vec<Linear> = parts
            .iter()
            .map(|t| Linear::new(Arc::clone(t), q, CpuMatmul::Auto, &Device::Cpu).expect("linear"))
            .collect();
        for m in [1, 3, 8, 48] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let x = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
            let got = stacked.forward(&x).expect("stacked");
            assert_eq!(got.len(), 3);
            for (g, w) in got.iter().zip(&separate) {
                let want = w.forward(&x).expect("separate");
                assert_eq!(g.dims(), want.dims());
                let (g, want): (Vec<f32>, Vec<f32>) = (
                    g.flatten_all().and_then(|t| t.to_vec1()).expect("g"),
                    want.flatten_all().and_then(|t| t.to_vec1()).expect("w"),
                );
                assert!(
                    g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "m={m}"
                );
            }
        }
        let candle = Projections::new(parts, q, CpuMatmul::Candle, &Device::Cpu).expect("new");
        assert!(matches!(candle, Projections::Separate(ref v) if v.len() == 3));
    }
}
