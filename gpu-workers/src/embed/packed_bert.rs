//! BERT over a batch of texts without padding in its dense layers.
//!
//! A batch padded to its longest text spends the padding's share of every matrix product on
//! nothing: with `vcos bench inference`'s sentences (12 to 18 tokens), batches of 32 in the
//! order they come were 17 % padding, while sentence-transformers sorts a whole `encode` call
//! by length first (3 % padding). Here every text's tokens are packed one after another into
//! one matrix of `tokens × hidden`: the embeddings, the projections, the feed-forward layers and
//! the layer norms run on real tokens only. Attention, the one step that mixes tokens of a
//! text, gathers each text's rows into a padded `texts × longest` layout (padding masked, as in
//! BERT), and scatters the result back; it is a small part of the work for short texts. The
//! query, key and value projections run as one fused product.
//!
//! Same weights, same operations per real token as candle-transformers' `BertModel` (erf GELU,
//! the extended attention mask, layer norms at the config's epsilon); results equal to float
//! rounding, checked against sentence-transformers by the embedding reference test.

use candle_core::{Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

/// The encoder: embeddings and transformer layers (the pooler is not used: sentence
/// embeddings are a mean over tokens).
pub(crate) struct PackedBert {
    words: Embedding,
    positions: Embedding,
    /// Token type 0's embedding (every text is one segment).
    segment: Tensor,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    device: Device,
}

struct Layer {
    /// Query, key and value in one `hidden → 3 × hidden` projection.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    up: Dense,
    down: Dense,
    output_norm: LayerNorm,
}

/// A dense layer whose weight is kept transposed (`in × out`, row-major): the matrix product
/// reads it as it lies. Kept as PyTorch stores it (`out × in`) and transposed per call, the
/// CPU GEMM repacked the whole weight on every call: at batch 1 (one text of ~14 tokens)
/// that packing cost as much as the product itself (`perf`, `vcos bench inference`).
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// From PyTorch's `out × in` weight and its bias.
    fn new(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self { weight: weight.t()?.contiguous()?, bias })
    }

    fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::new(&vb.get((outputs, inputs), "weight")?, vb.get(outputs, "bias")?)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// Where each text's tokens lie in the packed matrix.
pub(crate) struct Packing {
    /// Tokens per text.
    pub(crate) lengths: Vec<usize>,
}

impl Packing {
    fn total(&self) -> usize {
        self.lengths.iter().sum()
    }

    fn longest(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }
}

impl PackedBert {
    /// Loads the encoder's weights (`embeddings.*`, `encoder.layer.N.*`, with or without a
    /// `bert.` prefix).
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") { vb } else { vb.pp("bert") };
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!("unsupported hidden_act {:?}: this encoder implements BERT's erf GELU", config.hidden_act);
        }
        if config.num_attention_heads == 0 || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!("hidden_size {} is not a multiple of {} heads", config.hidden_size, config.num_attention_heads);
        }
        let hidden = config.hidden_size;
        let e = vb.pp("embeddings");
        let words = embedding(config.vocab_size, hidden, e.pp("word_embeddings"))?;
        let positions = embedding(config.max_position_embeddings, hidden, e.pp("position_embeddings"))?;
        let segment = e.pp("token_type_embeddings").get((config.type_vocab_size, hidden), "weight")?.get(0)?;
        let norm = layer_norm(hidden, config.layer_norm_eps, e.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let projection = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
                    let p = a.pp("self").pp(name);
                    Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
                };
                let (q, k, v) = (projection("query")?, projection("key")?, projection("value")?);
                let qkv = Dense::new(&Tensor::cat(&[&q.0, &k.0, &v.0], 0)?, Tensor::cat(&[&q.1, &k.1, &v.1], 0)?)?;
                Ok(Layer {
                    qkv,
                    attention_out: Dense::load(hidden, hidden, a.pp("output").pp("dense"))?,
                    attention_norm: layer_norm(hidden, config.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
                    up: Dense::load(hidden, config.intermediate_size, l.pp("intermediate").pp("dense"))?,
                    down: Dense::load(config.intermediate_size, hidden, l.pp("output").pp("dense"))?,
                    output_norm: layer_norm(hidden, config.layer_norm_eps, l.pp("output").pp("LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let heads = config.num_attention_heads;
        Ok(Self { words, positions, segment, norm, layers, heads, head_dim: hidden / heads, hidden, device: vb.device().clone() })
    }

    /// The last hidden state of every token, packed (`total tokens × hidden`), for the texts
    /// whose token ids are `ids` (concatenated) and whose lengths are `packing.lengths`.
    pub(crate) fn forward(&self, ids: &[u32], packing: &Packing) -> candle_core::Result<Tensor> {
        let total = packing.total();
        if ids.len() != total {
            candle_core::bail!("{} token ids for texts of {total} tokens", ids.len());
        }
        let positions: Vec<u32> = packing.lengths.iter().flat_map(|&n| 0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
        let ids = Tensor::from_slice(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let x = self.words.forward(&ids)?.add(&self.positions.forward(&positions)?)?.broadcast_add(&self.segment)?;
        let mut x = self.norm.forward(&x)?;
        let layout = AttentionLayout::new(packing, &self.device)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &layout)?;
        }
        Ok(x)
    }

    fn layer(&self, layer: &Layer, x: &Tensor, layout: &AttentionLayout) -> candle_core::Result<Tensor> {
        let qkv = layer.qkv.forward(x)?;
        let context = self.attention(&qkv, layout)?;
        let x = layer.attention_norm.forward(&layer.attention_out.forward(&context)?.add(x)?)?;
        let up = super::gelu::gelu_erf(&layer.up.forward(&x)?)?;
        layer.output_norm.forward(&layer.down.forward(&up)?.add(&x)?)
    }

    /// Self-attention of each text over its own tokens: packed `qkv` (`total × 3·hidden`) to
    /// packed context (`total × hidden`).
    fn attention(&self, qkv: &Tensor, layout: &AttentionLayout) -> candle_core::Result<Tensor> {
        let (texts, longest, heads, head_dim) = (layout.texts, layout.longest, self.heads, self.head_dim);
        let padded = match &layout.padding {
            // One zero row at the end stands for every padding slot.
            Some(padding) => {
                let zero = Tensor::zeros((1, 3 * self.hidden), qkv.dtype(), &self.device)?;
                Tensor::cat(&[qkv, &zero], 0)?.index_select(&padding.gather, 0)?
            }
            None => qkv.clone(),
        };
        let padded = padded.reshape((texts, longest, 3, heads, head_dim))?;
        let part = |i: usize| padded.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match &layout.padding {
            Some(padding) => scores.broadcast_add(&padding.mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((texts * longest, self.hidden))?;
        match &layout.padding {
            Some(padding) => context.index_select(&padding.scatter, 0),
            None => Ok(context),
        }
    }

}

/// Mean of each text's token states (`texts × hidden`), from the packed states: one product
/// with a `texts × tokens` matrix of `1 / length` over each text's rows (sentence-transformers'
/// `Pooling(mean)` over the attention mask).
pub(crate) fn mean_pool(states: &Tensor, packing: &Packing) -> candle_core::Result<Tensor> {
    let total = packing.total();
    let mut weights = vec![0f32; packing.lengths.len() * total];
    let mut start = 0;
    for (text, &n) in packing.lengths.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let w = 1.0 / n.max(1) as f32;
        weights[text * total + start..text * total + start + n].fill(w);
        start += n;
    }
    Tensor::from_vec(weights, (packing.lengths.len(), total), states.device())?.matmul(states)
}

/// How the packed rows map onto the padded `texts × longest` layout of attention.
struct AttentionLayout {
    texts: usize,
    longest: usize,
    /// `None` when every text has the longest length (one text, say): the packed rows are
    /// the padded layout already.
    padding: Option<Padding>,
}

/// Index maps between the packed rows and the padded layout, and the mask.
struct Padding {
    /// For each padded slot, its packed row (or the zero row past the end for padding).
    gather: Tensor,
    /// For each packed row, its padded slot.
    scatter: Tensor,
    /// `texts × 1 × 1 × longest`: 0 for tokens, the dtype's minimum for padding (BERT's
    /// extended attention mask).
    mask: Tensor,
}

impl AttentionLayout {
    fn new(packing: &Packing, device: &Device) -> candle_core::Result<Self> {
        let (texts, longest, total) = (packing.lengths.len(), packing.longest(), packing.total());
        if total == texts * longest {
            return Ok(Self { texts, longest, padding: None });
        }
        let to_u32 = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut gather = Vec::with_capacity(texts * longest);
        let mut scatter = Vec::with_capacity(total);
        let mut mask = Vec::with_capacity(texts * longest);
        let mut start = 0;
        for (text, &n) in packing.lengths.iter().enumerate() {
            for slot in 0..longest {
                gather.push(if slot < n { to_u32(start + slot) } else { to_u32(total) });
                mask.push(if slot < n { 0f32 } else { f32::MIN });
            }
            scatter.extend((0..n).map(|slot| to_u32(text * longest + slot)));
            start += n;
        }
        let padding = Padding {
            gather: Tensor::from_vec(gather, texts * longest, device)?,
            scatter: Tensor::from_vec(scatter, total, device)?,
            mask: Tensor::from_vec(mask, (texts, 1, 1, longest), device)?,
        };
        Ok(Self { texts, longest, padding: Some(padding) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_maps_packed_rows_to_padded_slots_and_back() {
        let layout = AttentionLayout::new(&Packing { lengths: vec![2, 3, 1] }, &Device::Cpu).unwrap();
        let layout = layout.padding.expect("texts of different lengths are padded");
        assert_eq!(layout.gather.to_vec1::<u32>().unwrap(), vec![0, 1, 6, 2, 3, 4, 5, 6, 6]);
        assert_eq!(layout.scatter.to_vec1::<u32>().unwrap(), vec![0, 1, 3, 4, 5, 6]);
        let mask = layout.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(mask.iter().filter(|m| **m == 0.0).count(), 6);
        let same = AttentionLayout::new(&Packing { lengths: vec![3, 3] }, &Device::Cpu).unwrap();
        assert!(same.padding.is_none(), "texts of one length need no padding");
    }

    #[test]
    fn the_mean_of_a_text_is_over_its_own_rows() {
        let states = Tensor::new(&[[1f32, 2.], [3., 4.], [100., 100.]], &Device::Cpu).unwrap();
        let pooled = mean_pool(&states, &Packing { lengths: vec![2, 1] }).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![2., 3.], vec![100., 100.]]);
    }
}
