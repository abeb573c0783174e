//! The linear layers against the CPU backend: the GEMV kernels, cuBLAS, every cuBLASLt
//! algorithm GEMM tuning may choose, the tuned choice, the GEMMs that add into the residual
//! stream, and the gate|up projection with its activation. Run with TESSERA_GPU_TESTS=1 on a
//! GPU machine.

#![cfg(feature = "cuda")]

mod common;

use common::*;
use tessera_cpu::CpuBackend;
use tessera_cuda::{CudaBackend, LinearKernel};
use tessera_model::Backend;

fn backends(test: &str) -> Option<(CpuBackend, CudaBackend)> {
    gpu_tests_enabled(test).then(|| (CpuBackend::new(), CudaBackend::new(0).expect("CUDA backend")))
}

fn linear<B: Backend>(b: &B, m: usize, k: usize, n: usize, seed: u64) -> Vec<f32> {
    let x = activation(b, m, k, &random_bf16(seed, m * k, 1.0));
    let w = b.upload(host_bf16(vec![n, k], &random_bf16(seed + 1, n * k, 0.05))).unwrap();
    let bias = b.upload(host_bf16(vec![n], &random_bf16(seed + 2, n, 0.5))).unwrap();
    let plain = b.to_host(&b.linear(&x, &w, None).unwrap()).unwrap();
    let biased = b.to_host(&b.linear(&x, &w, Some(&bias)).unwrap()).unwrap();
    plain.into_iter().chain(biased).collect()
}

#[test]
fn linear_with_and_without_bias() {
    let Some((cpu, gpu)) = backends("linear_with_and_without_bias") else { return };
    for (i, (m, k, n)) in
        [(1, 64, 96), (17, 4096, 1024), (128, 512, 11008), (3, 2048, 50), (2, 12, 33)].into_iter().enumerate()
    {
        let seed = 100 + i as u64;
        assert_close(
            &format!("linear {m}x{k} @ {n}x{k}^T"),
            &linear(&gpu, m, k, n, seed),
            &linear(&cpu, m, k, n, seed),
            BF16_TOL,
        );
    }
}

/// The GEMV kernels against the CPU backend and against cuBLAS on the same inputs, for batches
/// of 1 to 16 rows and widths that are not multiples of the kernels' tiles.
#[test]
fn gemv_against_cpu_and_cublas() {
    let Some((cpu, gpu)) = backends("gemv_against_cpu_and_cublas") else { return };
    let mut cases: Vec<(usize, usize, usize)> = (1..=8).map(|m| (m, 4096, 4096)).collect();
    cases.extend([
        // Awkward widths: one 16-byte vector, a k that ends mid-tile, Llama's down_proj k;
        // a single output, an n that ends mid-block, and Llama 8B's gate|up n.
        (1, 8, 1),
        (3, 8, 7),
        (2, 4104, 7),
        (8, 4104, 4096),
        (1, 14336, 4096),
        (5, 14336, 1),
        (2, 4096, 28672),
        (9, 256, 100),
        (16, 4104, 33),
    ]);
    for (i, (m, k, n)) in cases.into_iter().enumerate() {
        let seed = 700 + i as u64;
        let (xs, ws) = (random_bf16(seed, m * k, 1.0), random_bf16(seed + 1, n * k, 0.05));
        let cx = activation(&cpu, m, k, &xs);
        let cw = cpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
        let want = cpu.to_host(&cpu.linear(&cx, &cw, None).unwrap()).unwrap();
        let x = activation(&gpu, m, k, &xs);
        let w = gpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
        let gemv = gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Gemv).unwrap()).unwrap();
        let cublas = gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Cublas).unwrap()).unwrap();
        let what = format!("gemv {m}x{k} @ {n}x{k}^T");
        assert_close(&format!("{what} vs cpu"), &gemv, &want, BF16_TOL);
        assert_close(&format!("{what} vs cublas"), &gemv, &cublas, BF16_TOL);
    }
    // Shapes the GEMV does not take are an error when forced, and `Auto` falls back to cuBLAS.
    for (m, k, n) in [(1, 12, 5), (17, 64, 5)] {
        let (xs, ws) = (random_bf16(1, m * k, 1.0), random_bf16(2, n * k, 0.05));
        let x = activation(&gpu, m, k, &xs);
        let w = gpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
        let err = gpu.linear_with(&x, &w, LinearKernel::Gemv).err().expect("GEMV refuses the shape");
        assert!(err.to_string().contains("GEMV"), "{err}");
        let auto = gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Auto).unwrap()).unwrap();
        let cx = activation(&cpu, m, k, &xs);
        let cw = cpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
        let want = cpu.to_host(&cpu.linear(&cx, &cw, None).unwrap()).unwrap();
        assert_close(&format!("auto fallback {m}x{k} @ {n}x{k}^T"), &auto, &want, BF16_TOL);
    }
}

/// Every cuBLASLt algorithm that GEMM tuning may pick (gemm_tune.rs) against the CPU backend at
/// small shapes and against the default cuBLAS call at Llama 8B's decode shapes; then the tuned
/// choice itself, which `Auto` must reuse bit for bit.
#[test]
fn tuned_gemm_candidates_against_cpu_and_cublas() {
    let Some((cpu, gpu)) = backends("tuned_gemm_candidates_against_cpu_and_cublas") else { return };
    let cases =
        [(16, 4096, 1024, true), (24, 14336, 256, true), (200, 512, 3000, true), (256, 4096, 512, true)];
    let decode_shapes = [(256, 4096, 28672, false), (64, 14336, 4096, false), (128, 4096, 6144, false)];
    for (i, (m, k, n, on_cpu)) in cases.into_iter().chain(decode_shapes).enumerate() {
        let seed = 900 + i as u64;
        let (xs, ws) = (random_bf16(seed, m * k, 1.0), random_bf16(seed + 1, n * k, 0.05));
        let x = activation(&gpu, m, k, &xs);
        let w = gpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
        let want = if on_cpu {
            let cx = activation(&cpu, m, k, &xs);
            let cw = cpu.upload(host_bf16(vec![n, k], &ws)).unwrap();
            cpu.to_host(&cpu.linear(&cx, &cw, None).unwrap()).unwrap()
        } else {
            gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Cublas).unwrap()).unwrap()
        };
        let what = format!("{m}x{k} @ {n}x{k}^T vs {}", if on_cpu { "cpu" } else { "cublas" });
        let candidates = gpu.gemm_candidate_outputs(&x, &w, None).unwrap();
        assert!(!candidates.is_empty(), "cuBLASLt offered no algorithm for {what}");
        for (j, out) in candidates.iter().enumerate() {
            assert_close(
                &format!("cuBLASLt algorithm {j} {what}"),
                &gpu.to_host(out).unwrap(),
                &want,
                BF16_TOL,
            );
        }
        let tuned = gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Tuned).unwrap()).unwrap();
        assert_close(&format!("tuned {what}"), &tuned, &want, BF16_TOL);
        let auto = gpu.to_host(&gpu.linear_with(&x, &w, LinearKernel::Auto).unwrap()).unwrap();
        assert_eq!(auto, tuned, "Auto reuses the tuned choice for {what}");
        let tuning = gpu.gemm_tunings().into_iter().find(|t| (t.m, t.n, t.k) == (m, n, k)).expect("tuned");
        assert_eq!(tuning.candidates, candidates.len(), "{what}: {tuning:?}");
        assert!(tuning.default_us > 0.0, "{what}: {tuning:?}");
        println!("{what}: {tuning:?}");
    }
}

/// `residual + x @ w^T` through `linear_into_residual`, on the host, and whether the backend
/// added inside the product (else the returned product is added here).
fn residual_sum<B: Backend>(b: &B, (m, k, n): (usize, usize, usize), seed: u64) -> (Vec<f32>, bool) {
    let x = activation(b, m, k, &random_bf16(seed, m * k, 1.0));
    let w = b.upload(host_bf16(vec![n, k], &random_bf16(seed + 1, n * k, 0.05))).unwrap();
    let mut residual = activation(b, m, n, &random_bf16(seed + 2, m * n, 2.0));
    let delta = b.linear_into_residual(&x, &w, &mut residual).unwrap();
    let mut sum = b.to_host(&residual).unwrap();
    if let Some(delta) = &delta {
        sum.iter_mut().zip(b.to_host(delta).unwrap()).for_each(|(s, d)| *s += d);
    }
    (sum, delta.is_none())
}

/// The residual stream's projections against the CPU backend: rows that take cuBLAS add inside
/// the GEMM (beta = 1), by the default call, by the choice of an earlier tuning, and while
/// tuning (whose timed runs must not add to the residual); GEMV rows return the product instead.
/// Then every cuBLASLt algorithm tuning may choose, adding in place (C == D) into a residual.
#[test]
fn linear_into_residual_adds_once() {
    let Some((cpu, gpu)) = backends("linear_into_residual_adds_once") else { return };
    // (shape, how the GPU runs it, whether it adds inside the GEMM)
    let cases = [
        ((1, 4096, 4096), "gemv", false),
        ((8, 4096, 1024), "gemv", false),
        ((9, 4096, 1024), "cublas", true),
        ((3, 12, 5), "cublas (no gemv for k = 12)", true),
        ((64, 4096, 1024), "tuning", true),
        ((128, 512, 3000), "tuned (by linear, before)", true),
    ];
    for (i, (shape, how, fused)) in cases.into_iter().enumerate() {
        let seed = 1200 + 10 * i as u64;
        let (m, k, n) = shape;
        let (want, cpu_fused) = residual_sum(&cpu, shape, seed);
        assert!(cpu_fused, "the CPU backend always adds");
        if how.starts_with("tuned") {
            let x = activation(&gpu, m, k, &random_bf16(seed, m * k, 1.0));
            let w = gpu.upload(host_bf16(vec![n, k], &random_bf16(seed + 1, n * k, 0.05))).unwrap();
            gpu.linear_with(&x, &w, LinearKernel::Tuned).unwrap();
        }
        let (got, gpu_fused) = if how == "tuning" {
            gpu.tuning(|| residual_sum(&gpu, shape, seed))
        } else {
            residual_sum(&gpu, shape, seed)
        };
        assert_eq!(gpu_fused, fused, "{m}x{k} @ {n}x{k}^T ({how}): added inside the GEMM");
        assert_close(&format!("residual + {m}x{k} @ {n}x{k}^T ({how})"), &got, &want, BF16_TOL);
        if how == "tuning" {
            assert!(gpu.gemm_tunings().iter().any(|t| (t.m, t.n, t.k) == (m, n, k)), "tuned {shape:?}");
        }
    }
    for (i, (m, k, n)) in [(16, 4096, 1024), (256, 4096, 512), (200, 512, 3000)].into_iter().enumerate() {
        let seed = 1300 + 10 * i as u64;
        let (want, _) = residual_sum(&cpu, (m, k, n), seed);
        let x = activation(&gpu, m, k, &random_bf16(seed, m * k, 1.0));
        let w = gpu.upload(host_bf16(vec![n, k], &random_bf16(seed + 1, n * k, 0.05))).unwrap();
        let residual = activation(&gpu, m, n, &random_bf16(seed + 2, m * n, 2.0));
        let sums = gpu.gemm_candidate_outputs(&x, &w, Some(&residual)).unwrap();
        assert!(!sums.is_empty(), "cuBLASLt offered no algorithm for {m}x{k} @ {n}x{k}^T");
        for (j, sum) in sums.iter().enumerate() {
            let what = format!("cuBLASLt algorithm {j} adding {m}x{k} @ {n}x{k}^T in place");
            assert_close(&what, &gpu.to_host(sum).unwrap(), &want, BF16_TOL);
        }
    }
}

fn linear_silu_mul<B: Backend>(b: &B, m: usize, k: usize, n: usize, seed: u64) -> Vec<f32> {
    let x = activation(b, m, k, &random_bf16(seed, m * k, 1.0));
    // Large enough weights that silu's curve, not only its linear part near 0, is exercised.
    let w = b.upload(host_bf16(vec![2 * n, k], &random_bf16(seed + 1, 2 * n * k, 0.1))).unwrap();
    b.to_host(&b.linear_silu_mul(&x, &w).unwrap()).unwrap()
}

/// The MLP's gate|up projection with its activation: on the GPU one GEMV with the activation in
/// its epilogue for up to 8 rows (gemv_glu_m8), cuBLAS then silu_mul above; against the CPU's
/// linear then silu_mul. Widths that end mid-block and Llama 8B's gate|up.
#[test]
fn linear_silu_mul_fused_and_not() {
    let Some((cpu, gpu)) = backends("linear_silu_mul_fused_and_not") else { return };
    for (i, (m, k, n)) in [
        (1, 4096, 14336),
        (8, 4096, 14336),
        (3, 256, 13),
        (1, 8, 1),
        (2, 4104, 100),
        (9, 512, 64),
        (33, 256, 40),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 900 + 10 * i as u64;
        let (got, want) = (linear_silu_mul(&gpu, m, k, n, seed), linear_silu_mul(&cpu, m, k, n, seed));
        assert_eq!(got.len(), m * n);
        assert_close(&format!("linear_silu_mul {m}x{k} @ {}x{k}^T", 2 * n), &got, &want, BF16_TOL);
    }
}

/// The Hopper gate|up GEMM with the activation in its epilogue (gemm_glu.cu) against the CPU
/// backend, at rows and widths that end mid-tile (the TMA boxes read zeros past the edges and
/// the kernel writes no row past m), a k that ends mid-slice, one output tile or several, and
/// more tiles than blocks with few k slices each (a block's stage ring and barrier phases carry
/// on from tile to tile); then at a prefill step's shape of Llama 8B against cuBLAS and silu_mul
/// on the same GPU.
#[test]
fn gemm_glu_against_cpu_and_cublas() {
    let Some((cpu, gpu)) = backends("gemm_glu_against_cpu_and_cublas") else { return };
    if gpu.compute_capability() != (9, 0) {
        eprintln!("SKIPPED gemm_glu_against_cpu_and_cublas: {} is not sm_90", gpu.device_name());
        return;
    }
    for (i, (m, k, n)) in
        [(1, 64, 128), (130, 200, 128), (700, 512, 384), (256, 4104, 256), (129, 8, 128), (2560, 136, 1024)]
            .into_iter()
            .enumerate()
    {
        let seed = 1500 + 10 * i as u64;
        let (xs, ws) = (random_bf16(seed, m * k, 1.0), random_bf16(seed + 1, 2 * n * k, 0.1));
        let cx = activation(&cpu, m, k, &xs);
        let cw = cpu.upload(host_bf16(vec![2 * n, k], &ws)).unwrap();
        let want = cpu.to_host(&cpu.linear_silu_mul(&cx, &cw).unwrap()).unwrap();
        let x = activation(&gpu, m, k, &xs);
        let w = gpu.upload(host_bf16(vec![2 * n, k], &ws)).unwrap();
        let got = gpu.to_host(&gpu.gemm_glu(&x, &w).unwrap()).unwrap();
        assert_eq!(got.len(), m * n);
        assert_close(&format!("gemm_glu {m}x{k} @ {}x{k}^T vs cpu", 2 * n), &got, &want, BF16_TOL);
    }
    let (m, k, n) = (1030, 4096, 14336);
    let (xs, ws) = (random_bf16(1600, m * k, 1.0), random_bf16(1601, 2 * n * k, 0.05));
    let x = activation(&gpu, m, k, &xs);
    let w = gpu.upload(host_bf16(vec![2 * n, k], &ws)).unwrap();
    let fused = gpu.to_host(&gpu.gemm_glu(&x, &w).unwrap()).unwrap();
    let split = gpu.to_host(&gpu.silu_mul(&gpu.linear(&x, &w, None).unwrap()).unwrap()).unwrap();
    assert_close(&format!("gemm_glu {m}x{k} @ {}x{k}^T vs cublas", 2 * n), &fused, &split, BF16_TOL);
    // Shapes the kernel does not take are an error, not a wrong answer.
    let odd = gpu.upload(host_bf16(vec![2 * 100, k], &ws[..200 * k])).unwrap();
    assert!(gpu.gemm_glu(&x, &odd).is_err(), "n = 100 is not whole tiles");
}
