//! BERT's GELU, `x · Φ(x) = ½ · x · (1 + erf(x / √2))`, on the CPU without a call per element.
//!
//! candle computes it element by element through `libm`'s `erff`, with branches: `perf` put
//! that at about a tenth of the embedding thread's time (`vcos bench inference`, batch 32).
//! Here `erf` is Abramowitz and Stegun's 7.1.28, `1 − (1 + a₁x + … + a₆x⁶)⁻¹⁶` for `x ≥ 0` (odd
//! in `x`), absolute error at most 3 × 10⁻⁷: no branch, no `exp`, so the loop vectorises. Other
//! devices and dtypes keep candle's op.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

/// The coefficients `a₁ … a₆` of Abramowitz and Stegun 7.1.28.
const A: [f32; 6] = [0.070_523_08, 0.042_282_01, 0.009_270_527, 0.000_152_014_3, 0.000_276_567_2, 0.000_043_063_8];

/// `erf(x)`, to 3 × 10⁻⁷.
#[inline]
fn erf(x: f32) -> f32 {
    let t = x.abs();
    let p = 1.0 + t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * (A[4] + t * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    // Past |x| ≈ 19, p¹⁶ overflows to infinity and its inverse is 0: erf is ±1, as it should.
    (1.0 - 1.0 / (p8 * p8)).copysign(x)
}

#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "vcos-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("vcos-gelu-erf takes f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("vcos-gelu-erf takes a contiguous tensor");
        };
        let out: Vec<f32> = data[start..end].iter().map(|&x| gelu(x)).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// GELU with erf, as BERT's `hidden_act = "gelu"`.
pub(crate) fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_gelu_to_a_millionth() {
        let xs: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 / 2_000.0).collect();
        let t = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let ours = gelu_erf(&t).unwrap().to_vec1::<f32>().unwrap();
        let candles = t.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&candles).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(f32::MAX.sqrt()), f32::MAX.sqrt());
    }
}
