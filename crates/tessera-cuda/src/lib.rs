//! The CUDA backend: bf16 weights and activations (f32 accumulation; norms and softmax in f32),
//! kernels from the repository's `kernels/` compiled by NVRTC for the GPU present (PTX cached on
//! disk), GEMMs through cuBLAS (decode-sized batches through GEMV kernels), and a paged KV cache
//! in bf16 `[num_blocks, block_size, num_kv_heads, head_dim]` per layer.
//!
//! Everything is behind the `cuda` feature: without it this crate is empty. With it, cudarc loads
//! libcuda, libnvrtc and libcublas at run time (`dynamic-loading`), so the build needs no CUDA
//! toolkit; `CudaBackend::new` names any library it cannot find.
//!
//! Tensor parallelism: `CudaBackend::new_in_group` joins an NCCL group (`nccl/`); its all-reduce
//! and logits gather then run over NCCL, and every host wait on the group's work is bounded by
//! the collective deadline.
//!
//! Decode steps replay CUDA graphs captured at startup (`graphs.rs`); greedy tokens can be chosen
//! on the device (`sampling.rs`).
//!
//! Architecture invariant: the only crate with CUDA `unsafe`: kernel launches (`launch.rs`),
//! cuBLAS (`gemm.rs`) and cuBLASLt (`gemm_tune.rs`), driver calls cudarc leaves unsafe
//! (`device.rs`; async copies from pinned buffers in `staging.rs`), NCCL calls (`nccl/ffi.rs`),
//! uninitialised allocations that a kernel fills (`backend.rs`, `gemm.rs`, `sampling.rs`), and
//! `Send` for captured graphs (`graphs.rs`).

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
mod batch;
#[cfg(feature = "cuda")]
mod collective;
#[cfg(feature = "cuda")]
mod compile;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod gemm;
#[cfg(feature = "cuda")]
mod gemm_tune;
#[cfg(feature = "cuda")]
mod graphs;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(feature = "cuda")]
mod profile;
#[cfg(feature = "cuda")]
mod sampling;
#[cfg(feature = "cuda")]
mod staging;
#[cfg(feature = "cuda")]
mod tensor;
#[cfg(feature = "cuda")]
mod timing;

#[cfg(feature = "cuda")]
pub use backend::CudaBackend;
#[cfg(feature = "cuda")]
pub use batch::{CudaBatch, PAD_SLOT};
#[cfg(feature = "cuda")]
pub use device::{check_libraries, device_count, MemoryStats};
#[cfg(feature = "cuda")]
pub use gemm::{LinearKernel, GEMV_MAX_M};
#[cfg(feature = "cuda")]
pub use gemm_tune::GemmTuning;
#[cfg(feature = "cuda")]
pub use graphs::{DecodeGraphs, GraphReport};
#[cfg(feature = "cuda")]
pub use launch::{DECODE_ATTENTION_VARIANT, GEMV_KERNEL_MAX_M};
#[cfg(feature = "cuda")]
pub use nccl::{nccl_version, AbortSignal, CommConfig, NcclComm, NcclId};
#[cfg(feature = "cuda")]
pub use profile::{profile_num_blocks, ProfileLimits, ProfileReport};
#[cfg(feature = "cuda")]
pub use sampling::SamplingRow;
#[cfg(feature = "cuda")]
pub use tensor::{CudaKvCache, CudaRope, CudaTensor};
