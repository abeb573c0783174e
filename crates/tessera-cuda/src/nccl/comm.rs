//! `NcclComm`: one rank's NCCL communicator on one stream, with the collective watchdog.
//!
//! Creation is bounded and abortable: a non-blocking communicator joins the group (polled against
//! a deadline), then splits into an identical blocking one that the collectives use. Blocking,
//! because a non-blocking NCCL communicator starts a host thread for every collective (tens of
//! microseconds, twice per layer); the split is what makes creating it pollable. The first
//! collectives (which set up connections and may wait for peers on the host) run as a warm-up
//! while every rank is known to be present. The parent lives as long as the child (see
//! `State::parent`).
//!
//! After that no host call waits on the group without a deadline: collectives only enqueue, at
//! most `MARK_EVERY * MAX_MARKS` of them are in flight (so the driver's launch queue never fills
//! and blocks the host behind a stuck collective), and every wait polls (`poll_until`). A wait
//! that fails aborts the communicator (its kernels exit) and raises the group's signal.

use super::ffi::{self, Progress, RawComm};
use super::signal::AbortSignal;
use super::wait::{poll_until, Probe};
use super::NcclId;
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tessera_model::{ModelError, Result};

/// A mark (event) is recorded after every `MARK_EVERY` collectives...
const MARK_EVERY: u64 = 4;
/// ...and before a new one is enqueued with this many marks pending, the oldest is awaited: the
/// host runs at most ~16 collectives (8 layers, ~150 launches) ahead of the GPU. In a healthy
/// step the oldest mark is long done and the check is one event query.
const MAX_MARKS: usize = 4;
/// Creating a communicator waits for every rank to arrive: at least this long, whatever the
/// collective deadline (the other ranks may still be creating their CUDA contexts).
const MIN_INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Element counts of the warm-up collectives: small, medium and large, so that NCCL sets up the
/// connections of every algorithm it picks by size while all ranks are known to be there.
const WARM_UP_COUNTS: [usize; 3] = [1 << 10, 1 << 16, 1 << 22];

/// How a rank joins its group.
#[derive(Clone, Debug)]
pub struct CommConfig {
    pub id: NcclId,
    pub rank: usize,
    pub world: usize,
    /// `parallel.collective_timeout_ms`: the longest any host wait on the group may take.
    pub collective_timeout: Duration,
    /// The longest creating the communicator may take (all ranks must join).
    pub init_timeout: Duration,
    /// Raised by any rank of this process whose group failed; every wait checks it.
    pub signal: AbortSignal,
}

impl CommConfig {
    pub fn new(
        id: NcclId,
        rank: usize,
        world: usize,
        collective_timeout: Duration,
        signal: AbortSignal,
    ) -> Self {
        let init_timeout = collective_timeout.max(MIN_INIT_TIMEOUT);
        CommConfig { id, rank, world, collective_timeout, init_timeout, signal }
    }
}

/// How the communicator is created. `TESSERA_NCCL_INIT=blocking` falls back to a plain blocking
/// `ncclCommInitRankConfig` (one NCCL init instead of two, but a rank whose peer never arrives
/// waits forever); the default is the bounded split.
fn blocking_init() -> bool {
    std::env::var("TESSERA_NCCL_INIT").as_deref() == Ok("blocking")
}

pub struct NcclComm {
    rank: usize,
    world: usize,
    stream: Arc<CudaStream>,
    timeout: Duration,
    signal: AbortSignal,
    state: Mutex<State>,
}

struct State {
    /// `None` once aborted.
    raw: Option<RawComm>,
    /// The non-blocking communicator `raw` was split from, kept until `raw` goes: the child's
    /// connections are set up lazily (at the first collective of each algorithm and size) through
    /// bootstrap state it shares with its parent, so aborting the parent right after the warm-up
    /// left later collectives of new sizes waiting forever.
    parent: Option<RawComm>,
    failure: Option<String>,
    issued: u64,
    /// Events recorded after collectives, oldest first.
    marks: VecDeque<CudaEvent>,
    spare: Vec<CudaEvent>,
}

impl State {
    /// Aborts the communicator, then its parent (if it was split from one).
    fn abort_all(&mut self) {
        if let Some(raw) = self.raw.take() {
            ffi::abort(raw);
        }
        if let Some(parent) = self.parent.take() {
            ffi::abort(parent);
        }
    }
}

fn backend(message: String) -> ModelError {
    ModelError::Backend(message)
}

fn probe_of(raw: &RawComm, event: &CudaEvent) -> std::result::Result<Probe, String> {
    if let Progress::InProgress = ffi::progress(raw)? {
        return Err("communicator unexpectedly busy".into());
    }
    match event.try_is_complete() {
        Ok(true) => Ok(Probe::Done),
        Ok(false) => Ok(Probe::Pending),
        Err(e) => Err(format!("CUDA: {e}")),
    }
}

impl NcclComm {
    /// Joins group `config.id` as `config.rank` on `stream`'s device. Works the same whether the
    /// other ranks are threads of this process or other processes: all they share is the id.
    pub fn from_rank(stream: Arc<CudaStream>, config: &CommConfig) -> Result<NcclComm> {
        let (rank, world) = (config.rank, config.world);
        if world == 0 || rank >= world {
            return Err(backend(format!("rank {rank} is not in a group of {world}")));
        }
        if !ffi::present() {
            return Err(backend(
                "cannot load libnccl (NCCL), which tensor parallelism on CUDA needs; install NCCL or put \
                 it on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let fail = |e: String| backend(format!("rank {rank}: creating the NCCL communicator: {e}"));
        // NCCL picks the device from the thread's current context.
        stream.context().bind_to_thread().map_err(|e| fail(e.to_string()))?;
        let (raw, parent) = if blocking_init() {
            (ffi::init_rank(world, config.id.as_bytes(), rank, true).map_err(fail)?, None)
        } else {
            let (child, parent) = init_by_split(config).map_err(fail)?;
            (child, Some(parent))
        };
        let comm = NcclComm {
            rank,
            world,
            stream,
            timeout: config.collective_timeout,
            signal: config.signal.clone(),
            state: Mutex::new(State {
                raw: Some(raw),
                parent,
                failure: None,
                issued: 0,
                marks: VecDeque::new(),
                spare: Vec::new(),
            }),
        };
        comm.warm_up()?;
        Ok(comm)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Sums `count` bf16 values of `buf` over the group, in place (enqueued on the stream).
    pub fn all_reduce_sum(&self, buf: &mut CudaSlice<bf16>, count: usize) -> Result<()> {
        assert!(count <= buf.len(), "all-reduce of {count} values from a buffer of {}", buf.len());
        let (ptr, _record) = buf.device_ptr_mut(&self.stream);
        self.enqueue("all-reduce", |raw, stream| ffi::all_reduce_sum_bf16(raw, ptr, count, stream))
    }

    /// Gathers `count` values from every rank into `recv`, rank-major (enqueued on the stream).
    pub fn all_gather(&self, send: &CudaSlice<bf16>, count: usize, recv: &mut CudaSlice<bf16>) -> Result<()> {
        assert!(count <= send.len() && count * self.world <= recv.len(), "all-gather buffer sizes");
        let (src, _read) = send.device_ptr(&self.stream);
        let (dst, _write) = recv.device_ptr_mut(&self.stream);
        self.enqueue("all-gather", |raw, stream| ffi::all_gather_bf16(raw, src, dst, count, stream))
    }

    /// Waits, within the collective deadline, until everything enqueued on the stream so far has
    /// run. `what` names the wait in errors.
    pub fn wait_idle(&self, what: &str) -> Result<()> {
        self.wait_idle_within(self.timeout, what)
    }

    /// Returns once every rank has reached its `barrier` (a one-value all-reduce), waiting at
    /// most `timeout`: for points where peers may legitimately lag by more than the collective
    /// deadline, such as the end of loading weights.
    pub fn barrier(&self, timeout: Duration, what: &str) -> Result<()> {
        let mut one =
            self.stream.alloc_zeros::<bf16>(1).map_err(|e| backend(format!("barrier alloc: {e}")))?;
        self.all_reduce_sum(&mut one, 1)?;
        self.wait_idle_within(timeout, what)
    }

    fn wait_idle_within(&self, timeout: Duration, what: &str) -> Result<()> {
        let mut state = self.lock();
        self.check_usable(&mut state)?;
        let event = self.event(&mut state)?;
        event.record(&self.stream).map_err(|e| self.fail(&mut state, format!("CUDA event: {e}")))?;
        self.wait_event(&mut state, &event, what, timeout)?;
        // Everything before `event` has completed, so every mark has too.
        let done: Vec<CudaEvent> = state.marks.drain(..).chain([event]).collect();
        state.spare.extend(done);
        Ok(())
    }

    /// Aborts the communicator (its pending kernels exit) and raises the group's signal.
    pub fn abort(&self, reason: &str) {
        let mut state = self.lock();
        let _ = self.fail(&mut state, reason.to_string());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warm_up(&self) -> Result<()> {
        let largest = *WARM_UP_COUNTS.iter().max().expect("warm-up sizes");
        let zeros =
            |n| self.stream.alloc_zeros::<bf16>(n).map_err(|e| backend(format!("warm-up alloc: {e}")));
        let mut buf = zeros(largest)?;
        let mut gathered = zeros(largest * self.world)?;
        for count in WARM_UP_COUNTS {
            self.all_reduce_sum(&mut buf, count)?;
            self.all_gather(&buf, count, &mut gathered)?;
        }
        self.wait_idle("the warm-up collectives")
    }

    /// The failure recorded or signalled so far, if any (raising it aborts this rank too).
    fn check_usable(&self, state: &mut State) -> Result<()> {
        if let Some(failure) = &state.failure {
            return Err(backend(format!("rank {}: the communicator has failed: {failure}", self.rank)));
        }
        if let Some(reason) = self.signal.reason() {
            return Err(self.fail(state, format!("the group failed: {reason}")));
        }
        Ok(())
    }

    fn enqueue(
        &self,
        what: &str,
        op: impl FnOnce(&RawComm, cudarc::driver::sys::CUstream) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let mut state = self.lock();
        self.check_usable(&mut state)?;
        // While the stream is captured into a CUDA graph nothing runs: a mark would be an event
        // recorded inside the capture, which must not be queried. A replayed step is bounded by
        // the step's own wait instead (`end_step`).
        let capturing = match self.stream.capture_status() {
            Ok(status) => status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE,
            Err(e) => return Err(self.fail(&mut state, format!("CUDA capture status: {e}"))),
        };
        if !capturing && state.marks.len() >= MAX_MARKS {
            let oldest = state.marks.pop_front().expect("marks are pending");
            let waiting = format!("waiting for earlier collectives before an {what}");
            self.wait_event(&mut state, &oldest, &waiting, self.timeout)?;
            state.spare.push(oldest);
        }
        // NCCL enqueues on the thread's current device; the rank's thread may have changed.
        if let Err(e) = self.stream.context().bind_to_thread() {
            return Err(self.fail(&mut state, format!("CUDA context: {e}")));
        }
        let raw = state.raw.as_ref().expect("a usable communicator is not aborted");
        if let Err(err) = op(raw, self.stream.cu_stream()) {
            return Err(self.fail(&mut state, err));
        }
        if capturing {
            return Ok(());
        }
        state.issued += 1;
        if state.issued.is_multiple_of(MARK_EVERY) {
            let mark = self.event(&mut state)?;
            mark.record(&self.stream).map_err(|e| self.fail(&mut state, format!("CUDA event: {e}")))?;
            state.marks.push_back(mark);
        }
        Ok(())
    }

    fn event(&self, state: &mut State) -> Result<CudaEvent> {
        match state.spare.pop() {
            Some(event) => Ok(event),
            None => self
                .stream
                .context()
                .new_event(None)
                .map_err(|e| self.fail(state, format!("CUDA event: {e}"))),
        }
    }

    fn wait_event(&self, state: &mut State, event: &CudaEvent, what: &str, timeout: Duration) -> Result<()> {
        let name = if timeout == self.timeout {
            "parallel.collective_timeout_ms"
        } else {
            "the wait's own deadline"
        };
        let waited = {
            let raw = state.raw.as_ref().expect("a usable communicator is not aborted");
            poll_until(timeout, name, &self.signal, what, || probe_of(raw, event))
        };
        waited.map_err(|err| self.fail(state, err.to_string()))
    }

    /// Records the failure, aborts the communicator and raises the group's signal.
    fn fail(&self, state: &mut State, reason: String) -> ModelError {
        let message = format!("rank {}: {reason}", self.rank);
        state.abort_all();
        // Pending marks may never complete on an aborted stream's collectives; drop them.
        state.marks.clear();
        state.failure.get_or_insert_with(|| reason.clone());
        self.signal.abort(&message);
        backend(message)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than destroy: ncclCommDestroy waits for pending work, which may never end
        // if a peer is gone.
        self.state.get_mut().unwrap_or_else(|e| e.into_inner()).abort_all();
    }
}

/// Joins the group with a non-blocking communicator (polled), then splits it into a blocking
/// one (polled). Returns (blocking communicator, parent). On failure nothing is left behind.
fn init_by_split(config: &CommConfig) -> std::result::Result<(RawComm, RawComm), String> {
    let (rank, world) = (config.rank, config.world);
    let deadline_name = "max(parallel.collective_timeout_ms, 60 s) to create a communicator";
    let wait = |comm: &RawComm, what: &str| {
        poll_until(config.init_timeout, deadline_name, &config.signal, what, || match ffi::progress(comm)? {
            Progress::Ready => Ok(Probe::Done),
            Progress::InProgress => Ok(Probe::Pending),
        })
        .map_err(|e| e.to_string())
    };
    let parent = ffi::init_rank(world, config.id.as_bytes(), rank, false)?;
    if let Err(err) = wait(&parent, "joining the group") {
        ffi::abort(parent);
        return Err(err);
    }
    let slot = match ffi::split_blocking(&parent, rank) {
        Ok(slot) => slot,
        Err(err) => {
            ffi::abort(parent);
            return Err(err);
        }
    };
    match wait(&parent, "splitting off the blocking communicator") {
        Ok(()) => match slot.take() {
            Some(child) => Ok((child, parent)),
            None => {
                ffi::abort(parent);
                Err("the split completed without a communicator".into())
            }
        },
        Err(err) => {
            // Aborting the parent also stops the split's own thread; only then is the slot final.
            ffi::abort(parent);
            if let Some(child) = slot.take() {
                ffi::abort(child);
            }
            Err(err)
        }
    }
}
