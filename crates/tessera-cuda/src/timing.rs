//! Measurements for benchmarks: the device-to-device copy bandwidth (the memory roofline that
//! decode speed is judged against) and device-side timing of a closure with events.

use crate::backend::CudaBackend;
use crate::device::backend_err;
use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use tessera_model::Result;

impl CudaBackend {
    /// Bandwidth of a large device-to-device copy in bytes per second, counting bytes read plus
    /// bytes written (what a kernel streaming weights is limited by). Median of `iters` copies of
    /// `bytes` after a warm-up, timed with device events.
    pub fn copy_bandwidth(&self, bytes: usize, iters: usize) -> Result<f64> {
        let stream = &self.device.stream;
        let len = bytes / 2;
        // Random-looking contents are irrelevant to a copy, but zeros are avoided on principle:
        // some paths treat them specially.
        let src = stream.clone_htod(&vec![bf16::from_f32(0.5); len]).map_err(backend_err("alloc"))?;
        let mut dst = stream.alloc_zeros::<bf16>(len).map_err(backend_err("alloc"))?;
        let mut times = Vec::with_capacity(iters);
        for i in 0..iters + 2 {
            let ms = self.time_ms(|| stream.memcpy_dtod(&src, &mut dst).map_err(backend_err("copy")))?;
            if i >= 2 {
                times.push(ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        Ok(2.0 * (len * 2) as f64 / (median * 1e-3))
    }

    /// Device time of the work `f` enqueues, in milliseconds (waits for it to finish).
    pub fn time_ms<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<f64> {
        let stream = &self.device.stream;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream.record_event(flags).map_err(backend_err("event"))?;
        f()?;
        let end = stream.record_event(flags).map_err(backend_err("event"))?;
        // Bounded by the collective deadline when the work includes collectives.
        self.synchronize()?;
        Ok(start.elapsed_ms(&end).map_err(backend_err("event timing"))? as f64)
    }
}
