//! Quick measurements of this CPU's limits, for the roofline when no datasheet figure is given.
//! Each takes well under a second; the best of a few repetitions is kept, since interference
//! from other processes only ever makes a run slower.

use std::time::Instant;

/// Copy bandwidth over all cores, counting the bytes read and the bytes written. Buffers are far
/// larger than any cache, so this is what a decode step's weight reads can expect.
pub fn memory_bandwidth_gbps() -> f64 {
    const BYTES: usize = 256 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let chunk = BYTES.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (d, from) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(from));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    assert_eq!(dst[BYTES - 1], 1, "the copy ran");
    2.0 * BYTES as f64 / best / 1e9
}

/// f32 GEMM rate through the same `gemm` crate the CPU backend uses, on a square problem big
/// enough to reach its steady state.
pub fn matrix_tflops() -> f64 {
    const N: usize = 768;
    let a = vec![1.0f32; N * N];
    let b = vec![0.5f32; N * N];
    let mut c = vec![0.0f32; N * N];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        // Safety: a, b and c are N x N row-major; the strides below describe exactly that.
        unsafe {
            gemm::gemm(
                N,
                N,
                N,
                c.as_mut_ptr(),
                1,
                N as isize,
                false,
                a.as_ptr(),
                1,
                N as isize,
                b.as_ptr(),
                1,
                N as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    assert_eq!(c[0], 0.5 * N as f32, "the product is right");
    2.0 * (N * N * N) as f64 / best / 1e12
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_report_plausible_rates() {
        // Anything from a slow VM to a large server: 0.1 GB/s to 10 TB/s, 0.1 GFLOP/s to 100 TFLOP/s.
        let bw = super::memory_bandwidth_gbps();
        assert!((0.1..10_000.0).contains(&bw), "{bw} GB/s");
        let tf = super::matrix_tflops();
        assert!((1e-4..100.0).contains(&tf), "{tf} TFLOP/s");
    }
}
