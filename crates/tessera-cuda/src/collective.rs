//! The backend's tensor-parallel collectives over its rank's NCCL communicator: the in-place
//! all-reduce after row-parallel layers and the vocab-parallel logits gather. On one GPU both are
//! identities.

use crate::backend::CudaBackend;
use crate::device::backend_err;
use crate::launch;
use crate::tensor::CudaTensor;
use tessera_model::Result;

impl CudaBackend {
    /// Sums `x` over the group, in place, in bf16.
    pub(crate) fn all_reduce_sum(&self, x: &mut CudaTensor) -> Result<()> {
        match &self.comm {
            None => Ok(()),
            // Every rank has the same rows, so all of them skip an empty tensor alike.
            Some(_) if x.is_empty() => Ok(()),
            Some(comm) => {
                let len = x.len();
                comm.all_reduce_sum(&mut x.data, len)
            }
        }
    }

    /// Every rank's columns of `x` side by side, in rank order: NCCL gathers the ranks' whole
    /// blocks one after another, and `concat_cols` lays them out as columns.
    pub(crate) fn gather_cols(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let Some(comm) = &self.comm else {
            let data = self.device.stream.clone_dtod(&x.data).map_err(backend_err("copy"))?;
            return Ok(CudaTensor { rows: x.rows, cols: x.cols, data });
        };
        let world = comm.world();
        if x.is_empty() {
            // As in `all_reduce_sum`: every rank skips it.
            return self.tensor(x.rows, x.cols * world);
        }
        let mut parts = self.alloc(x.len() * world)?;
        comm.all_gather(&x.data, x.len(), &mut parts)?;
        let mut out = self.tensor(x.rows, x.cols * world)?;
        launch::concat_cols(&self.device, &mut out.data, &parts, world, x.rows, x.cols)?;
        Ok(out)
    }
}
