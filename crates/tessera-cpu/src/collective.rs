//! Collectives for CPU tensor parallelism. A rank does not know whether its peers are threads or
//! other processes: it only sees this trait.

/// Sum and gather over a tensor-parallel group. Every rank calls the same operations in the same
/// order; results are bitwise identical on every rank.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Element-wise sum of `data` over all ranks, in place.
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), String>;
    /// Every rank's `data`, in rank order.
    fn all_gather(&self, data: &[f32]) -> Result<Vec<Vec<f32>>, String>;
}

/// The group of one.
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _data: &mut [f32]) -> Result<(), String> {
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        Ok(vec![data.to_vec()])
    }
}
