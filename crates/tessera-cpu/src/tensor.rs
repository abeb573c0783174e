//! Row-major f32 matrices: activations and weights of the CPU backend.

/// `rows x cols` f32 values, row-major. Vectors (norm weights, biases) have one row.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * cols, data.len(), "tensor of {rows}x{cols} with {} values", data.len());
        CpuTensor { rows, cols, data }
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        CpuTensor { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }
}
