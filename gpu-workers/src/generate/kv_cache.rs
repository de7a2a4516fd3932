//! One sequence's key/value cache: what lets a sequence join, leave or pause the running batch
//! without touching anyone else's state.
//!
//! candle's `ModelWeights` keeps a single cache inside the model, so it can serve one
//! conversation at a time. Here every sequence owns its cache, and the model's forward passes
//! take the caches they should read and extend. Buffers are preallocated for the sequence's
//! whole budget (prompt + max new tokens), so appending a token is an in-place copy, not a
//! re-concatenation of everything so far.

use candle_core::{DType, Device, Tensor};

use super::error::Result;

/// Keys and values of one layer, `[n_kv_head, capacity, head_dim]` each.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Per-sequence cache over all layers.
#[derive(Debug, Clone)]
pub struct SequenceCache {
    layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    n_kv_head: usize,
    head_dim: usize,
}

impl SequenceCache {
    /// An empty cache with room for `capacity` positions.
    pub(crate) fn new(
        n_layer: usize,
        n_kv_head: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Result<Self> {
        let capacity = capacity.max(1);
        let mut layers = Vec::with_capacity(n_layer);
        for _ in 0..n_layer {
            layers.push(LayerCache {
                k: Tensor::zeros((n_kv_head, capacity, head_dim), DType::F32, device)?,
                v: Tensor::zeros((n_kv_head, capacity, head_dim), DType::F32, device)?,
            });
        }
        Ok(Self {
            layers,
            len: 0,
            capacity,
            n_kv_head,
            head_dim,
        })
    }

    /// Positions stored so far (also the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been stored yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `extra` more positions (doubling, so rare growth stays amortised).
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed.max(self.capacity * 2);
        for layer in &mut self.layers {
            for t in [&mut layer.k, &mut layer.v] {
                let pad = Tensor::zeros(
                    (self.n_kv_head, new_cap - self.capacity, self.head_dim),
                    DType::F32,
                    t.device(),
                )?;
                *t = Tensor::cat(&[&*t, &pad], 1)?;
            }
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `k`, `v` (`[n_kv_head, t, head_dim]`, contiguous) of layer `layer` at the current
    /// end, and returns views of the whole history including them. The sequence length only
    /// advances with [`SequenceCache::advance`], once every layer has been written.
    pub(crate) fn write_layer(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        let end = self.len + t;
        let lc = self
            .layers
            .get(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no cache for layer {layer}")))?;
        lc.k.slice_set(k, 1, self.len)?;
        lc.v.slice_set(v, 1, self.len)?;
        Ok((lc.k.narrow(1, 0, end)?, lc.v.narrow(1, 0, end)?))
    }

    /// Commits `t` positions written to every layer.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
