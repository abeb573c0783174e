//! NCCL through cudarc's raw bindings (libnccl is loaded at run time). The only NCCL `unsafe` of
//! the crate: every function here takes plain values or a `RawComm` and returns a `Result`.

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::nccl::sys::{self, ncclComm_t, ncclConfig_t, ncclDataType_t, ncclRedOp_t, ncclResult_t};
use std::ffi::{c_int, c_void, CStr};

/// NCCL's "not set, use the default" value of an integer config field (`NCCL_CONFIG_UNDEF_INT`).
const UNDEF_INT: c_int = c_int::MIN;
/// What `NCCL_CONFIG_INITIALIZER` writes as the magic number.
const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// The config layout we claim to fill: NCCL 2.28 (the GPU machines have 2.28.3). NCCL copies at
/// most its own struct's size of ours and leaves fields it does not know at their defaults, so an
/// older or newer library both read it correctly.
const CONFIG_VERSION: u32 = 2 * 10_000 + 28 * 100;

/// An NCCL communicator handle. Owned: `abort` consumes it.
pub struct RawComm(ncclComm_t);

// SAFETY: NCCL allows a communicator to be used from any thread as long as calls on it do not
// overlap; `NcclComm` serialises every call behind its mutex.
unsafe impl Send for RawComm {}

/// State of a communicator's pending work (init, split): `ncclCommGetAsyncError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Ready,
    InProgress,
}

/// Whether libnccl can be loaded (cudarc panics on first use otherwise).
pub fn present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

fn error_text(result: ncclResult_t, comm: ncclComm_t) -> String {
    // SAFETY: both return pointers to static or per-communicator NUL-terminated strings (or null).
    let (name, last) = unsafe { (sys::ncclGetErrorString(result), sys::ncclGetLastError(comm)) };
    let text = |p: *const std::ffi::c_char| {
        // SAFETY: non-null pointers from NCCL point at NUL-terminated strings.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    match (text(name), text(last).filter(|s| !s.is_empty())) {
        (Some(name), Some(last)) => format!("{result:?} ({name}): {last}"),
        (Some(name), None) => format!("{result:?} ({name})"),
        _ => format!("{result:?}"),
    }
}

fn check(result: ncclResult_t, comm: ncclComm_t, what: &str) -> Result<Progress, String> {
    match result {
        ncclResult_t::ncclSuccess => Ok(Progress::Ready),
        ncclResult_t::ncclInProgress => Ok(Progress::InProgress),
        other => Err(format!("NCCL {what}: {}", error_text(other, comm))),
    }
}

/// The library's version code, e.g. 22803 for 2.28.3.
pub fn version() -> Result<i32, String> {
    let mut version: c_int = 0;
    // SAFETY: writes one int.
    check(unsafe { sys::ncclGetVersion(&mut version) }, std::ptr::null_mut(), "version")?;
    Ok(version)
}

/// A fresh unique id; this process hosts the group's bootstrap root until every rank has joined.
pub fn unique_id() -> Result<[u8; 128], String> {
    let mut id = sys::ncclUniqueId { internal: [0; 128] };
    // SAFETY: writes the 128-byte id.
    check(unsafe { sys::ncclGetUniqueId(&mut id) }, std::ptr::null_mut(), "unique id")?;
    Ok(id.internal.map(|b| b as u8))
}

fn config(blocking: bool) -> ncclConfig_t {
    ncclConfig_t {
        size: std::mem::size_of::<ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version: CONFIG_VERSION,
        blocking: c_int::from(blocking),
        cgaClusterSize: UNDEF_INT,
        minCTAs: UNDEF_INT,
        maxCTAs: UNDEF_INT,
        netName: std::ptr::null(),
        splitShare: UNDEF_INT,
        trafficClass: UNDEF_INT,
        commName: std::ptr::null(),
        collnetEnable: UNDEF_INT,
        CTAPolicy: UNDEF_INT,
        shrinkShare: UNDEF_INT,
        nvlsCTAs: UNDEF_INT,
        nChannelsPerNetPeer: UNDEF_INT,
        nvlinkCentricSched: UNDEF_INT,
        graphUsageMode: UNDEF_INT,
        numRmaCtx: UNDEF_INT,
        maxP2pPeers: UNDEF_INT,
    }
}

/// Starts joining the group `id` as `rank` of `world` on the current thread's CUDA device. With
/// `blocking == false` it returns at once (poll `progress`); otherwise it returns when every rank
/// has joined.
pub fn init_rank(world: usize, id: &[u8; 128], rank: usize, blocking: bool) -> Result<RawComm, String> {
    let unique = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
    let mut comm: ncclComm_t = std::ptr::null_mut();
    let mut config = config(blocking);
    // SAFETY: `comm` and `config` outlive the call; NCCL copies the config.
    let result =
        unsafe { sys::ncclCommInitRankConfig(&mut comm, world as c_int, unique, rank as c_int, &mut config) };
    if comm.is_null() {
        check(result, comm, "communicator init")?;
        return Err("NCCL communicator init returned no communicator".into());
    }
    if let Err(err) = check(result, comm, "communicator init") {
        abort(RawComm(comm));
        return Err(err);
    }
    Ok(RawComm(comm))
}

/// Where a split writes the new communicator when it completes: boxed, so its address stays put
/// while NCCL's background thread holds it.
pub struct SplitSlot(Box<ncclComm_t>);

// SAFETY: the slot is only read after the split completed (or its parent was aborted, which joins
// NCCL's thread), and is owned by one thread at a time.
unsafe impl Send for SplitSlot {}

impl SplitSlot {
    /// The new communicator, once the split has completed.
    pub fn take(mut self) -> Option<RawComm> {
        let comm = std::mem::replace(&mut *self.0, std::ptr::null_mut());
        (!comm.is_null()).then_some(RawComm(comm))
    }
}

/// Starts splitting `parent` into an identical group whose communicator is blocking. The parent
/// must be non-blocking, so the split itself is pollable (`progress(parent)`) and abortable.
pub fn split_blocking(parent: &RawComm, rank: usize) -> Result<SplitSlot, String> {
    let mut slot = SplitSlot(Box::new(std::ptr::null_mut()));
    let mut config = config(true);
    // SAFETY: the slot's box outlives the split (see `SplitSlot`); NCCL copies the config.
    let result = unsafe { sys::ncclCommSplit(parent.0, 0, rank as c_int, &mut *slot.0, &mut config) };
    check(result, parent.0, "communicator split")?;
    Ok(slot)
}

/// Whether the communicator's pending work is done, or the error it ended with.
pub fn progress(comm: &RawComm) -> Result<Progress, String> {
    let mut state = ncclResult_t::ncclSuccess;
    // SAFETY: writes one result code.
    check(unsafe { sys::ncclCommGetAsyncError(comm.0, &mut state) }, comm.0, "async error query")?;
    check(state, comm.0, "communicator")
}

/// Stops everything the communicator has in flight (its kernels see the abort flag and exit) and
/// frees it. Never waits for peers.
pub fn abort(comm: RawComm) {
    // SAFETY: the handle is owned and not used again. Errors are ignored: the communicator is
    // being thrown away because something already failed.
    let _ = unsafe { sys::ncclCommAbort(comm.0) };
}

/// Enqueues an in-place bf16 sum over the group on `stream`.
pub fn all_reduce_sum_bf16(
    comm: &RawComm,
    buf: CUdeviceptr,
    count: usize,
    stream: CUstream,
) -> Result<(), String> {
    let ptr = buf as *mut c_void;
    // SAFETY: the caller guarantees `buf` holds `count` bf16 values on the communicator's device,
    // ordered on `stream`.
    let result = unsafe {
        sys::ncclAllReduce(
            ptr,
            ptr,
            count,
            ncclDataType_t::ncclBfloat16,
            ncclRedOp_t::ncclSum,
            comm.0,
            stream as sys::cudaStream_t,
        )
    };
    blocking_call(result, comm, "all-reduce")
}

/// Enqueues an all-gather of `count` bf16 values per rank into `recv` (rank-major) on `stream`.
pub fn all_gather_bf16(
    comm: &RawComm,
    send: CUdeviceptr,
    recv: CUdeviceptr,
    count: usize,
    stream: CUstream,
) -> Result<(), String> {
    // SAFETY: the caller guarantees `send` holds `count` and `recv` world x `count` bf16 values on
    // the communicator's device, ordered on `stream`.
    let result = unsafe {
        sys::ncclAllGather(
            send as *const c_void,
            recv as *mut c_void,
            count,
            ncclDataType_t::ncclBfloat16,
            comm.0,
            stream as sys::cudaStream_t,
        )
    };
    blocking_call(result, comm, "all-gather")
}

/// A call on a blocking communicator has either enqueued its work or failed.
fn blocking_call(result: ncclResult_t, comm: &RawComm, what: &str) -> Result<(), String> {
    match check(result, comm.0, what)? {
        Progress::Ready => Ok(()),
        Progress::InProgress => Err(format!("NCCL {what} left in progress on a blocking communicator")),
    }
}
