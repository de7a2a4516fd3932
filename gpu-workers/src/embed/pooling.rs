//! Mean pooling over the attention mask and L2 normalisation, as sentence-transformers'
//! `Pooling(mean)` and `Normalize` modules compute them.

use candle_core::{DType, Tensor, D};

/// sentence-transformers clamps the token count to this (no division by zero).
const MIN_TOKENS: f64 = 1e-9;
/// `torch.nn.functional.normalize`'s epsilon.
const MIN_NORM: f64 = 1e-12;

/// Mean of `hidden` `[batch, tokens, dim]` over the tokens where `mask` `[batch, tokens]` is 1.
pub(crate) fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(MIN_TOKENS, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// Each row of `x` `[batch, dim]` divided by its L2 norm.
pub(crate) fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(MIN_NORM, f64::MAX)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_does_not_change_the_mean() {
        let dev = Device::Cpu;
        let hidden = Tensor::new(&[[[1f32, 2.], [3., 4.], [100., 100.]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![2., 3.]]);
    }

    #[test]
    fn rows_have_unit_norm() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &dev).unwrap();
        let y = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.6, 0.8], vec![0., 0.]]);
    }
}
