//! L2 normalisation, as sentence-transformers' `Normalize` module computes it (mean pooling
//! over packed texts is `packed_bert::mean_pool`).

use candle_core::{Tensor, D};

/// `torch.nn.functional.normalize`'s epsilon.
const MIN_NORM: f64 = 1e-12;

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
    fn rows_have_unit_norm() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &dev).unwrap();
        let y = l2_normalize(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![0.6, 0.8], vec![0., 0.]]);
    }
}
