//! The weight-stationary Q8_0 tiles of [`super::q8_matmul`] on AVX-512 VNNI, where the CPU has
//! it: the same results bit for bit, 1.5–2× faster from 8 sequences up.
//!
//! Why: at 8 sequences a decode step is bound by the kernel's arithmetic, not by streaming the
//! weights. The AVX2 tile spends six instructions per (32-value block, sequence): `sign`,
//! `maddubs`, `madd`, the int → f32 conversion, the scale product and the fused multiply-add.
//! Here one `vpdpbusd` replaces the first three, and one 512-bit register carries two
//! sequences, so a pair of sequences costs four instructions per block. A register tile is 4
//! weight rows by 8 sequences, so each activation load serves 4 rows: with one row a tile,
//! prefill (48 activation rows) re-read them from L2 for every weight row and gained nothing.
//!
//! Same numbers as the AVX2 tile (and so as candle's `vec_dot_q8_0_q8_0`):
//! * `vpdpbusd` multiplies unsigned by signed bytes, so the weights are offset to `w + 128`
//!   (one `xor` per block, shared by every sequence) and the activations stay signed: each i32
//!   lane gets `Σ (w + 128) · a` over its 4 bytes. The accumulator starts at `-128 · Σ a` over the
//!   same 4 bytes (computed once per step, with the quantization: [`PairedActivations`]), so the
//!   lane ends at `Σ w · a`, exactly the lane `madd(maddubs(|w|, sign(a, w)))` gives: the same 4
//!   bytes per lane, exact integers (no saturation: `vpdpbusd` does not saturate and every sum
//!   is below 2²⁰).
//! * Lanes 0–7 of a register are one sequence's 8 f32 accumulators, lanes 8–15 the next one's;
//!   each lane takes `fma(d_w · d_a, f32(sum), acc)` block after block, the same operations in the
//!   same order as candle's 8 lanes, and the lanes are summed by candle's `hsum_float_8` order.
//! * Any weight byte, -128 included, is multiplied exactly (`-128 ^ 0x80` is 0, i.e. `w + 128`),
//!   as candle's `abs(w)`, `sign(a, w)` does.
//!
//! `unsafe`: the workspace denies it, and this module allows it for one call. Intrinsics are
//! safe inside a function compiled for their features; a call into such a function from
//! ordinary code is not, since the CPU might lack them. [`Vnni512::try_new`] checks the CPU
//! once, and the one `unsafe` call is made through a value only it creates. `pulp` (which the
//! AVX2 tile goes through, without `unsafe`) has no VNNI.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512i, _mm256_cvtepi32_ps, _mm256_dpbusd_epi32, _mm256_fmadd_ps, _mm256_mul_ps,
    _mm256_set1_epi16, _mm256_set1_epi8, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_xor_si256,
    _mm512_broadcast_i64x4, _mm512_castps512_ps256, _mm512_cvtepi32_ps, _mm512_cvtph_ps,
    _mm512_dpbusd_epi32, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_setzero_ps, _mm_prefetch,
    _MM_HINT_T0,
};

use pulp::cast;

use super::q8_matmul::{hsum, BLOCK_BYTES, QK};

/// Activation rows per register tile: 4 pairs of sequences.
const TILE: usize = 8;
/// Weight rows per register tile: each activation load serves this many rows, and the tile
/// keeps `ROWS · TILE / 2` = 16 of the 32 registers as accumulators. Prefill (48 rows of
/// activations) read them from L2 once per weight row with one row a tile.
const ROWS: usize = 4;
/// Weight rows ahead of the one being multiplied whose bytes are asked for. At 8 sequences the
/// tile waited on each row's first load: the hardware prefetcher alone did not keep up.
const PREFETCH_ROWS: usize = 4;
/// Activation rows kept hot while a task walks its weight rows (as the AVX2 tile's panel).
const PANEL: usize = 64;

/// Proof that this CPU runs AVX-512 F, BW, VL and VNNI (and AVX2, FMA, F16C): only
/// [`Vnni512::try_new`] creates one, after checking.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vnni512 {
    _checked: (),
}

impl Vnni512 {
    /// `Some` where the CPU has every feature the tiles are compiled for, unless
    /// `VCOS_Q8_VNNI=0` (read here: at model load) asks for the AVX2 tile.
    pub(super) fn try_new() -> Option<Self> {
        let cpu = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        let allowed = std::env::var("VCOS_Q8_VNNI").as_deref() != Ok("0");
        (cpu && allowed).then_some(Self { _checked: () })
    }

    /// `out[r * m + i] = Σ_b fma-accumulated block products` of weight row `r` of `w` (`kb`
    /// blocks each) with activation row `i`, as the AVX2 tile computes it.
    pub(super) fn rows(
        self,
        w: &[[u8; BLOCK_BYTES]],
        kb: usize,
        act: &PairedActivations,
        out: &mut [f32],
    ) {
        // SAFETY: `self` exists only where `try_new` found every feature `rows_impl` enables.
        unsafe { rows_impl(w, kb, act, out) }
    }
}

/// What the tiles read per activation block besides its signed values (`qs`, shared with the
/// AVX2 tile), block major like them (`[b * m + i]`): each i32 lane's starting value `-128 · Σ a`
/// over its 4 bytes, and the block's scale repeated over 8 lanes, so that two adjacent rows load
/// as one 512-bit register each.
pub(super) struct PairedActivations {
    qs: Vec<[i8; QK]>,
    corr: Vec<[i32; 8]>,
    d8: Vec<[f32; 8]>,
    m: usize,
}

impl PairedActivations {
    /// From Q8_0 activations `qs` and their scales `d`, block major over `m` rows.
    pub(super) fn new(qs: Vec<[i8; QK]>, d: &[f32], m: usize) -> Self {
        let corr = qs
            .iter()
            .map(|q| {
                std::array::from_fn(|l| {
                    -128 * q[4 * l..4 * l + 4]
                        .iter()
                        .map(|&v| i32::from(v))
                        .sum::<i32>()
                })
            })
            .collect();
        let d8 = d.iter().map(|&d| [d; 8]).collect();
        Self { qs, corr, d8, m }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn rows_impl(w: &[[u8; BLOCK_BYTES]], kb: usize, act: &PairedActivations, out: &mut [f32]) {
    let m = act.m;
    let rows = w.len() / kb;
    let mut r = 0;
    while r < rows {
        // Whole groups of ROWS weight rows, then one at a time.
        let group = if rows - r >= ROWS { ROWS } else { 1 };
        let ahead = (r + PREFETCH_ROWS) * kb..(r + PREFETCH_ROWS + group) * kb;
        if let Some(ahead) = w.get(ahead) {
            for line in ahead.as_flattened().chunks(64) {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            }
        }
        let w = &w[r * kb..(r + group) * kb];
        let out = &mut out[r * m..(r + group) * m];
        for p0 in (0..m).step_by(PANEL) {
            let p1 = m.min(p0 + PANEL);
            let mut i = p0;
            while i < p1 {
                let tc = TILE.min(p1 - i);
                if group == ROWS {
                    match tc {
                        8 => tile::<ROWS, 8>(w, kb, i, act, out),
                        7 => tile::<ROWS, 7>(w, kb, i, act, out),
                        6 => tile::<ROWS, 6>(w, kb, i, act, out),
                        5 => tile::<ROWS, 5>(w, kb, i, act, out),
                        4 => tile::<ROWS, 4>(w, kb, i, act, out),
                        3 => tile::<ROWS, 3>(w, kb, i, act, out),
                        2 => tile::<ROWS, 2>(w, kb, i, act, out),
                        _ => tile::<ROWS, 1>(w, kb, i, act, out),
                    }
                } else {
                    match tc {
                        8 => tile::<1, 8>(w, kb, i, act, out),
                        7 => tile::<1, 7>(w, kb, i, act, out),
                        6 => tile::<1, 6>(w, kb, i, act, out),
                        5 => tile::<1, 5>(w, kb, i, act, out),
                        4 => tile::<1, 4>(w, kb, i, act, out),
                        3 => tile::<1, 3>(w, kb, i, act, out),
                        2 => tile::<1, 2>(w, kb, i, act, out),
                        _ => tile::<1, 1>(w, kb, i, act, out),
                    }
                }
                i += tc;
            }
        }
        r += group;
    }
}

/// Weight rows `0..R` of `w` (`kb` blocks each) against activation rows `i0..i0 + C`, writing
/// `out[row * m + i0 + c]`: pairs of activation rows in 512-bit registers, an odd last one in a
/// 256-bit one. Each activation load serves the R weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
// Indices address several arrays at once (rows, registers, accumulators).
#[allow(clippy::needless_range_loop)]
fn tile<const R: usize, const C: usize>(
    w: &[[u8; BLOCK_BYTES]],
    kb: usize,
    i0: usize,
    act: &PairedActivations,
    out: &mut [f32],
) {
    let m = act.m;
    let pairs = C / 2;
    let rows: [&[[u8; BLOCK_BYTES]]; R] = std::array::from_fn(|row| &w[row * kb..(row + 1) * kb]);
    let mut acc = [[_mm512_setzero_ps(); TILE / 2]; R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let flip = _mm256_set1_epi8(i8::MIN);
    for b in 0..kb {
        // Per weight row: its scale in every lane, converted by the F16C instruction `half`
        // also uses (exact), and w + 128 as unsigned bytes (in both halves for the pairs).
        let mut d_w2 = [_mm512_setzero_ps(); R];
        let mut wu = [_mm256_setzero_si256(); R];
        for row in 0..R {
            let block = &rows[row][b];
            d_w2[row] =
                _mm512_cvtph_ps(_mm256_set1_epi16(i16::from_le_bytes([block[0], block[1]])));
            let mut q = [0u8; QK];
            q.copy_from_slice(&block[2..]);
            wu[row] = _mm256_xor_si256(cast(q), flip);
        }
        let wu2 = wu.map(|v| _mm512_broadcast_i64x4(v));
        let at = b * m + i0..b * m + i0 + C;
        let (Ok(qs), Ok(corr), Ok(d8)) = (
            <&[[i8; QK]; C]>::try_from(&act.qs[at.clone()]),
            <&[[i32; 8]; C]>::try_from(&act.corr[at.clone()]),
            <&[[f32; 8]; C]>::try_from(&act.d8[at]),
        ) else {
            unreachable!("a range of C blocks converts to [_; C]");
        };
        for p in 0..pairs {
            let (j, k) = (2 * p, 2 * p + 1);
            let a: __m512i = cast([qs[j], qs[k]]);
            let c: __m512i = cast([corr[j], corr[k]]);
            let d_a: __m512 = cast([d8[j], d8[k]]);
            for row in 0..R {
                let sum = _mm512_dpbusd_epi32(c, wu2[row], a);
                // The same f32 product as candle's scalar `d_w * d_a`, lane by lane.
                let d = _mm512_mul_ps(d_w2[row], d_a);
                acc[row][p] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sum), acc[row][p]);
            }
        }
        if C % 2 == 1 {
            let j = C - 1;
            for row in 0..R {
                let sum = _mm256_dpbusd_epi32(cast(corr[j]), wu[row], cast(qs[j]));
                let d = _mm256_mul_ps(_mm512_castps512_ps256(d_w2[row]), cast(d8[j]));
                acc1[row] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc1[row]);
            }
        }
    }
    for row in 0..R {
        let out = &mut out[row * m + i0..row * m + i0 + C];
        for p in 0..pairs {
            let v: [[f32; 8]; 2] = cast(acc[row][p]);
            out[2 * p] = hsum(v[0]);
            out[2 * p + 1] = hsum(v[1]);
        }
        if C % 2 == 1 {
            out[C - 1] = hsum(cast(acc1[row]));
        }
    }
}
