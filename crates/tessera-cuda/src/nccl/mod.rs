//! Tensor-parallel collectives over NCCL: the group's id, the communicator with its watchdog, and
//! the signal that fails a group's ranks together.
//!
//! A rank does not care whether its peers are threads of this process or other processes: all
//! it needs is the group's `NcclId` (128 bytes, which can travel over any channel), its rank and
//! the world size (`NcclComm::from_rank`).

mod comm;
mod ffi;
mod signal;
mod wait;

pub use comm::{CommConfig, NcclComm};
pub use signal::AbortSignal;

use tessera_model::{ModelError, Result};

/// NCCL's unique id of one group (one build of it: a rebuilt group gets a new id). Created by one
/// rank's process, which then hosts the group's bootstrap until every rank has joined.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; NcclId::LEN]);

impl NcclId {
    pub const LEN: usize = 128;

    /// A fresh id (`ncclGetUniqueId`).
    pub fn new() -> Result<NcclId> {
        if !ffi::present() {
            return Err(ModelError::Backend(
                "cannot load libnccl (NCCL), which tensor parallelism on CUDA needs".into(),
            ));
        }
        ffi::unique_id().map(NcclId).map_err(ModelError::Backend)
    }

    pub fn as_bytes(&self) -> &[u8; NcclId::LEN] {
        &self.0
    }

    /// The id another process created and sent as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<NcclId> {
        let array: [u8; NcclId::LEN] = bytes.try_into().map_err(|_| {
            ModelError::Backend(format!("an NCCL id is {} bytes, got {}", NcclId::LEN, bytes.len()))
        })?;
        Ok(NcclId(array))
    }
}

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes hold the bootstrap address; a short digest is enough to tell ids apart in logs.
        let digest = self
            .0
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        write!(f, "NcclId({digest:016x})")
    }
}

/// The loaded NCCL's version, e.g. "2.28.3".
pub fn nccl_version() -> Result<String> {
    if !ffi::present() {
        return Err(ModelError::Backend("cannot load libnccl".into()));
    }
    let code = ffi::version().map_err(ModelError::Backend)?;
    Ok(format!("{}.{}.{}", code / 10_000, code / 100 % 100, code % 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_round_trips_through_bytes_and_rejects_other_lengths() {
        let bytes: Vec<u8> = (0..128u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = NcclId::from_bytes(&bytes).unwrap();
        assert_eq!(id.as_bytes().as_slice(), bytes.as_slice());
        assert_eq!(NcclId::from_bytes(id.as_bytes()).unwrap(), id);
        let err = NcclId::from_bytes(&bytes[..100]).unwrap_err().to_string();
        assert!(err.contains("128 bytes, got 100"), "{err}");
        assert!(format!("{id:?}").starts_with("NcclId("));
    }
}
