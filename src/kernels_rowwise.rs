//! The row-wise velocity's kernels (`rmsprop_rowwise.wgsl`; `VarOptions::rowwise_velocity`), listed
//! with the others in [`super::ALL`].

use super::BindingKind::{ReadOnly as R, ReadWrite as RW, UniformDynamic as U};
use super::{Kernel, Module, UPDATE};
use crate::pool_wgsl::Flavor;

/// The row-wise velocity (`rmsprop_rowwise.wgsl`, binding 23): 1 or 64 invocations per row, f32 pools in
/// scalar form (no velocity, average gradient or copy: the options refuse them).
pub const ROWWISE_WGSL: Module = Module {
    files: &[UPDATE, include_str!("../shaders/rmsprop_rowwise.wgsl")],
    pools: Some((Flavor::Scalar, &[("x", 1, RW), ("g", 2, R), ("m", 4, RW)])),
};

/// The dense update of variables with a row-wise velocity: every row of a variable's part
/// in a pool buffer.
pub const ROWS_DENSE: Kernel = Kernel {
    name: "rmsprop_rowwise::rows_dense",
    module: ROWWISE_WGSL,
    entry: "rows_dense",
    bindings: &[(0, U), (1, RW), (2, R), (4, RW), (7, R), (14, R), (23, RW)],
};
/// The lazy sparse update of variables with a row-wise velocity: every distinct listed row.
pub const ROWS_LAZY: Kernel = Kernel {
    name: "rmsprop_rowwise::rows_lazy",
    module: ROWWISE_WGSL,
    entry: "rows_lazy",
    bindings: &[
        (0, U),
        (1, RW),
        (4, RW),
        (7, R),
        (8, R),
        (9, R),
        (14, R),
        (23, RW),
    ],
};
