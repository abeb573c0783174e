//! The GPU's limits for the roofline, measured on GPU 0 before the engine starts: the
//! device-to-device copy bandwidth (what streaming weights and KV is bound by) and the bf16 GEMM
//! rate through the backend's own cuBLAS path. Measured in the same run as the benchmark, so the
//! achieved fraction does not depend on datasheet figures or on how busy the shared machine is.

use tessera_cuda::CudaBackend;
use tessera_model::weights::HostTensor;
use tessera_model::Backend;

/// (copy bandwidth in GB/s, bf16 matrix rate in TFLOP/s).
pub fn measure() -> anyhow::Result<(f64, f64)> {
    let backend = CudaBackend::new(0).map_err(|e| anyhow::anyhow!("GPU 0: {e}"))?;
    let bandwidth = backend.copy_bandwidth(1 << 30, 10).map_err(|e| anyhow::anyhow!("copy: {e}"))?;
    // 8192^3: large enough for cuBLAS to reach its steady rate, ~1.1 TFLOP per product.
    const N: usize = 8192;
    let values: Vec<f32> = (0..N * N).map(|i| ((i % 251) as f32 - 125.0) / 1024.0).collect();
    let x = backend.tensor_from_host(N, N, &values).map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = backend.upload(HostTensor::from_f32(vec![N, N], &values)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut best_ms = f64::INFINITY;
    for i in 0..6 {
        let ms =
            backend.time_ms(|| backend.linear(&x, &w, None)).map_err(|e| anyhow::anyhow!("gemm: {e}"))?;
        if i > 0 {
            best_ms = best_ms.min(ms);
        }
    }
    let tflops = 2.0 * (N as f64).powi(3) / (best_ms * 1e-3) / 1e12;
    Ok((bandwidth / 1e9, tflops))
}
