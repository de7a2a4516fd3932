//! Q8_0 weights times f32 activations: the matmul of the generation model's production path.
//!
//! Why: candle's quantized matmul (and our 8-bit kernel this one replaced, which reproduced it) quantizes
//! the activations to 8 bits before every product. That moves SmolLM2's logits by 0.3 to 0.6
//! against transformers on the same file, and it makes the model chaotic: each matmul
//! re-quantizes its input, so a change in the last bit of one sum moves an activation by a
//! whole quantization step. Summing candle's 8 f32 lanes in another order moved the first
//! logits by up to 1.4 and changed greedy answers ("Paris" became something else). Here the
//! activations stay f32: each weight is dequantized in registers to exactly the f32 that
//! transformers' dequantized copy holds (`f32(d) · f32(q)`), and multiplied with the f32
//! activation. The result is what transformers computes, up to the order of the f32 sums: the
//! logits agree to about 3e-5, as the f32-weight path does, at a quarter of its memory.
//!
//! Layout: the weight rows are repacked at load into groups of [`GROUP`] rows, interleaved so
//! that one vector holds the same column of 16 (or 8) rows: each output lane is one weight row,
//! no horizontal sums are needed, and a decode step of 8 sequences reuses every dequantized
//! weight vector 8 times from registers.
//!
//! Every output is one fused multiply-add chain over `k` in column order, on every path
//! (AVX-512, AVX2, portable), whatever the tile shape or the number of activation rows. So a
//! result is the same bit for bit on every CPU and does not depend on the other rows of the
//! batch: a sequence decodes to the same tokens alone or with others.
//!
//! `VCOS_Q8_AVX512=0` (read when a weight loads) keeps a CPU with AVX-512 on the AVX2 path:
//! to measure that path, with the same results.

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// Values per Q8_0 block.
const QK: usize = 32;
/// Bytes per Q8_0 block: f16 scale then 32 × i8.
const BLOCK_BYTES: usize = 34;
/// Weight rows per group: the unit of the repacked layout and of the parallel split.
pub(super) const GROUP: usize = 64;
/// Activation rows per register tile at most.
const TILE_COLS: usize = 8;
/// How far ahead (in blocks of one group) the first pass over a group prefetches.
const PREFETCH_BLOCKS: usize = 4;
/// Groups per parallel task at most (so that big matrices balance over the pool).
const TASK_GROUPS_MAX: usize = 4;

/// A Q8_0 weight `[n, k]` repacked for this kernel; `y = x · Wᵀ` as
/// [`candle_core::quantized::QMatMul`] does. Apply it with
/// [`candle_core::Tensor::apply_op1_no_bwd`].
#[derive(Debug, Clone)]
pub(super) struct Q8F32Matmul {
    n: usize,
    k: usize,
    /// Groups of [`GROUP`] rows (the last one padded with zero rows).
    groups: usize,
    /// `[group][block]`: the f16 scales of the group's rows (bits).
    scales: Vec<[u16; GROUP]>,
    /// `[group][block][column in block]`: the group's rows' quantized values at that column.
    qs: Vec<[i8; GROUP]>,
    isa: Isa,
}

/// The instruction set the tiles are compiled for, chosen once at load.
#[derive(Debug, Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    Portable,
}

impl Isa {
    #[cfg(test)]
    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512(_) => "AVX-512",
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(_) => "AVX2",
            Self::Portable => "portable",
        }
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("VCOS_Q8_AVX512").as_deref() != Ok("0") {
                if let Some(v4) = pulp::x86::V4::try_new() {
                    return Self::Avx512(v4);
                }
            }
            if let Some(v3) = pulp::x86::V3::try_new() {
                return Self::Avx2(v3);
            }
        }
        Self::Portable
    }
}

impl Q8F32Matmul {
    /// The kernel for `weight`: a 2-D Q8_0 tensor on the CPU whose rows are whole blocks.
    /// `None` otherwise (the caller keeps candle's matmul).
    pub(super) fn try_new(weight: &QTensor) -> Option<Self> {
        if weight.dtype() != GgmlDType::Q8_0 || !weight.device().is_cpu() {
            return None;
        }
        let (n, k) = weight.shape().dims2().ok()?;
        let bytes = weight.data().ok()?;
        Self::from_rows(&bytes, n, k)
    }

    /// The kernel for Q8_0 rows `[n, k]` given as their blocks' bytes, row after row.
    pub(super) fn from_rows(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if n == 0 || k == 0 || !k.is_multiple_of(QK) {
            return None;
        }
        let kb = k / QK;
        let (blocks, rest) = bytes.as_chunks::<BLOCK_BYTES>();
        if !rest.is_empty() || blocks.len() != n * kb {
            return None;
        }
        let groups = n.div_ceil(GROUP);
        let mut scales = vec![[0u16; GROUP]; groups * kb];
        let mut qs = vec![[0i8; GROUP]; groups * kb * QK];
        for (r, row) in blocks.chunks_exact(kb).enumerate() {
            let (g, lane) = (r / GROUP, r % GROUP);
            for (b, block) in row.iter().enumerate() {
                let gb = g * kb + b;
                scales[gb][lane] = u16::from_le_bytes([block[0], block[1]]);
                for (j, &q) in block[2..].iter().enumerate() {
                    qs[gb * QK + j][lane] = q as i8;
                }
            }
        }
        Some(Self {
            n,
            k,
            groups,
            scales,
            qs,
            isa: Isa::detect(),
        })
    }

    /// The same weights on every path this CPU can run (to check each against the others).
    #[cfg(test)]
    fn on_every_path(&self) -> Vec<Self> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            isas.extend(pulp::x86::V3::try_new().map(Isa::Avx2));
            isas.extend(pulp::x86::V4::try_new().map(Isa::Avx512));
        }
        isas.into_iter()
            .map(|isa| Self {
                isa,
                ..self.clone()
            })
            .collect()
    }

    /// `dst[i * n + r] = Σ_k x[i, k] · W[r, k]` for `m` rows of `x` (`m * k` values, row-major).
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || dst.len() != m * n {
            candle_core::bail!(
                "q8 f32 matmul: {} inputs, {} outputs for m={m} k={k} n={n}",
                x.len(),
                dst.len()
            );
        }
        let padded = self.groups * GROUP;
        if padded == n {
            self.run(x, m, dst);
        } else {
            let mut full = vec![0f32; m * padded];
            self.run(x, m, &mut full);
            for (d, f) in dst.chunks_exact_mut(n).zip(full.chunks_exact(padded)) {
                d.copy_from_slice(&f[..n]);
            }
        }
        Ok(())
    }

    /// `out` is `[m, groups · GROUP]`. Groups are split over the current rayon pool; each task
    /// gets its columns of every output row.
    fn run(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let width = self.groups * GROUP;
        let threads = rayon::current_num_threads().max(1);
        let per_task = self.groups.div_ceil(threads * 4).clamp(1, TASK_GROUPS_MAX);
        let tasks = self.groups.div_ceil(per_task);
        let mut columns: Vec<Vec<&mut [f32]>> = (0..tasks).map(|_| Vec::with_capacity(m)).collect();
        for row in out.chunks_exact_mut(width) {
            for (t, cols) in row.chunks_mut(per_task * GROUP).enumerate() {
                columns[t].push(cols);
            }
        }
        let kb = self.k / QK;
        columns
            .into_par_iter()
            .enumerate()
            .for_each(|(t, mut out)| {
                let g0 = t * per_task;
                let task = Task {
                    scales: &self.scales[g0 * kb..],
                    qs: &self.qs[g0 * kb * QK..],
                    kb,
                    x,
                    k: self.k,
                };
                let out = &mut out[..];
                match self.isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512(v4) => v4.vectorize(TaskOn { lanes: v4, task, out }),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2(v3) => v3.vectorize(TaskOn { lanes: v3, task, out }),
                    Isa::Portable => TaskOn {
                        lanes: Portable,
                        task,
                        out,
                    }
                    .run(),
                }
            });
    }
}

impl CustomOp1 for Q8F32Matmul {
    fn name(&self) -> &'static str {
        "q8-weights-f32-activations-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("q8 f32 matmul: f32 input expected, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q8 f32 matmul: input is not contiguous {layout:?}");
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.len() < 2 || dims.last() != Some(&self.k) {
            candle_core::bail!(
                "q8 f32 matmul: input {:?} against weight [{}, {}]",
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

/// One vector of f32 lanes on some instruction set: what the tiles are written against.
trait Lanes: Copy {
    type V: Copy;
    /// f32 values per vector.
    const N: usize;
    /// Accumulators a register tile may hold (the rest of the registers: weights, scales).
    const ACC: usize;
    fn zero(self) -> Self::V;
    /// `Self::N` f16 scales (bits) as f32.
    fn scales(self, h: &[u16]) -> Self::V;
    /// `Self::N` quantized values times their scales: the f32 weights transformers holds.
    fn weights(self, q: &[i8], d: Self::V) -> Self::V;
    /// `acc + w · x`, rounded once.
    fn fma(self, w: Self::V, x: f32, acc: Self::V) -> Self::V;
    fn store(self, v: Self::V, out: &mut [f32]);
    /// Asks for the cache line holding `line[0]` (a hint; no effect on results).
    fn prefetch(self, line: &[i8; GROUP]);
}

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V4 {
    type V = std::arch::x86_64::__m512;
    const N: usize = 16;
    const ACC: usize = 24;

    #[inline(always)]
    fn zero(self) -> Self::V {
        self.avx512f._mm512_setzero_ps()
    }

    #[inline(always)]
    fn scales(self, h: &[u16]) -> Self::V {
        let Ok(h) = <[u16; 16]>::try_from(h) else {
            unreachable!("16 scales per vector")
        };
        self.avx512f._mm512_cvtph_ps(pulp::cast(h))
    }

    #[inline(always)]
    fn weights(self, q: &[i8], d: Self::V) -> Self::V {
        let Ok(q) = <[i8; 16]>::try_from(q) else {
            unreachable!("16 values per vector")
        };
        let q = self.avx512f._mm512_cvtepi8_epi32(pulp::cast(q));
        self.avx512f
            ._mm512_mul_ps(self.avx512f._mm512_cvtepi32_ps(q), d)
    }

    #[inline(always)]
    fn fma(self, w: Self::V, x: f32, acc: Self::V) -> Self::V {
        self.avx512f
            ._mm512_fmadd_ps(w, self.avx512f._mm512_set1_ps(x), acc)
    }

    #[inline(always)]
    fn store(self, v: Self::V, out: &mut [f32]) {
        out.copy_from_slice(&pulp::cast::<_, [f32; 16]>(v));
    }

    #[inline(always)]
    fn prefetch(self, line: &[i8; GROUP]) {
        use std::arch::x86_64::_MM_HINT_T0;
        self.sse._mm_prefetch::<_MM_HINT_T0>(line.as_ptr());
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V3 {
    type V = std::arch::x86_64::__m256;
    const N: usize = 8;
    const ACC: usize = 12;

    #[inline(always)]
    fn zero(self) -> Self::V {
        self.avx._mm256_setzero_ps()
    }

    /// AVX2 has no f16 conversion (F16C is another feature), so lane by lane, exactly.
    #[inline(always)]
    fn scales(self, h: &[u16]) -> Self::V {
        let d: [f32; 8] = std::array::from_fn(|i| f16_to_f32(h[i]));
        pulp::cast(d)
    }

    #[inline(always)]
    fn weights(self, q: &[i8], d: Self::V) -> Self::V {
        let Ok(q) = <[i8; 8]>::try_from(q) else {
            unreachable!("8 values per vector")
        };
        let q = self
            .avx2
            ._mm256_cvtepi8_epi32(pulp::cast([q, [0; 8]]));
        self.avx._mm256_mul_ps(self.avx._mm256_cvtepi32_ps(q), d)
    }

    #[inline(always)]
    fn fma(self, w: Self::V, x: f32, acc: Self::V) -> Self::V {
        self.fma
            ._mm256_fmadd_ps(w, self.avx._mm256_set1_ps(x), acc)
    }

    #[inline(always)]
    fn store(self, v: Self::V, out: &mut [f32]) {
        out.copy_from_slice(&pulp::cast::<_, [f32; 8]>(v));
    }

    #[inline(always)]
    fn prefetch(self, line: &[i8; GROUP]) {
        use std::arch::x86_64::_MM_HINT_T0;
        self.sse._mm_prefetch::<_MM_HINT_T0>(line.as_ptr());
    }
}

/// Plain Rust, for CPUs without AVX2 (and to check the SIMD paths): the same operations,
/// lane by lane, with the same single rounding per multiply-add.
#[derive(Debug, Clone, Copy)]
struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const N: usize = 8;
    const ACC: usize = 12;

    fn zero(self) -> Self::V {
        [0.0; 8]
    }

    fn scales(self, h: &[u16]) -> Self::V {
        std::array::from_fn(|i| f16_to_f32(h[i]))
    }

    fn weights(self, q: &[i8], d: Self::V) -> Self::V {
        std::array::from_fn(|i| f32::from(q[i]) * d[i])
    }

    fn fma(self, w: Self::V, x: f32, acc: Self::V) -> Self::V {
        std::array::from_fn(|i| w[i].mul_add(x, acc[i]))
    }

    fn store(self, v: Self::V, out: &mut [f32]) {
        out.copy_from_slice(&v);
    }

    fn prefetch(self, _: &[i8; GROUP]) {}
}

/// One task's groups of weight rows, and the activations.
#[derive(Clone, Copy)]
struct Task<'a> {
    /// From the task's first group on.
    scales: &'a [[u16; GROUP]],
    qs: &'a [[i8; GROUP]],
    kb: usize,
    x: &'a [f32],
    k: usize,
}

struct TaskOn<'a, 'o, 'p, L> {
    lanes: L,
    task: Task<'a>,
    /// Per activation row, the task's columns (whole groups).
    out: &'p mut [&'o mut [f32]],
}

#[cfg(target_arch = "x86_64")]
impl<L: Lanes> pulp::NullaryFnOnce for TaskOn<'_, '_, '_, L> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.run();
    }
}

impl<L: Lanes> TaskOn<'_, '_, '_, L> {
    /// Register tiles: `Z` vectors of rows by `C` activation rows, `Z · C` accumulators (at
    /// most `L::ACC`: 24 of AVX-512's 32 registers, 12 of AVX2's 16). Few activation rows (decode) take many row vectors,
    /// so that enough independent multiply-add chains hide their latency.
    #[inline(always)]
    fn run(self) {
        let Self { lanes, task, out } = self;
        let m = out.len();
        let Some(first) = out.first() else { return };
        let groups = first.len() / GROUP;
        let per_group = GROUP / L::N;
        for g in 0..groups {
            let mut i = 0;
            while i < m {
                let c = TILE_COLS.min(m - i);
                // Vectors of the group per tile: as many as the accumulators allow.
                let z = (L::ACC / c).min(per_group);
                let mut z0 = 0;
                while z0 < per_group {
                    let zn = z.min(per_group - z0);
                    tile_dispatch(lanes, task, out, Place { g, z0, i0: i }, zn, c);
                    z0 += zn;
                }
                i += c;
            }
        }
    }
}

/// Monomorphized tiles for the shapes `run` asks for (`zn · c ≤ L::ACC`, `c ≤ 8`).
#[inline(always)]
fn tile_dispatch<L: Lanes>(lanes: L, task: Task, out: &mut [&mut [f32]], at: Place, zn: usize, c: usize) {
    let Place { g, z0, i0 } = at;
    macro_rules! pick {
        ($($z:literal, $c:literal);*) => {
            match (zn, c) {
                $(($z, $c) => tile::<L, $z, $c>(lanes, task, out, at),)*
                // Any other shape runs as single-vector tiles (the same chains, so the same bits).
                _ => {
                    for z in z0..z0 + zn {
                        for i in i0..i0 + c {
                            tile::<L, 1, 1>(lanes, task, out, Place { g, z0: z, i0: i });
                        }
                    }
                }
            }
        };
    }
    pick!(4, 1; 4, 2; 4, 3; 4, 4; 4, 5; 4, 6; 3, 7; 1, 7; 3, 8; 1, 8; 8, 1; 6, 2; 2, 2; 3, 4; 2, 4; 2, 5; 2, 6; 1, 1)
}

/// Where a register tile starts: group `g`, its vector `z0`, activation row `i0`.
#[derive(Clone, Copy)]
struct Place {
    g: usize,
    z0: usize,
    i0: usize,
}

/// Vectors `z0 .. z0 + Z` of group `g` against activation rows `i0 .. i0 + C`.
#[inline(always)]
fn tile<L: Lanes, const Z: usize, const C: usize>(lanes: L, task: Task, out: &mut [&mut [f32]], at: Place) {
    let Place { g, z0, i0 } = at;
    let Task {
        scales,
        qs,
        kb,
        x,
        k,
    } = task;
    let mut acc = [[lanes.zero(); C]; Z];
    for b in 0..kb {
        let sc = &scales[g * kb + b];
        let d: [L::V; Z] = std::array::from_fn(|z| {
            let at = (z0 + z) * L::N;
            lanes.scales(&sc[at..at + L::N])
        });
        let col = b * QK;
        let xs: [&[f32]; C] = std::array::from_fn(|c| {
            let at = (i0 + c) * k + col;
            &x[at..at + QK]
        });
        let qb = &qs[(g * kb + b) * QK..(g * kb + b + 1) * QK];
        // The first pass over a group streams it from memory, where the hardware prefetcher
        // alone left the tiles waiting: each step asks for one line of a block PREFETCH_BLOCKS
        // ahead (into the next group at the end of this one).
        let ahead = if z0 == 0 { qs.get((g * kb + b + PREFETCH_BLOCKS) * QK..(g * kb + b + PREFETCH_BLOCKS + 1) * QK) } else { None };
        for (j, q) in qb.iter().enumerate() {
            if let Some(ahead) = ahead {
                lanes.prefetch(&ahead[j]);
            }
            for z in 0..Z {
                let at = (z0 + z) * L::N;
                let w = lanes.weights(&q[at..at + L::N], d[z]);
                for c in 0..C {
                    acc[z][c] = lanes.fma(w, xs[c][j], acc[z][c]);
                }
            }
        }
    }
    for (z, acc) in acc.iter().enumerate() {
        let at = g * GROUP + (z0 + z) * L::N;
        for (c, &v) in acc.iter().enumerate() {
            lanes.store(v, &mut out[i0 + c][at..at + L::N]);
        }
    }
}

/// An f16 (bits) as f32, exactly (what `half` gives), inline and without calls (a call in the
/// block loop would make the compiler keep the accumulators in memory): the exponent and
/// mantissa bits moved into an f32 and rescaled by 2^112 (exact for normal and subnormal halves
/// alike), then the sign. Infinities and NaNs, which no valid Q8_0 scale holds, keep their
/// class (and NaN payload) by bit surgery.
#[inline(always)]
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    if magnitude >= 0x7c00 {
        return f32::from_bits(sign | 0x7f80_0000 | ((magnitude & 0x3ff) << 13));
    }
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(scaled.to_bits() | sign)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Values in [-1, 1) with a larger outlier every 97 (they set their block's scale).
    fn values(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len)
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

    /// Random Q8_0 weights `[n, k]` and their dequantized f32 values (transformers' copy).
    fn weights(seed: u64, n: usize, k: usize) -> (Arc<QTensor>, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w = Tensor::from_vec(values(&mut rng, n * k), (n, k), &Device::Cpu).expect("tensor");
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize"));
        let deq = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("dequantize");
        (q, deq)
    }

    fn apply(op: &Q8F32Matmul, x: &[f32], m: usize) -> Vec<f32> {
        let x = Tensor::from_slice(x, (m, op.k), &Device::Cpu).expect("x");
        let y = x.apply_op1_no_bwd(op).expect("matmul");
        assert_eq!(y.dims(), &[m, op.n]);
        y.flatten_all().and_then(|t| t.to_vec1()).expect("vec")
    }

    /// The chain every output is defined as: `acc = fma(f32(d) · f32(q), x, acc)` over `k`.
    fn chain(w: &[f32], x: &[f32]) -> f32 {
        w.iter().zip(x).fold(0f32, |acc, (&w, &x)| w.mul_add(x, acc))
    }

    /// Every path this CPU runs (portable, AVX2, AVX-512) computes each output as one fused
    /// multiply-add chain over the dequantized weights, in column order: equal bit for bit to
    /// that chain written out, for every tile shape (m = 1 to 17, 32, 48) and for row counts
    /// that leave a padded group (n = 100, 37) or several (n = 960).
    #[test]
    fn every_output_is_the_same_fma_chain_on_every_path() {
        for (seed, n, k) in [(1, 100, 576), (2, 37, 96), (3, 960, 64), (4, 192, 1536)] {
            let (q, w) = weights(seed, n, k);
            let paths = Q8F32Matmul::try_new(&q).expect("kernel").on_every_path();
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
            for m in (1..=17).chain([32, 48]) {
                let x = values(&mut rng, m * k);
                let want: Vec<f32> = (0..m)
                    .flat_map(|i| {
                        let x = &x[i * k..(i + 1) * k];
                        w.chunks_exact(k).map(move |w| chain(w, x))
                    })
                    .collect();
                for op in &paths {
                    let got = apply(op, &x, m);
                    for (idx, (a, c)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.to_bits(), c.to_bits(), "{} n={n} k={k} m={m} at {idx}: {a} vs {c}", op.isa.name());
                    }
                }
            }
        }
    }

    /// Against the exact dot product of transformers' f32 weights (in f64): within a few f32
    /// roundings of the sum of magnitudes. candle's 8-bit activations miss it by far more.
    #[test]
    fn matches_the_f32_weights_within_rounding() {
        let (n, k) = (64, 1536);
        let (q, w) = weights(7, n, k);
        let op = Q8F32Matmul::try_new(&q).expect("kernel");
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let m = 8;
        let x = values(&mut rng, m * k);
        let got = apply(&op, &x, m);
        let candle = Tensor::from_slice(&x, (m, k), &Device::Cpu)
            .and_then(|x| candle_core::quantized::QMatMul::from_arc(Arc::clone(&q)).and_then(|mm| candle_core::Module::forward(&mm, &x)))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle");
        let (mut ours_worst, mut candle_worst) = (0f64, 0f64);
        for i in 0..m {
            for r in 0..n {
                let (w, x) = (&w[r * k..(r + 1) * k], &x[i * k..(i + 1) * k]);
                let exact: f64 = w.iter().zip(x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let mag: f64 = w.iter().zip(x).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
                ours_worst = ours_worst.max((f64::from(got[i * n + r]) - exact).abs() / mag);
                candle_worst = candle_worst.max((f64::from(candle[i * n + r]) - exact).abs() / mag);
            }
        }
        eprintln!("relative error: ours {ours_worst:.2e}, candle (8-bit activations) {candle_worst:.2e}");
        assert!(ours_worst < 1e-6, "{ours_worst}");
        assert!(candle_worst > 10.0 * ours_worst);
    }

    /// The scale conversion gives `half`'s f32 for every f16 (normal, subnormal, zero,
    /// infinite), and a NaN for a NaN (`half` sets the quiet bit, which no valid scale needs).
    #[test]
    fn every_f16_scale_converts_exactly() {
        for h in 0..=u16::MAX {
            let (ours, by_half) = (f16_to_f32(h), half::f16::from_bits(h).to_f32());
            if by_half.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), by_half.to_bits(), "{h:#06x}");
            }
        }
    }

    /// Bad shapes are refused, not multiplied.
    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(Q8F32Matmul::from_rows(&[0; 34], 1, 31).is_none());
        assert!(Q8F32Matmul::from_rows(&[0; 33], 1, 32).is_none());
        assert!(Q8F32Matmul::from_rows(&[], 0, 32).is_none());
        let op = Q8F32Matmul::from_rows(&[0; 68], 2, 32).expect("2 rows of 1 block");
        let x = Tensor::zeros((3, 64), candle_core::DType::F32, &Device::Cpu).expect("x");
        assert!(x.apply_op1_no_bwd(&op).is_err(), "k = 64 against a weight of k = 32");
    }

    /// Per call, one thread, best of 30: this kernel against candle's (8-bit activations).
    /// `cargo test --release -p vcos-gpu-workers --lib q8_f32::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release with --ignored --nocapture"]
    #[cfg(target_arch = "x86_64")]
    fn speed() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        for (n, k) in [(576, 576), (960, 576), (3072, 576), (576, 1536), (49152, 576)] {
            let (q, _) = weights(9, n, k);
            let ours = Q8F32Matmul::try_new(&q).expect("kernel");
            let candle = candle_core::quantized::QMatMul::from_arc(Arc::clone(&q)).expect("qmatmul");
            let mut rng = ChaCha8Rng::seed_from_u64(10);
            for m in [1, 8, 32, 48] {
                let x = Tensor::from_vec(values(&mut rng, m * k), (m, k), &Device::Cpu).expect("x");
                let time = |f: &dyn Fn()| {
                    (0..30)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            f();
                            t.elapsed().as_micros()
                        })
                        .min()
                        .unwrap_or(0)
                };
                let ours_us = pool.install(|| time(&|| drop(x.apply_op1_no_bwd(&ours).expect("ours"))));
                let candle_us = pool.install(|| time(&|| drop(candle_core::Module::forward(&candle, &x).expect("candle"))));
                eprintln!(
                    "n={n} k={k} m={m}: ours {ours_us} us ({}), candle {candle_us} us; ours {:.1} GMAC/s",
                    ours.isa.name(),
                    (n * k * m) as f64 / ours_us.max(1) as f64 / 1e3
                );
            }
        }
    }
}
