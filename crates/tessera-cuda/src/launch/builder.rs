//! How every kernel of kernels/ is launched: `cuLaunchKernelEx`, with the programmatic dependent
//! launch attribute where the GPU has it (sm_90 and later, `Device::pdl`).
//!
//! With the attribute a kernel may start while the kernel before it on the stream is still
//! running: its blocks are scheduled as soon as every block of that kernel has called
//! `pdl_trigger` (common.cuh), and they wait in `pdl_wait` until it has finished. A decode step is
//! a chain of a few hundred short kernels, and without the attribute each boundary leaves the GPU
//! draining the last blocks, then idle while the next kernel's first loads are in flight; with
//! it, the next kernel's launch and its reads of constant data (the GEMV prefetches its weights)
//! overlap the previous kernel's tail. The launch is only correct for kernels that call
//! `pdl_wait` before touching memory an earlier kernel writes or reads, which every kernel of
//! kernels/ does (a test in compile.rs checks it).
//!
//! cudarc's launch builder has no way to pass launch attributes, so this one takes the kernel's
//! arguments itself: each is copied into an 8-byte slot, from which the driver reads the
//! parameter's width (little-endian, so a 4-byte parameter reads the low half of its slot). A TMA
//! tensor map (128 bytes, `TensorMap`) is passed by reference to the caller's copy instead.

use crate::device::{backend_err, Device};
use cudarc::driver::sys::{
    cuLaunchKernelEx, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig,
};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig};
use std::ffi::c_void;
use tessera_model::Result;

/// A kernel argument as the driver takes it: a device pointer or a scalar of at most 8 bytes.
pub(crate) trait KernelArg {
    fn slot(&self, device: &Device) -> u64;
}

impl<T> KernelArg for CudaSlice<T> {
    fn slot(&self, device: &Device) -> u64 {
        self.device_ptr(&device.stream).0
    }
}

impl<T> KernelArg for CudaView<'_, T> {
    fn slot(&self, device: &Device) -> u64 {
        self.device_ptr(&device.stream).0
    }
}

impl<T> KernelArg for CudaViewMut<'_, T> {
    fn slot(&self, device: &Device) -> u64 {
        self.device_ptr(&device.stream).0
    }
}

impl KernelArg for u32 {
    fn slot(&self, _: &Device) -> u64 {
        u64::from(*self)
    }
}

impl KernelArg for i32 {
    fn slot(&self, _: &Device) -> u64 {
        u64::from(*self as u32)
    }
}

impl KernelArg for u64 {
    fn slot(&self, _: &Device) -> u64 {
        *self
    }
}

impl KernelArg for f32 {
    fn slot(&self, _: &Device) -> u64 {
        u64::from(self.to_bits())
    }
}

/// A TMA tensor map as the driver's `cuTensorMapEncodeTiled` writes it and a kernel takes it by
/// value (`const __grid_constant__ TensorMap`, gemm_glu.cu): 128 opaque bytes, 64-byte aligned.
#[repr(C, align(64))]
pub(crate) struct TensorMap(pub cudarc::driver::sys::CUtensorMap);

/// Most arguments a kernel of kernels/ takes (decode_attention: 18), with room to spare. The
/// slots live in the builder, so a launch allocates nothing.
const MAX_ARGS: usize = 24;

/// One launch of the kernel `name`, its arguments pushed in the order of the `.cu` signature.
pub(crate) struct KernelLaunch<'a> {
    device: &'a Device,
    name: &'a str,
    slots: [u64; MAX_ARGS],
    /// Arguments passed by reference (tensor maps), by position; `None` where the slot holds it.
    by_ref: [Option<&'a TensorMap>; MAX_ARGS],
    len: usize,
}

impl<'a> KernelLaunch<'a> {
    pub fn new(device: &'a Device, name: &'a str) -> Self {
        KernelLaunch { device, name, slots: [0; MAX_ARGS], by_ref: [None; MAX_ARGS], len: 0 }
    }

    pub fn arg(&mut self, arg: &(impl KernelArg + ?Sized)) -> &mut Self {
        assert!(self.len < MAX_ARGS, "{}: more than {MAX_ARGS} kernel arguments", self.name);
        self.slots[self.len] = arg.slot(self.device);
        self.len += 1;
        self
    }

    /// A tensor map argument: the driver copies its 128 bytes at the launch.
    pub fn tensor_map(&mut self, map: &'a TensorMap) -> &mut Self {
        assert!(self.len < MAX_ARGS, "{}: more than {MAX_ARGS} kernel arguments", self.name);
        self.by_ref[self.len] = Some(map);
        self.len += 1;
        self
    }

    /// Queues the kernel on the device's stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and width, and the
    /// kernel must stay within the memory they describe; each launcher states why it does.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        let device = self.device;
        device.ctx.bind_to_thread().map_err(backend_err(self.name))?;
        // SAFETY: a zeroed attribute value is valid (a union of plain integers and structs).
        let mut value: CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attribute = CUlaunchAttribute {
            id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: device.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(device.pdl),
        };
        // The slots stay put from here on: `params` points into them.
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for ((param, slot), by_ref) in params.iter_mut().zip(&mut self.slots[..self.len]).zip(self.by_ref) {
            *param = match by_ref {
                Some(map) => map as *const TensorMap as *mut c_void,
                None => slot as *mut u64 as *mut c_void,
            };
        }
        let function = device.function(self.name).cu_function();
        // SAFETY: the caller vouches for the arguments; config, attribute and params outlive the
        // call, which copies them.
        unsafe { cuLaunchKernelEx(&config, function, params.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(backend_err(self.name))
    }
}
