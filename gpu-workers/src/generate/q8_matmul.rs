//! A weight-stationary Q8_0 matmul for the CPU, used for every Q8_0 projection of the
//! generation model when the CPU has AVX2 and FMA.
//!
//! Why: candle 0.11.1's quantized CPU matmul computes each (activation row, weight row) pair
//! as its own `vec_dot`, which reloads both blocks and converts both f16 scales every time, so
//! a decode step of `m` sequences costs nearly `m` steps of one (measured: 8 sequences ≈ 6×
//! one). Here one weight row is dotted with up to 8 activation rows while its blocks are in
//! registers and its scales are converted once, and the weight matrix streams from memory once
//! per step whatever `m` is. Rows are read in order (one sequential stream, which the hardware
//! prefetcher follows: interleaving 4 rows halved single-stream speed).
//!
//! Same numbers as candle: activations are quantized to Q8_0 with candle's rounding
//! (`amax / 127`, scale rounded to f16, `round(x / d)`), each block's integer dot product is
//! exact, each block is scaled and accumulated into 8 f32 lanes with the same fused
//! multiply-add, and the lanes are summed in the order of candle's `hsum_float_8`. So a result
//! equals candle's AVX2 `vec_dot_q8_0_q8_0` bit for bit (a test checks it); it does not
//! depend on `m` or on the other rows, so a sequence decodes to the same tokens alone or in a
//! batch.
//!
//! Two ways of quantizing the activations, chosen by the weight's shape, so that a model's
//! output does not depend on the CPU it runs on:
//! * [`Activations::Q8_0`], described above, where candle runs `vec_dot_q8_0_q8_0` on every x86
//!   CPU;
//! * [`Activations::Q8K`] for weights candle repacks on VNNI CPUs (`k` a multiple of 256, `n`
//!   of 16; SmolLM2's MLP down projection): there candle quantizes each 256 activations to
//!   Q8_K (`iscale = -127 / max`, `round(iscale · x)`, `d = 1 / iscale`), sums each 32-block
//!   exactly, and accumulates `fma(sum, d_w · d, acc)` block after block into one f32 per
//!   output, with no lane sum. On an AVX2-only CPU candle would run `vec_dot_q8_0_q8_0`
//!   instead, and the two roundings differ enough to change a greedy answer (SmolLM2 said
//!   "Paris" on VNNI CPUs and "L'Étoile, la Cité…" on AVX2-only ones). This mode reproduces the
//!   VNNI kernel's arithmetic bit for bit, so on a CPU without VNNI the model gives what it
//!   gives on one with it (where candle's faster kernel is kept, see [`candle_repacks`]).
//!
//! Where the CPU has AVX-512 VNNI, the Q8_0 tiles run on it instead (`super::q8_vnni`: the same
//! results bit for bit, 1.5–2× faster from 8 sequences up).
//!
//! Deliberate absences:
//! * no `unsafe` here: the AVX2 code goes through `pulp`'s runtime-checked [`V3`] token (its
//!   intrinsics are safe to call once the token exists) and loads blocks by value from the
//!   tensor's bytes; CPUs without AVX2 + FMA keep candle's kernel (see [`Q8Matmul::try_new`]).
//!   `pulp` has no VNNI, so `q8_vnni` makes the one `unsafe` call of the workspace.
//! * no copy of the weights: blocks are read in place from the [`QTensor`]'s bytes (34 bytes:
//!   f16 scale, 32 × i8), which candle's kernels and the embedding lookup also use.
//! * no VNNI path for the Q8_K shapes: where candle has a VNNI kernel (it repacks weights whose
//!   `k` is a multiple of 256) it is faster (its Q8_K arithmetic needs one f32 operation per
//!   block and output, where the Q8_0 `vec_dot` arithmetic needs 8 lanes) and is kept
//!   ([`candle_repacks`]).
//! * no reordering of the f32 accumulation, though summing each block exactly in i32 and
//!   reducing 8 pairs together made the kernel 1.4× faster at m = 8: the quantized forward
//!   pass is so sensitive to rounding (each activation is re-quantized, and a changed rounding
//!   moves it by a whole step) that even a different order of candle's final lane sum moved
//!   SmolLM2's first-token logits by up to 0.3 and flipped a greedy answer whose margin was
//!   0.014. Matching candle bit for bit keeps every output what it was.
//! * no threads of its own: the weight rows are split over the *current* rayon pool, which in
//!   the generation worker is its [`super::threads::ThreadBudget`] pool.

use std::arch::x86_64::__m256i;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use pulp::x86::V3;
use pulp::{cast, NullaryFnOnce};
use rayon::prelude::*;

use super::q8_vnni::{PairedActivations, Vnni512};

/// Values per Q8_0 block.
pub(super) const QK: usize = 32;
/// Values per Q8_K block (one activation scale).
const QK_K: usize = 256;
/// Weight rows per tile of candle's repacked kernel (`repack_x86::TILE_N`).
const REPACK_ROWS: usize = 16;
/// Bytes per Q8_0 block: f16 scale then 32 × i8.
pub(super) const BLOCK_BYTES: usize = 34;
/// Activation rows dotted with one weight row in registers.
const TILE_COLS: usize = 8;
/// Activation rows kept hot while a task walks its weight rows (bounds the quantized activations
/// read per weight tile to ~100 KB at k = 1536, within L2).
const PANEL_ROWS_MAX: usize = 64;
/// Weight rows per parallel task at most.
const TASK_ROWS_MAX: usize = 64;

const _: () = assert!(PANEL_ROWS_MAX.is_multiple_of(TILE_COLS));
const _: () = assert!(TILE_COLS == 8, "Task::call dispatches tiles of 1 to 8");

/// A Q8_0 weight matrix `[n, k]` multiplied from the right: `y = x · Wᵀ`, as
/// [`candle_core::quantized::QMatMul`] does. Apply it with [`candle_core::Tensor::apply_op1_no_bwd`].
#[derive(Debug, Clone)]
pub(super) struct Q8Matmul {
    weight: Arc<QTensor>,
    simd: V3,
    n: usize,
    k: usize,
    activations: Activations,
    /// The AVX-512 VNNI tiles, where the CPU has them (Q8_0 activations only; see `q8_vnni`).
    vnni: Option<Vnni512>,
}

/// How activations are quantized before the integer dot products (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activations {
    /// Q8_0 per 32 values, 8 f32 lanes summed at the end: candle's `vec_dot_q8_0_q8_0`.
    Q8_0,
    /// Q8_K per 256 values, one f32 accumulator per output: candle's repacked VNNI kernel.
    Q8K,
}

impl Activations {
    /// The quantization candle gives a Q8_0 weight `[n, k]` on a VNNI CPU.
    pub(super) fn for_shape(n: usize, k: usize) -> Self {
        if k.is_multiple_of(QK_K) && n.is_multiple_of(REPACK_ROWS) {
            Self::Q8K
        } else {
            Self::Q8_0
        }
    }
}

impl Q8Matmul {
    /// This kernel for `weight` if it can run it: a 2-D Q8_0 tensor on the CPU whose row length
    /// is a whole number of blocks, on a CPU with AVX2 and FMA. `None` otherwise (the caller
    /// keeps candle's matmul).
    pub(super) fn try_new(weight: Arc<QTensor>) -> Option<Self> {
        let simd = V3::try_new()?;
        if weight.dtype() != GgmlDType::Q8_0 || !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        if k == 0 || !k.is_multiple_of(QK) {
            return None;
        }
        let bytes = weight.data().ok()?;
        if bytes.len() != n * (k / QK) * BLOCK_BYTES {
            return None;
        }
        let activations = Activations::for_shape(n, k);
        let vnni = match activations {
            Activations::Q8_0 => Vnni512::try_new(),
            Activations::Q8K => None,
        };
        Some(Self {
            weight,
            simd,
            n,
            k,
            activations,
            vnni,
        })
    }

    /// The same kernel on the AVX2 tiles only (to check the VNNI tiles against them).
    #[cfg(test)]
    fn without_vnni(mut self) -> Self {
        self.vnni = None;
        self
    }

    /// `dst[i * n + r] = Σ_k x[i, k] · W[r, k]` for `m` rows of `x` (`m * k` values, row-major).
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = (self.n, self.k);
        let kb = k / QK;
        if x.len() != m * k || dst.len() != m * n {
            candle_core::bail!(
                "q8 matmul: {} inputs, {} outputs for m={m} k={k} n={n}",
                x.len(),
                dst.len()
            );
        }
        let bytes = self.weight.data()?;
        let (blocks, rest) = bytes.as_chunks::<BLOCK_BYTES>();
        if !rest.is_empty() || blocks.len() != n * kb {
            candle_core::bail!("q8 matmul: weight holds {} bytes", bytes.len());
        }
        let mut act = match self.activations {
            Activations::Q8_0 => self.simd.vectorize(|| QuantRows::q8_0(x, m, k)),
            Activations::Q8K => QuantRows::q8k(x, m, k),
        };
        if self.vnni.is_some() {
            act.paired = Some(PairedActivations::new(
                std::mem::take(&mut act.qs),
                &act.d,
                m,
            ));
        }
        if m == 1 {
            run(self.simd, self.vnni, blocks, kb, &act, dst);
        } else {
            // Tasks own whole weight rows, so they write `dst` transposed: [n, m].
            let mut dst_t = vec![0f32; n * m];
            run(self.simd, self.vnni, blocks, kb, &act, &mut dst_t);
            // In blocks of 64 weight rows: 64 × m values read from L1, m runs of 64 written
            // (row by row over all n, the writes would stride n floats apart: a TLB miss each
            // for the output projection).
            for (rb, block) in dst_t.chunks(64 * m).enumerate() {
                let r0 = rb * 64;
                for i in 0..m {
                    for (r, col) in block.chunks_exact(m).enumerate() {
                        dst[i * n + r0 + r] = col[i];
                    }
                }
            }
        }
        Ok(())
    }
}

impl CustomOp1 for Q8Matmul {
    fn name(&self) -> &'static str {
        "q8-weight-stationary-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("q8 matmul: f32 input expected, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q8 matmul: input is not contiguous {layout:?}");
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.len() < 2 || dims.last() != Some(&self.k) {
            candle_core::bail!(
                "q8 matmul: input {:?} against weight [{}, {}]",
                dims,
                self.n,
                self.k
            );
        }
        let x = &data[start..end];
        let m = x.len() / self.k;
        let mut dst = vec![0f32; m * self.n];
        self.matmul(x, m, &mut dst)?;
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(dst), Shape::from(dims)))
    }
}

/// Whether candle 0.11.1 multiplies a Q8_0 weight `[n, k]` with its own repacked VNNI kernel
/// on this CPU (`quantized::repack_x86::select`: AVX512-VNNI or AVX-VNNI, `k` a multiple of
/// 256, `n` of 16; its `MISTRALRS_FORCE_AVX2` switch turns that off). That kernel is faster than
/// ours at every batch size measured (the MLP down projection, k = 1536: 23 µs against 150 µs
/// at m = 1, 123 against 423 at m = 8), so the model keeps candle's matmul for those weights.
pub(super) fn candle_repacks(n: usize, k: usize) -> bool {
    let vnni = std::env::var("MISTRALRS_FORCE_AVX2").as_deref() != Ok("1")
        && ((std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni"))
            || (std::arch::is_x86_feature_detected!("avxvnni")
                && std::arch::is_x86_feature_detected!("avx2")));
    vnni && k.is_multiple_of(256) && n.is_multiple_of(16)
}

/// Activation rows quantized as candle does, split for the kernel: the signed values and the
/// scales, one per 32-block (a Q8_K scale repeated over its 8 blocks). Block major (`[b * m + i]` for block `b`
/// of row `i`), so a tile's blocks at one position are adjacent.
struct QuantRows {
    qs: Vec<[i8; QK]>,
    d: Vec<f32>,
    m: usize,
    activations: Activations,
    /// The VNNI tiles' layout (which then holds `qs`), when they run.
    paired: Option<PairedActivations>,
}

impl QuantRows {
    /// candle's `BlockQ8K::from_float`, row by row: per 256 values, `max` the value of largest
    /// magnitude (the first one), `iscale = -127 / max`, values `round(iscale · x)` clamped to
    /// i8, `d = 1 / iscale`; all zeros when `max` is 0. candle clamps to [-128, 127], but
    /// `|iscale · x| ≤ 127` up to a rounding that `round` absorbs, so no value reaches -128;
    /// clamping to ±127 says so (the kernel's `sign` could not negate -128).
    fn q8k(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / QK;
        let mut qs = vec![[0i8; QK]; m * kb];
        let mut d = vec![0f32; m * kb];
        for (i, row) in x.chunks_exact(k).enumerate() {
            for (sb, sblock) in row.chunks_exact(QK_K).enumerate() {
                let mut max = 0f32;
                let mut amax = 0f32;
                for &v in sblock {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let (iscale, scale) = if amax == 0.0 {
                    (0.0, 0.0)
                } else {
                    let iscale = -127f32 / max;
                    (iscale, 1.0 / iscale)
                };
                for (j, block) in sblock.chunks_exact(QK).enumerate() {
                    let b = sb * (QK_K / QK) + j;
                    qs[b * m + i] = std::array::from_fn(|l| {
                        (iscale * block[l]).round().clamp(-127.0, 127.0) as i8
                    });
                    d[b * m + i] = scale;
                }
            }
        }
        Self {
            qs,
            d,
            m,
            activations: Activations::Q8K,
            paired: None,
        }
    }

    /// candle's `BlockQ8_0::from_float`, row by row: `d = amax / 127`, values `round(x / d)`
    /// (through `1 / d`, rounding half away from zero), `d` stored as f16. Inlined into AVX2
    /// code, where `round` needs no libm call.
    #[inline(always)]
    fn q8_0(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / QK;
        let mut qs = vec![[0i8; QK]; m * kb];
        let mut d = vec![0f32; m * kb];
        for (i, row) in x.chunks_exact(k).enumerate() {
            for (b, block) in row.chunks_exact(QK).enumerate() {
                let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                let q: [i8; QK] = std::array::from_fn(|j| (block[j] * inv).round() as i8);
                qs[b * m + i] = q;
                d[b * m + i] = f16::from_f32(scale).to_f32();
            }
        }
        Self {
            qs,
            d,
            m,
            activations: Activations::Q8_0,
            paired: None,
        }
    }
}

/// Splits the weight rows over the current rayon pool; `out` is `[n, m]` (`[n]` when m = 1).
/// The VNNI tiles run where `vnni` is given and the activations have their layout.
fn run(
    simd: V3,
    vnni: Option<Vnni512>,
    blocks: &[[u8; BLOCK_BYTES]],
    kb: usize,
    act: &QuantRows,
    out: &mut [f32],
) {
    let m = act.m;
    let n = blocks.len() / kb;
    // Enough tasks to balance the pool (8 per thread), whole register tiles each.
    let threads = rayon::current_num_threads().max(1);
    let per_task = n.div_ceil(threads * 8).clamp(1, TASK_ROWS_MAX);
    out.par_chunks_mut(per_task * m)
        .enumerate()
        .for_each(|(t, out)| {
            let r0 = t * per_task;
            let rows = out.len() / m;
            let w = &blocks[r0 * kb..(r0 + rows) * kb];
            match (vnni, &act.paired) {
                (Some(vnni), Some(paired)) => vnni.rows(w, kb, paired, out),
                _ => simd.vectorize(Task {
                    simd,
                    w,
                    kb,
                    act,
                    out,
                }),
            }
        });
}

/// One task's weight rows against all activation rows, inside AVX2 code.
struct Task<'a> {
    simd: V3,
    w: &'a [[u8; BLOCK_BYTES]],
    kb: usize,
    act: &'a QuantRows,
    out: &'a mut [f32],
}

impl NullaryFnOnce for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Self {
            simd,
            w,
            kb,
            act,
            out,
        } = self;
        let m = act.m;
        // One weight row's scales as f32, when several tiles of activation rows reuse them.
        let mut wd = vec![0f32; kb];
        for (r, row) in w.chunks_exact(kb).enumerate() {
            let out = &mut out[r * m..(r + 1) * m];
            let tiles = m.div_ceil(TILE_COLS);
            if tiles > 1 {
                for (d, block) in wd.iter_mut().zip(row) {
                    *d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                }
            }
            for p0 in (0..m).step_by(PANEL_ROWS_MAX) {
                let p1 = m.min(p0 + PANEL_ROWS_MAX);
                let mut i = p0;
                while i < p1 {
                    let tc = TILE_COLS.min(p1 - i);
                    let t = Tile {
                        row,
                        wd: &wd,
                        i0: i,
                        act,
                    };
                    let out = &mut out[i..i + tc];
                    if act.activations == Activations::Q8K {
                        match tc {
                            8 => t.run_q8k::<8>(simd, out),
                            7 => t.run_q8k::<7>(simd, out),
                            6 => t.run_q8k::<6>(simd, out),
                            5 => t.run_q8k::<5>(simd, out),
                            4 => t.run_q8k::<4>(simd, out),
                            3 => t.run_q8k::<3>(simd, out),
                            2 => t.run_q8k::<2>(simd, out),
                            _ => t.run_q8k::<1>(simd, out),
                        }
                        i += tc;
                        continue;
                    }
                    // A single tile (m ≤ TILE_COLS, decode) converts each scale as it goes, so
                    // the row is read from memory once, by the compute loop.
                    match tc {
                        8 if tiles > 1 => t.run::<8, false>(simd, out),
                        8 => t.run::<8, true>(simd, out),
                        7 => t.run::<7, true>(simd, out),
                        6 => t.run::<6, true>(simd, out),
                        5 => t.run::<5, true>(simd, out),
                        4 => t.run::<4, true>(simd, out),
                        3 => t.run::<3, true>(simd, out),
                        2 => t.run::<2, true>(simd, out),
                        _ => t.run::<1, true>(simd, out),
                    }
                    i += tc;
                }
            }
        }
    }
}

/// One weight row against activation rows `i0..i0 + C`.
struct Tile<'a> {
    row: &'a [[u8; BLOCK_BYTES]],
    /// The row's scales as f32 (unused when the tile converts them itself).
    wd: &'a [f32],
    i0: usize,
    act: &'a QuantRows,
}

impl Tile<'_> {
    /// Writes `out[c]` for activation row `i0 + c`. `INLINE`: convert the weight scales in the
    /// block loop instead of reading `wd`.
    #[inline(always)]
    fn run<const C: usize, const INLINE: bool>(self, simd: V3, out: &mut [f32]) {
        let Self { row, wd, i0, act } = self;
        let m = act.m;
        let ones = simd.avx._mm256_set1_epi16(1);
        let zero = simd.avx._mm256_setzero_ps();
        let mut acc = [zero; C];
        for (b, block) in row.iter().enumerate() {
            let d_w = if INLINE {
                f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
            } else {
                wd[b]
            };
            let d_w = simd.avx._mm256_set1_ps(d_w);
            let mut q = [0u8; QK];
            q.copy_from_slice(&block[2..]);
            let wq: __m256i = cast(q);
            // |w| as unsigned bytes: -128 gives 0x80, read as 128 by `maddubs`.
            let w_abs = simd.avx2._mm256_abs_epi8(wq);
            // The tile's C activation blocks at position b (one bounds check each, not C).
            let at = b * m + i0..b * m + i0 + C;
            let (Ok(a_qs), Ok(a_d)) = (
                <&[[i8; QK]; C]>::try_from(&act.qs[at.clone()]),
                <&[f32; C]>::try_from(&act.d[at]),
            ) else {
                unreachable!("a range of C blocks converts to [_; C]");
            };
            for j in 0..C {
                // Σ |w| · (a · sign(w)) = Σ a · w, as candle's `vec_dot_q8_0_q8_0` computes it
                // (its `x` is the weight): 16 pair sums (≤ 2 · 128 · 127, no saturation), then
                // 8 sums of 4, exact in i32 for any weight byte, -128 included.
                let s = simd.avx2._mm256_sign_epi8(cast(a_qs[j]), wq);
                let p = simd.avx2._mm256_maddubs_epi16(w_abs, s);
                let sum = simd
                    .avx
                    ._mm256_cvtepi32_ps(simd.avx2._mm256_madd_epi16(ones, p));
                // The same f32 product as candle's scalar `d_w * d_a`, lane by lane.
                let d = simd.avx._mm256_mul_ps(d_w, simd.avx._mm256_set1_ps(a_d[j]));
                acc[j] = simd.fma._mm256_fmadd_ps(d, sum, acc[j]);
            }
        }
        for (o, v) in out.iter_mut().zip(acc) {
            *o = hsum(cast::<_, [f32; 8]>(v));
        }
    }
}

impl Tile<'_> {
    /// Writes `out[c]` for activation row `i0 + c` against Q8_K-quantized activations, with
    /// the arithmetic of candle's repacked VNNI kernel (`repack_x86::q8_0_tile2`): each
    /// 32-block's integer sum exact, then `acc = fma(sum, d_w · d_a, acc)` in one f32 per output,
    /// block after block. The sum is `Σ |w| · (a · sign(w))`, exact for any weight byte, -128
    /// included, since `|a| ≤ 127`.
    #[inline(always)]
    fn run_q8k<const C: usize>(self, simd: V3, out: &mut [f32]) {
        let Self { row, i0, act, .. } = self;
        let m = act.m;
        let ones = simd.avx._mm256_set1_epi16(1);
        // One f32 per activation row, lane j for row i0 + j (lanes past C stay 0).
        let mut acc = simd.avx._mm256_setzero_ps();
        let mut acc1 = 0f32;
        for (b, block) in row.iter().enumerate() {
            let d_w = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            let mut q = [0u8; QK];
            q.copy_from_slice(&block[2..]);
            let wq: __m256i = cast(q);
            let w_abs = simd.avx2._mm256_abs_epi8(wq);
            let at = b * m + i0..b * m + i0 + C;
            let (Ok(a_qs), Ok(a_d)) = (
                <&[[i8; QK]; C]>::try_from(&act.qs[at.clone()]),
                <&[f32; C]>::try_from(&act.d[at]),
            ) else {
                unreachable!("a range of C blocks converts to [_; C]");
            };
            // 8 partial i32 sums per activation row (pairs ≤ 2 · 128 · 127: no saturation).
            let partial = |j: usize| {
                let s = simd.avx2._mm256_sign_epi8(cast(a_qs[j]), wq);
                simd.avx2
                    ._mm256_madd_epi16(ones, simd.avx2._mm256_maddubs_epi16(w_abs, s))
            };
            if C == 1 {
                let sum: i32 = cast::<_, [i32; 8]>(partial(0)).iter().sum();
                // |sum| ≤ 32 · 128 · 127 < 2²⁴: exact in f32, as candle's `isum - 128 · bsum`.
                acc1 = (sum as f32).mul_add(d_w * a_d[0], acc1);
                continue;
            }
            let zero = simd.avx._mm256_setzero_si256();
            let v: [__m256i; 8] = std::array::from_fn(|j| if j < C { partial(j) } else { zero });
            let sums = transpose_sum(simd, v);
            let mut d = [0f32; 8];
            d[..C].copy_from_slice(a_d);
            // Lane by lane the same f32 product and fused multiply-add as candle's.
            let d = simd
                .avx
                ._mm256_mul_ps(simd.avx._mm256_set1_ps(d_w), cast(d));
            acc = simd
                .fma
                ._mm256_fmadd_ps(simd.avx._mm256_cvtepi32_ps(sums), d, acc);
        }
        if C == 1 {
            out[0] = acc1;
        } else {
            out.copy_from_slice(&cast::<_, [f32; 8]>(acc)[..C]);
        }
    }
}

/// Lane `j` of the result is the sum of the 8 lanes of `v[j]`, exactly (integers): pairs
/// summed by three rounds of `hadd` within each 128-bit half, then the halves added.
#[inline(always)]
fn transpose_sum(simd: V3, v: [__m256i; 8]) -> __m256i {
    let a = &simd.avx2;
    let h01 = a._mm256_hadd_epi32(v[0], v[1]);
    let h23 = a._mm256_hadd_epi32(v[2], v[3]);
    let h45 = a._mm256_hadd_epi32(v[4], v[5]);
    let h67 = a._mm256_hadd_epi32(v[6], v[7]);
    // Per half: rows 0..4 of g0 (and 4..8 of g1) in lane order.
    let g0 = a._mm256_hadd_epi32(h01, h23);
    let g1 = a._mm256_hadd_epi32(h45, h67);
    let lows = a._mm256_permute2x128_si256::<0x20>(g0, g1);
    let highs = a._mm256_permute2x128_si256::<0x31>(g0, g1);
    a._mm256_add_epi32(lows, highs)
}

/// An f16 (bits) as f32, exactly (what `half` gives), inline and without calls (a call in the
/// block loop would make the compiler keep the accumulators in memory): the exponent and
/// mantissa bits moved into an f32 and rescaled by 2^112 (exact for normal and subnormal halves
/// alike), then the sign. Infinities and NaNs, which no valid Q8_0 scale holds, keep their
/// class (and NaN payload) by bit surgery.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    if magnitude >= 0x7c00 {
        return f32::from_bits(sign | 0x7f80_0000 | ((magnitude & 0x3ff) << 13));
    }
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(scaled.to_bits() | sign)
}

/// The 8 lanes summed in the order of candle's `hsum_float_8` (high half onto low half, then
/// lanes 2, 3 onto 0, 1, then lane 1 onto 0).
#[inline(always)]
pub(super) fn hsum(v: [f32; 8]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// `rows × cols` values in [-1, 1) with a few larger outliers per row, as activations and
    /// weights have (they set each block's scale).
    fn values(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let v: f32 = rng.random_range(-1.0..1.0);
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    struct Case {
        ours: Q8Matmul,
        candle: QMatMul,
        w: Vec<f32>,
        n: usize,
        k: usize,
    }

    /// Random Q8_0 weights `[n, k]`; `None` (after a loud line) on a CPU without AVX2 + FMA.
    fn case(seed: u64, n: usize, k: usize) -> Option<Case> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = Tensor::from_vec(values(&mut rng, n, k), (n, k), &Device::Cpu).expect("tensor");
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize"));
        let w = q
            .dequantize(&Device::Cpu)
            .expect("dequantize")
            .flatten_all()
            .expect("flat");
        let Some(ours) = Q8Matmul::try_new(Arc::clone(&q)) else {
            eprintln!("\n!!!!!!!! SKIPPED: this CPU lacks AVX2 + FMA (candle's kernel is used) !!!!!!!!\n");
            return None;
        };
        Some(Case {
            ours,
            candle: QMatMul::from_arc(q).expect("qmatmul"),
            w: w.to_vec1().expect("vec"),
            n,
            k,
        })
    }

    fn run_both(c: &Case, x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::from_slice(x, (m, c.k), &Device::Cpu).expect("x");
        let ours = x.apply_op1_no_bwd(&c.ours).expect("ours");
        let candle = c.candle.forward(&x).expect("candle");
        assert_eq!(ours.dims(), &[m, c.n]);
        (
            ours.flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("ours vec"),
            candle
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("candle vec"),
        )
    }

    /// Where candle 0.11.1 runs its Q8_0 × Q8_0 `vec_dot` on every x86 CPU (`k` not a multiple of
    /// 256, or `n` not of 16: shapes its VNNI repacking never takes), both compute the same integer block
    /// sums, the same f32 fused multiply-adds per lane and the same lane sum: equal bit for bit.
    /// n = 130 and 37 leave partial register tiles (4 rows) on our side and partial quads on
    /// candle's.
    #[test]
    fn equals_candle_where_candle_runs_q8_0_dot() {
        for (seed, n, k) in [(1, 130, 576), (2, 37, 96)] {
            let Some(c) = case(seed, n, k) else { return };
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
            for m in [1, 3, 8, 32] {
                let x = values(&mut rng, m, k);
                let (ours, candle) = run_both(&c, &x, m);
                for (i, (a, b)) in ours.iter().zip(&candle).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "n={n} k={k} m={m}: row {} col {}: {a} vs {b}",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }

    /// A plain transcription of what candle 0.11.1 computes for a Q8_0 weight it repacks on a
    /// VNNI CPU: `BlockQ8K::from_float` for the activations, then per output `acc = fma(Σ w·a,
    /// d_w · d_a, acc)` over the 32-blocks in order (`repack_x86::q8_0_tile2`).
    fn candle_vnni_reference(c: &Case, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (c.n, c.k);
        let bytes = c.ours.weight.data().expect("bytes");
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let mut q = vec![0i32; k];
            let mut d = vec![0f32; k / QK_K];
            for (sb, xs) in xr.chunks_exact(QK_K).enumerate() {
                let (mut max, mut amax) = (0f32, 0f32);
                for &v in xs {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                if amax == 0.0 {
                    continue;
                }
                let iscale = -127f32 / max;
                for (j, &v) in xs.iter().enumerate() {
                    q[sb * QK_K + j] = (iscale * v).round().clamp(-128.0, 127.0) as i32;
                }
                d[sb] = 1.0 / iscale;
            }
            for r in 0..n {
                let mut acc = 0f32;
                for b in 0..k / QK {
                    let blk = &bytes[(r * (k / QK) + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                    let d_w = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let isum: i32 = (0..QK)
                        .map(|l| i32::from(blk[2 + l] as i8) * q[b * QK + l])
                        .sum();
                    acc = (isum as f32).mul_add(d_w * d[b * QK / QK_K], acc);
                }
                out[i * n + r] = acc;
            }
        }
        out
    }

    /// k = 1536, n = 64 (the shape class of the model's MLP down projection, k = 1536): the
    /// activations are quantized per 256 (Q8_K) and the result equals the transcription of
    /// candle's VNNI kernel bit for bit, on any CPU with AVX2; on a VNNI CPU it also equals
    /// candle's own `QMatMul` (which runs that kernel there).
    #[test]
    fn q8k_shapes_equal_candles_vnni_kernel() {
        let (n, k) = (64, 1536);
        let Some(c) = case(3, n, k) else { return };
        assert_eq!(c.ours.activations, Activations::Q8K);
        let vnni = candle_repacks(n, k);
        let mut rng = ChaCha8Rng::seed_from_u64(103);
        for m in [1, 3, 8, 9, 32] {
            let mut x = values(&mut rng, m, k);
            // A zero 256-block (scale 0) and a block whose extreme value is negative.
            x[256..512].fill(0.0);
            x[600] = -9.5;
            let want = candle_vnni_reference(&c, &x, m);
            let (ours, candle) = run_both(&c, &x, m);
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "m={m} [{}, {}]: {a} vs {b}",
                    i / n,
                    i % n
                );
            }
            if vnni {
                assert_eq!(ours, candle, "m={m}: against candle's VNNI kernel");
            }
        }
    }

    /// Both quantizations stay within their activation rounding of the exact product of the
    /// dequantized weights with the f32 activations: `Σ_j |w_j| · d_j / 2`, where `d_j` is the
    /// scale of the block holding `x_j` (its amax / 127, per 32 values for Q8_0, per 256 for
    /// Q8_K). Q8_0's scale is then rounded to f16 (relative error ≤ 2⁻¹¹) while the values were
    /// rounded with the unrounded one, which adds up to `127 · d_j · 2⁻¹¹` per value; Q8_K's is
    /// kept in f32. Plus f32 rounding, bounded generously by 1e-5 of `Σ |w_j x_j|`.
    #[test]
    fn within_activation_rounding_of_the_exact_product() {
        for (seed, n, k, block, rounding) in [
            (6, 64, 1536, QK_K, 0.5),
            (7, 40, 576, QK, 0.5 + 127.0 / 2048.0),
        ] {
            let Some(c) = case(seed, n, k) else { return };
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
            for m in [1, 8] {
                let x = values(&mut rng, m, k);
                let (ours, _) = run_both(&c, &x, m);
                for i in 0..m {
                    let xr = &x[i * k..(i + 1) * k];
                    for r in 0..n {
                        let wr = &c.w[r * k..(r + 1) * k];
                        let exact: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(&w, &x)| f64::from(w) * f64::from(x))
                            .sum();
                        let mag: f64 = wr
                            .iter()
                            .zip(xr)
                            .map(|(&w, &x)| f64::from((w * x).abs()))
                            .sum();
                        let bound: f64 = wr
                            .chunks_exact(block)
                            .zip(xr.chunks_exact(block))
                            .map(|(wb, xb)| {
                                let d =
                                    f64::from(xb.iter().fold(0f32, |a, v| a.max(v.abs()))) / 127.0;
                                wb.iter().map(|w| f64::from(w.abs())).sum::<f64>() * d * rounding
                            })
                            .sum();
                        let got = f64::from(ours[i * n + r]);
                        assert!(
                            (got - exact).abs() <= bound + 1e-5 * mag,
                            "k={k} m={m} row {i} col {r}: {got} vs exact {exact} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    /// Our inline f16 conversion equals `half`'s for every bit pattern (NaNs as NaNs).
    #[test]
    fn f16_conversion_is_exact() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got} vs {want}"
            );
        }
    }

    /// The AVX-512 VNNI tiles give the AVX2 tiles' results bit for bit: every register tile
    /// shape (1 to 8 activation rows, groups of 4 weight rows and the 1 to 3 left over), two
    /// panels of activation rows (m = 65), and rows of 3 and 18 blocks. Skipped, loudly, on a
    /// CPU without AVX-512 VNNI (where only the AVX2 tiles exist).
    #[test]
    fn vnni_tiles_equal_the_avx2_tiles_bit_for_bit() {
        for (seed, n, k) in [(8, 131, 576), (9, 6, 96), (10, 1, 96)] {
            let Some(c) = case(seed, n, k) else { return };
            if c.ours.vnni.is_none() {
                eprintln!("\n!!!!!!!! SKIPPED: this CPU lacks AVX-512 VNNI (the AVX2 tiles run) !!!!!!!!\n");
                return;
            }
            let avx2 = Case {
                ours: c.ours.clone().without_vnni(),
                candle: c.candle.clone(),
                w: Vec::new(),
                n,
                k,
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
            for m in (1..=17).chain([32, 48, 65]) {
                let mut x = values(&mut rng, m, k);
                // A block of zeros (scale 0) and one whose values all quantize to ±127.
                x[..QK].fill(0.0);
                x[QK..2 * QK]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = if j % 2 == 0 { 3.0 } else { -3.0 });
                let (vnni, _) = run_both(&c, &x, m);
                let (plain, _) = run_both(&avx2, &x, m);
                for (i, (a, b)) in vnni.iter().zip(&plain).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "n={n} k={k} m={m} [{}, {}]: {a} vs {b}",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }

    /// A Q8_0 weight holding -128, which quantizers never write but a file may: both tiles
    /// multiply it exactly, as candle does (its `abs` is taken of the weight, which `maddubs`
    /// reads as an unsigned 128). The AVX2 tile used to take `abs` of the activations and
    /// `sign` of the weight, which wraps -128; negative activations showed it.
    #[test]
    fn a_weight_holding_minus_128_is_multiplied_exactly() {
        let (n, k) = (8, 64);
        let Some(c) = case(11, n, k) else { return };
        let mut bytes = c.ours.weight.data().expect("bytes").into_owned();
        bytes[BLOCK_BYTES + 2 + 5] = 0x80;
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q8_0,
            &bytes,
            vec![n, k],
            &Device::Cpu,
        )
        .expect("qtensor");
        let q = Arc::new(q);
        let ours = Q8Matmul::try_new(Arc::clone(&q)).expect("AVX2 checked by case()");
        let candle = QMatMul::from_arc(q).expect("qmatmul");
        let mut rng = ChaCha8Rng::seed_from_u64(111);
        let x: Vec<f32> = values(&mut rng, 8, k)
            .into_iter()
            .map(|v| -v.abs())
            .collect();
        for ours in [ours.clone(), ours.without_vnni()] {
            let c = Case {
                ours,
                candle: candle.clone(),
                w: Vec::new(),
                n,
                k,
            };
            for m in [1, 8] {
                let (ours, candle) = run_both(&c, &x[..m * k], m);
                assert_eq!(ours, candle, "m={m}, VNNI tiles: {}", c.ours.vnni.is_some());
            }
        }
    }

    /// A row's result does not depend on the other rows in the batch (what lets a sequence
    /// decode to the same tokens alone and batched).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (70, 192);
        let Some(c) = case(4, n, k) else { return };
        let mut rng = ChaCha8Rng::seed_from_u64(104);
        let m = 33;
        let x = values(&mut rng, m, k);
        let (all, _) = run_both(&c, &x, m);
        for i in [0, 1, 16, 31, 32] {
            let (one, _) = run_both(&c, &x[i * k..(i + 1) * k], 1);
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    /// Time per call of ours (with the VNNI tiles where the CPU has them, and with the AVX2
    /// tiles only) and candle's on the model's projection shapes, on one thread as the
    /// generation worker runs by default (ignored; run in release: `cargo test --release -p
    /// vcos-gpu-workers --lib q8_matmul::tests::speed -- --ignored --nocapture`). Best of
    /// several calls, the three taking turns.
    #[test]
    #[ignore = "timing; run in release with --ignored"]
    fn speed() {
        let reps = 30;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        for (n, k) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
            let Some(c) = case(5, n, k) else { return };
            let avx2 = c.ours.clone().without_vnni();
            let mut rng = ChaCha8Rng::seed_from_u64(105);
            for m in [1, 8, 32, 48] {
                let x = Tensor::from_vec(values(&mut rng, m, k), (m, k), &Device::Cpu).expect("x");
                let mut best = [f64::INFINITY; 3];
                for _ in 0..reps {
                    let calls: [&(dyn Fn() -> Tensor + Sync); 3] = [
                        &|| x.apply_op1_no_bwd(&c.ours).expect("ours"),
                        &|| x.apply_op1_no_bwd(&avx2).expect("avx2"),
                        &|| c.candle.forward(&x).expect("candle"),
                    ];
                    for (b, f) in best.iter_mut().zip(calls) {
                        let t0 = std::time::Instant::now();
                        std::hint::black_box(pool.install(f));
                        *b = b.min(t0.elapsed().as_secs_f64() * 1e6);
                    }
                }
                let [ours, avx2, candle] = best;
                eprintln!(
                    "n={n} k={k} m={m}: ours {ours:.0} us ({}), AVX2 tiles {avx2:.0} us, candle {candle:.0} us; AVX2 / ours {:.2}x, candle / ours {:.2}x",
                    if c.ours.vnni.is_some() { "VNNI" } else { "AVX2" },
                    avx2 / ours,
                    candle / ours
                );
            }
        }
    }
}
