//! Lays out a step's sparse gradients in the step's sparse buffers: host indices grouped by row on the
//! host (indices only, `O(k log k)`), host values copied as they are, room for values and indices that
//! are copied on the GPU. Pure: no GPU work.

use crate::sparse;
use crate::step::layout::Layout;
use crate::step::types::{Gradient, VarId};

/// A sparse gradient of the current step, as placed in the step's sparse buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SparseStep {
    pub var: usize,
    pub index_base: u32,
    pub values_base: u32,
    /// Distinct rows (host grouping), or the capacity of the layout (GPU grouping: the index count).
    pub unique_rows: u32,
    pub listed: u32,
    /// GPU grouping: (first index in `gpu_indices`, region in `heads`, region in `next`).
    pub gpu: Option<(u32, u32, u32)>,
}

/// Each variable's region in the `heads` buffer of GPU grouping, given the first time a variable takes
/// GPU indices; regions start empty (NONE) and grouping leaves them empty after each step.
#[derive(Debug, Default)]
pub(crate) struct HeadRegions {
    pub base: Vec<Option<u32>>,
    /// Total rows of the regions.
    pub len: u64,
}

// By hand, so that `clone_from` reuses the vector (it runs every step).
impl Clone for HeadRegions {
    fn clone(&self) -> Self {
        HeadRegions {
            base: self.base.clone(),
            len: self.len,
        }
    }
    fn clone_from(&mut self, source: &Self) {
        self.base.clone_from(&source.base);
        self.len = source.len;
    }
}

/// A step's sparse layout (reused between steps, so that steady-state steps do not allocate).
#[derive(Debug, Default)]
pub(crate) struct SparsePrep {
    pub steps: Vec<SparseStep>,
    keys: Vec<u64>,
    /// Grouped host indices (and room for the GPU-grouped layouts), the step's index buffer.
    pub index: Vec<u32>,
    /// Host values, the front of the step's values buffer.
    pub values: Vec<f32>,
    /// Values copied on the GPU, after the host values.
    pub gpu_values: usize,
    /// Indices copied on the GPU, and links of their grouping.
    pub gpu_indices: usize,
    pub next: usize,
    /// The head regions after this step (committed only when the step is recorded).
    pub heads: HeadRegions,
}

impl SparsePrep {
    /// Fills the layout for `grads` (`count` of them sparse; those of frozen variables are skipped) from
    /// the committed `heads`. An iterator, walked three times, so that a caller can hand over gradients
    /// it makes on the fly without collecting them.
    pub fn prepare<'a>(
        &mut self,
        layout: &Layout,
        grads: impl Iterator<Item = (VarId, Gradient<'a>)> + Clone,
        count: usize,
        heads: &HeadRegions,
    ) {
        self.steps.clear();
        self.index.clear();
        self.values.clear();
        self.gpu_values = 0;
        self.gpu_indices = 0;
        self.next = 0;
        self.heads.clone_from(heads);
        if count == 0 {
            return;
        }
        // Host values first (one contiguous write), then room for the values copied on the GPU.
        for host in [true, false] {
            for (id, g) in grads.clone() {
                let var = id.index as usize;
                if layout.variables[var].frozen() {
                    continue;
                }
                let (indices, len) = match g {
                    Gradient::Sparse { indices, values } if host => (indices, values.len()),
                    Gradient::Sparse16 { indices, values } if host => (indices, values.len()),
                    Gradient::SparseGpu { indices, .. } if !host => {
                        (indices, indices.len() * layout.variables[var].row_len)
                    }
                    _ => continue,
                };
                let index_base = self.index.len() as u32;
                let unique = sparse::group_rows(&indices, &mut self.keys, &mut self.index);
                let values_base = (self.values.len() + self.gpu_values) as u32;
                match g {
                    Gradient::Sparse { values, .. } => self.values.extend_from_slice(values),
                    Gradient::Sparse16 { values, .. } => values.widen_into(&mut self.values),
                    _ => self.gpu_values += len,
                }
                self.steps.push(SparseStep {
                    var,
                    index_base,
                    values_base,
                    unique_rows: unique,
                    listed: indices.len() as u32,
                    gpu: None,
                });
            }
        }
        // Indices on the GPU: room for the layout, grouped there.
        self.heads.base.resize(layout.variables.len(), None);
        for (id, g) in grads {
            let Gradient::SparseGpuIndices { indices, .. } = g else {
                continue;
            };
            let var = id.index as usize;
            let v = &layout.variables[var];
            if v.frozen() {
                continue;
            }
            let k = indices.len;
            let heads = &mut self.heads;
            let region = *heads.base[var].get_or_insert_with(|| {
                let base = heads.len as u32;
                heads.len += v.shape[0] as u64;
                base
            });
            let index_base = self.index.len() as u32;
            self.index
                .resize(self.index.len() + sparse::HEADER + 4 * k, 0);
            let values_base = (self.values.len() + self.gpu_values) as u32;
            self.gpu_values += k * v.row_len;
            self.steps.push(SparseStep {
                var,
                index_base,
                values_base,
                unique_rows: k as u32,
                listed: k as u32,
                gpu: Some((self.gpu_indices as u32, region, self.next as u32)),
            });
            self.gpu_indices += k;
            self.next += k;
        }
    }
}
