//! Pinned host buffers for copies queued behind work still running on the stream. A copy from
//! pageable memory may make the host wait for the stream; from pinned memory it is only queued,
//! so a decode step can be enqueued while the one before it runs (`graphs.rs`, chained replays).
//!
//! Each `PinnedRing` has two buffers used in turn, each with an event recorded after its last
//! copy. A buffer is written (upload) or read (download) by the host only once its event has
//! fired, so the host never races a queued copy.

use cudarc::driver::{
    result, CudaContext, CudaEvent, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DriverError,
    PinnedHostSlice,
};
use std::sync::Arc;

pub(crate) struct PinnedRing {
    bufs: [PinnedHostSlice<u32>; 2],
    /// Recorded after the last copy of the buffer of the same index.
    done: [CudaEvent; 2],
    next: usize,
}

/// A download queued by `PinnedRing::download`: which buffer, how many values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    buf: usize,
    len: usize,
}

impl PinnedRing {
    /// Two buffers of `capacity` values. Write-combined memory suits buffers the host only
    /// writes (uploads); buffers the host reads (downloads) are ordinary cached pinned memory.
    pub fn new(ctx: &Arc<CudaContext>, capacity: usize, host_writes: bool) -> Result<Self, DriverError> {
        let flags = if host_writes { cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED } else { 0 };
        // SAFETY: the buffers are written before any value is read (uploads copy in first, a
        // download's values are read only after its copy has run).
        let alloc = || unsafe { ctx.alloc_pinned_with_flags::<u32>(capacity.max(1), flags) };
        Ok(PinnedRing {
            bufs: [alloc()?, alloc()?],
            done: [ctx.new_event(None)?, ctx.new_event(None)?],
            next: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.bufs[0].len()
    }

    /// The next buffer, once the device is done with its previous copy.
    fn take(&mut self) -> Result<usize, DriverError> {
        let i = self.next;
        self.next ^= 1;
        self.done[i].synchronize()?;
        Ok(i)
    }

    /// Queues the copy of `values` into the front of `dst` on `stream`; returns without waiting
    /// for the stream.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        values: &[u32],
        dst: &mut CudaViewMut<'_, u32>,
    ) -> Result<(), DriverError> {
        assert!(
            values.len() <= self.capacity() && values.len() <= dst.len(),
            "upload of {} values",
            values.len()
        );
        let i = self.take()?;
        let buf = &mut self.bufs[i].as_mut_slice()?[..values.len()];
        buf.copy_from_slice(values);
        let (ptr, _record) = dst.device_ptr_mut(stream);
        // SAFETY: `buf` is pinned, as long as the copy reads, and not written again before
        // `done[i]`, recorded right after the copy, has fired.
        unsafe { result::memcpy_htod_async(ptr, buf, stream.cu_stream()) }?;
        self.done[i].record(stream)
    }

    /// Queues the copy of `src` to the host on `stream`; `read` waits for it.
    pub fn download(
        &mut self,
        stream: &Arc<CudaStream>,
        src: &CudaView<'_, u32>,
    ) -> Result<Queued, DriverError> {
        let len = src.len();
        assert!(len <= self.capacity(), "download of {len} values");
        let i = self.take()?;
        let buf = &mut self.bufs[i].as_mut_slice()?[..len];
        let (ptr, _record) = src.device_ptr(stream);
        // SAFETY: as in `upload`; the host reads `buf` only after `done[i]` has fired.
        unsafe { result::memcpy_dtoh_async(buf, ptr, stream.cu_stream()) }?;
        self.done[i].record(stream)?;
        Ok(Queued { buf: i, len })
    }

    /// The values of a queued download, once its copy has run. The buffer is one of two, so it
    /// must be read before the second download after it is queued.
    pub fn read(&self, queued: Queued) -> Result<Vec<u32>, DriverError> {
        self.done[queued.buf].synchronize()?;
        Ok(self.bufs[queued.buf].as_slice()?[..queued.len].to_vec())
    }
}
