//! `x @ w^T` through the `gemm` crate (blocked, SIMD, multi-threaded on rayon's pool).

use crate::tensor::CpuTensor;
use gemm::Parallelism;

/// `x [n, k] @ w^T` for `w [m, k]`, giving `[n, m]`; `bias [m]` is added to every row.
pub fn linear(x: &CpuTensor, w: &CpuTensor, bias: Option<&CpuTensor>) -> CpuTensor {
    assert_eq!(x.cols, w.cols, "linear: input width {} but weight is {}x{}", x.cols, w.rows, w.cols);
    let (n, m, k) = (x.rows, w.rows, x.cols);
    let mut out = CpuTensor::zeros(n, m);
    if n == 0 || m == 0 {
        return out;
    }
    let parallelism = if n * m * k < 1 << 16 { Parallelism::None } else { Parallelism::Rayon(0) };
    // Safety: the strides below describe exactly the buffers' extents: out is n x m row-major,
    // x is n x k row-major, and w^T is read from w (m x k row-major) with swapped strides.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.data.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.data.as_ptr(),
            1,
            k as isize,
            w.data.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    if let Some(bias) = bias {
        assert_eq!(bias.data.len(), m, "bias of {} for {m} outputs", bias.data.len());
        for row in out.data.chunks_exact_mut(m) {
            row.iter_mut().zip(&bias.data).for_each(|(o, b)| *o += b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product() {
        let (n, m, k) = (5, 7, 300);
        let x = CpuTensor::new(n, k, (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect());
        let w = CpuTensor::new(m, k, (0..m * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect());
        let bias = CpuTensor::new(1, m, (0..m).map(|i| i as f32).collect());
        let out = linear(&x, &w, Some(&bias));
        for r in 0..n {
            for c in 0..m {
                let want: f32 = (0..k).map(|i| x.row(r)[i] * w.row(c)[i]).sum::<f32>() + c as f32;
                assert!((out.row(r)[c] - want).abs() < 1e-3, "({r},{c}): {} vs {want}", out.row(r)[c]);
            }
        }
    }
}
