//! One GPU as the backend sees it: its context and the one stream every operation runs on, the
//! cuBLAS handle, the loaded kernels, and memory figures for profiling.

use crate::compile::{compile, FAMILIES};
use crate::gemm_tune::GemmTuner;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUgraphMem_attribute, CUmemPool_attribute};
use cudarc::driver::{result, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_model::{ModelError, Result};

pub fn backend_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> ModelError + '_ {
    move |e| ModelError::Backend(format!("CUDA {what}: {e}"))
}

#[cfg(test)]
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Checks that the CUDA libraries the backend loads at run time can be found, naming the missing
/// ones (cudarc would otherwise panic deep inside the first call that needs them).
pub fn check_libraries() -> Result<()> {
    // SAFETY: each check only tries to dlopen a library.
    let present = unsafe {
        [
            ("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()),
            ("libnvrtc (CUDA runtime compiler)", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
            ("libcublasLt", cudarc::cublaslt::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ModelError::Backend(format!(
        "cannot load {}; put the CUDA libraries on the loader path, e.g. \
         LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH",
        missing.join(", ")
    )))
}

/// How many CUDA devices this process sees.
pub fn device_count() -> Result<usize> {
    check_libraries()?;
    CudaContext::device_count().map(|n| n as usize).map_err(backend_err("device count"))
}

/// Device memory, in bytes. The pool figures cover everything the backend allocates (weights,
/// activations, KV cache all come from the device's stream-ordered memory pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    pub total: usize,
    pub free: usize,
    pub pool_used: usize,
    pub pool_used_peak: usize,
    pub pool_reserved: usize,
}

pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Declared before its workspace, so the handle is destroyed before the buffer is freed.
    pub blas: CudaBlas,
    /// cuBLASLt algorithms chosen per decode shape (gemm_tune.rs); shares cuBLAS's workspace, so
    /// it is declared before it too.
    pub gemm_tuner: GemmTuner,
    _blas_workspace: CudaSlice<u8>,
    pub num_sms: u32,
    /// Compute capability (major, minor): kernels of sm_90's own features (gemm_glu.cu) run only
    /// at (9, 0).
    pub arch: (i32, i32),
    /// The most shared memory one block may take on this GPU once a kernel asks for it (227 KB on
    /// an H100 or H200, 99 KB on an L40S): `prefill_attention` runs only where its blocks fit.
    pub shared_optin: usize,
    /// Kernels launch with programmatic dependent launch (launch/builder.rs): sm_90 and later,
    /// unless TESSERA_PDL=0 (for A/B measurements).
    pub pdl: bool,
    functions: HashMap<&'static str, CudaFunction>,
}

/// cuBLAS's workspace, set once on the handle: GEMMs captured into CUDA graphs then use this
/// buffer instead of cuBLAS allocating a workspace per capture. 32 MiB is NVIDIA's advice for
/// Hopper.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

fn set_blas_workspace(blas: &CudaBlas, stream: &Arc<CudaStream>) -> Result<CudaSlice<u8>> {
    let workspace = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES).map_err(backend_err("alloc"))?;
    {
        let (ptr, _sync) = workspace.device_ptr(stream);
        // SAFETY: the buffer outlives the handle (field order of `Device`) and nothing else uses it.
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, CUBLAS_WORKSPACE_BYTES)
        }
        .result()
        .map_err(|e| ModelError::Backend(format!("cuBLAS workspace: {e}")))?;
    }
    Ok(workspace)
}

/// Kernels that take more dynamic shared memory than the 48 KB a launch gets without asking,
/// with the most any launch of theirs takes: `prefill_attention` at group 8, its largest.
fn shared_memory_needs() -> [(&'static str, usize); 3] {
    use crate::launch::{prefill_attention_smem, GEMM_GLU_SMEM};
    [
        ("prefill_attention_d64", prefill_attention_smem(64, 8)),
        ("prefill_attention_d128", prefill_attention_smem(128, 8)),
        ("gemm_glu", GEMM_GLU_SMEM),
    ]
}

/// Lets each kernel of `shared_memory_needs` launch with its largest shared memory, or with as
/// much as the GPU allows a block (`shared_optin`) where that is less; launchers check their
/// launch fits (`launch::prefill_attention_supports`).
fn raise_shared_memory_limits(functions: &HashMap<&str, CudaFunction>, shared_optin: usize) -> Result<()> {
    use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYNAMIC;
    for (name, bytes) in shared_memory_needs() {
        let Some(function) = functions.get(name) else { continue };
        function
            .set_attribute(MAX_DYNAMIC, bytes.min(shared_optin) as i32)
            .map_err(backend_err("shared memory limit"))?;
    }
    Ok(())
}

/// Kernel entry points of each family (their `extern "C"` names).
const ENTRIES: [(&str, &[&str]); 11] = [
    ("embedding", &["embedding", "fill_dummy"]),
    ("norm", &["rms_norm", "add_rms_norm", "rms_norm_v8", "add_rms_norm_v8", "qk_norm"]),
    ("rope", &["rope", "rope_write_kv", "rope_write_kv_v4"]),
    ("activation", &["silu_mul", "silu_mul_v8", "add_bias", "gather_rows", "concat_cols"]),
    ("kv_cache", &["write_kv"]),
    ("attention", &["paged_attention", "attention_reduce"]),
    (
        "decode_attention",
        &[
            "decode_attention_d64_g1",
            "decode_attention_d64_g2",
            "decode_attention_d64_g4",
            "decode_attention_d64_g8",
            "decode_attention_d128_g1",
            "decode_attention_d128_g2",
            "decode_attention_d128_g4",
            "decode_attention_d128_g8",
            crate::launch::DECODE_ATTENTION_VARIANT,
        ],
    ),
    ("prefill_attention", &["prefill_attention_d64", "prefill_attention_d128"]),
    ("sampling", &["argmax_rows", "penalize_rows", "sample_rows"]),
    ("gemv", &["gemv_m8", "gemv_m8_r8", "gemv_m16", "gemv_glu_m8"]),
    ("gemm_glu", &["gemm_glu"]),
];

/// Compiles (or finds cached) and loads one family's module, and every entry point of it.
fn load_family(
    ctx: &Arc<CudaContext>,
    family: &crate::compile::Family,
    arch: (i32, i32),
) -> Result<Vec<(&'static str, CudaFunction)>> {
    let module = ctx.load_module(compile(family, arch)?).map_err(backend_err("module load"))?;
    let (_, names) = ENTRIES.iter().find(|(f, _)| *f == family.name).expect("every family has entries");
    names
        .iter()
        .map(|name| Ok((*name, module.load_function(name).map_err(backend_err("function"))?)))
        .collect()
}

impl Device {
    pub fn new(ordinal: usize) -> Result<Self> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal).map_err(backend_err("context"))?;
        // One stream per device: nothing needs cudarc's cross-stream event tracking, which would
        // cost two events per allocation.
        // SAFETY: called before any allocation, and the backend uses a single stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(backend_err("stream"))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| ModelError::Backend(format!("cuBLAS handle: {e}")))?;
        let blas_workspace = set_blas_workspace(&blas, &stream)?;
        let workspace_ptr = blas_workspace.device_ptr(&stream).0;
        let gemm_tuner = GemmTuner::new((workspace_ptr, CUBLAS_WORKSPACE_BYTES))?;
        let arch = ctx.compute_capability().map_err(backend_err("compute capability"))?;
        let num_sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(backend_err("attribute"))? as u32;
        let mut functions = HashMap::new();
        for family in &FAMILIES {
            match load_family(&ctx, family, arch) {
                Ok(loaded) => functions.extend(loaded),
                // An architecture-specific family is a fast path with a portable one beside it
                // (launchers check `has_function`): a GPU or driver that will not take it costs
                // speed, not the backend.
                Err(err) if family.arch_specific => {
                    eprintln!(
                        "tessera-cuda: kernels/{}.cu not loaded, its fast path stays off: {err}",
                        family.name
                    )
                }
                Err(err) => return Err(err),
            }
        }
        let shared_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(backend_err("attribute"))? as usize;
        raise_shared_memory_limits(&functions, shared_optin)?;
        let pdl = arch.0 >= 9 && std::env::var("TESSERA_PDL").map_or(true, |v| v != "0");
        let device = Device {
            ctx,
            stream,
            blas,
            gemm_tuner,
            _blas_workspace: blas_workspace,
            num_sms,
            arch,
            shared_optin,
            pdl,
            functions,
        };
        device.keep_pool_memory()?;
        Ok(device)
    }

    /// Whether kernel `name` was loaded: always, except an architecture-specific family's that
    /// the GPU or driver did not take.
    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("kernel {name} not loaded"))
    }

    fn pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool> {
        self.ctx.bind_to_thread().map_err(backend_err("bind"))?;
        // SAFETY: the context's own device.
        unsafe { result::device::get_mem_pool(self.ctx.cu_device()) }.map_err(backend_err("memory pool"))
    }

    fn pool_attr(&self, attr: CUmemPool_attribute) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: these attributes are all cuuint64_t.
        unsafe { result::mem_pool::get_attribute(self.pool()?, attr, &mut value as *mut u64 as *mut _) }
            .map_err(backend_err("pool attribute"))?;
        Ok(value)
    }

    fn set_pool_attr(&self, attr: CUmemPool_attribute, mut value: u64) -> Result<()> {
        // SAFETY: these attributes are all cuuint64_t.
        unsafe { result::mem_pool::set_attribute(self.pool()?, attr, &mut value as *mut u64 as *mut _) }
            .map_err(backend_err("pool attribute"))
    }

    /// Freed memory stays in the pool instead of going back to the driver at every
    /// synchronisation, so a step's temporaries are reused rather than re-mapped each step.
    fn keep_pool_memory(&self) -> Result<()> {
        self.set_pool_attr(CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)
    }

    pub fn memory_stats(&self) -> Result<MemoryStats> {
        self.stream.synchronize().map_err(backend_err("synchronize"))?;
        let (free, total) = self.ctx.mem_get_info().map_err(backend_err("memory info"))?;
        Ok(MemoryStats {
            total,
            free,
            pool_used: self.pool_attr(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)? as usize,
            pool_used_peak: self.pool_attr(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)? as usize,
            pool_reserved: self.pool_attr(CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?
                as usize,
        })
    }

    /// Starts a new peak measurement.
    pub fn reset_peak(&self) -> Result<()> {
        self.stream.synchronize().map_err(backend_err("synchronize"))?;
        self.set_pool_attr(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
    }

    /// Device memory the driver holds for CUDA graphs' own allocations (their activations), in
    /// bytes; separate from the stream-ordered pool.
    pub fn graph_memory(&self) -> Result<usize> {
        self.stream.synchronize().map_err(backend_err("synchronize"))?;
        self.ctx.bind_to_thread().map_err(backend_err("bind"))?;
        let mut value = 0u64;
        let attr = CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT;
        // SAFETY: this attribute is a cuuint64_t; the context's own device.
        unsafe {
            cudarc::driver::sys::cuDeviceGetGraphMemAttribute(
                self.ctx.cu_device(),
                attr,
                &mut value as *mut u64 as *mut _,
            )
        }
        .result()
        .map_err(backend_err("graph memory attribute"))?;
        Ok(value as usize)
    }

    /// Returns the pool's unused memory to the driver (after profiling, before the KV cache).
    pub fn trim_pool(&self) -> Result<()> {
        self.stream.synchronize().map_err(backend_err("synchronize"))?;
        // SAFETY: the device's current pool; trimming only releases unused memory.
        unsafe { result::mem_pool::trim_to(self.pool()?, 0) }.map_err(backend_err("pool trim"))
    }
}
