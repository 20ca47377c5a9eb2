//! Checks a step's gradients on the host before anything is encoded: known handles, no variable twice,
//! lengths, sparse indices, the caller's GPU buffers, and the limits the kernels index with. Pure: no GPU
//! work, so a refused step has changed nothing.

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::sparse;
use crate::step::layout::Layout;
use crate::step::types::{GpuGradient, Gradient, VarId};

/// How a variable takes part in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Absent,
    Dense,
    Sparse,
    /// Listed, but the variable is frozen (per-variable options): validated, then treated as absent.
    Frozen,
}

/// What the rest of a step needs to know about its gradients (reused between steps).
#[derive(Debug, Default)]
pub(crate) struct StepShape {
    /// Per variable, how it takes part.
    pub parts: Vec<Part>,
    /// Bytes of host dense gradients with their padding lanes.
    pub host_bytes: u64,
    /// Gradients that are copied (anything but `Resident`, and not of a frozen variable).
    pub copied: usize,
    /// Sparse gradients (not of a frozen variable).
    pub sparse: usize,
}

/// Checks `grads` against `layout`. `seen[var]` is the layout version at which the caller last took
/// the variable's gradient slices (`u64::MAX`: never): a `Resident` gradient of a variable whose pool
/// buffer moved since was written into a buffer the pools left.
pub(crate) fn validate(
    layout: &Layout,
    grads: &[(VarId, Gradient<'_>)],
    seen: &[u64],
    out: &mut StepShape,
) -> Result<()> {
    out.parts.clear();
    out.parts.resize(layout.variables.len(), Part::Absent);
    (out.host_bytes, out.copied, out.sparse) = (0, 0, 0);
    let (mut sparse_values, mut sparse_indices) = (0u64, 0u64);
    for (id, g) in grads {
        let v = layout.var(*id)?;
        let name = || v.name.clone();
        check_type(&v.name, g, v.storage.gradient)?;
        // Sparse gradients: (indices, values) of this step, checked below against the step's total.
        let listed = match g {
            Gradient::Resident => {
                // `u64::MAX`: the slices were never taken (the common case, checked first).
                let seen = seen.get(id.index as usize).copied().unwrap_or(u64::MAX);
                let moved = || {
                    v.segments
                        .iter()
                        .map(|s| layout.chunks[s.chunk].moved)
                        .max()
                };
                if seen != u64::MAX && moved().unwrap_or(0) > seen {
                    return Err(Error::StaleLayout {
                        name: name(),
                        version: layout.version,
                    });
                }
                None
            }
            Gradient::Dense(_) | Gradient::Dense16(_) => {
                let got = match g {
                    Gradient::Dense16(h) => h.len(),
                    Gradient::Dense(values) => values.len(),
                    _ => 0,
                };
                if got != v.len {
                    return Err(Error::GradientLength {
                        name: name(),
                        expected: v.len,
                        got,
                    });
                }
                None
            }
            Gradient::Gpu(gg) => {
                check_gpu_bytes(&v.name, gg, v.len, v.storage.gradient.bytes())?;
                None
            }
            Gradient::SparseGpuIndices { indices, values } => {
                if v.shape.is_empty() {
                    return Err(Error::SparseScalar { name: name() });
                }
                let n = indices.len.saturating_mul(v.row_len);
                let idx = GpuGradient {
                    buffer: indices.buffer,
                    offset: indices.offset,
                };
                check_gpu_buffer(&v.name, &idx, indices.len)?;
                check_gpu_buffer(&v.name, values, n)?;
                Some((indices.len, n))
            }
            Gradient::SparseGpu { indices, values } => {
                let n = indices.len().saturating_mul(v.row_len);
                sparse::validate(&v.name, &v.shape, indices, n)?;
                check_gpu_buffer(&v.name, values, n)?;
                Some((indices.len(), n))
            }
            Gradient::Sparse { indices, values } => {
                sparse::validate(&v.name, &v.shape, indices, values.len())?;
                Some((indices.len(), values.len()))
            }
            Gradient::Sparse16 { indices, values } => {
                sparse::validate(&v.name, &v.shape, indices, values.len())?;
                Some((indices.len(), values.len()))
            }
        };
        if let Some((k, n)) = listed {
            // The step's sparse values and indices are addressed with u32 in the kernels.
            sparse_values += n as u64;
            sparse_indices += k as u64;
            if sparse_values >= u64::from(u32::MAX) || sparse_indices >= u64::from(u32::MAX / 8) {
                return Err(Error::SparseValuesLength {
                    name: name(),
                    indices: k,
                    row_len: v.row_len,
                    got: n,
                });
            }
        }
        let part = &mut out.parts[id.index as usize];
        if *part != Part::Absent {
            return Err(Error::DuplicateGradient { name: name() });
        }
        *part = match g {
            _ if v.frozen() => Part::Frozen,
            Gradient::Sparse { .. }
            | Gradient::Sparse16 { .. }
            | Gradient::SparseGpu { .. }
            | Gradient::SparseGpuIndices { .. } => Part::Sparse,
            Gradient::Dense(_) | Gradient::Dense16(_) | Gradient::Gpu(_) | Gradient::Resident => {
                Part::Dense
            }
        };
        if *part == Part::Frozen {
            continue;
        }
        if let Gradient::Dense(_) | Gradient::Dense16(_) = g {
            // With the alignment padding after each part (see `Layout::padded_vec4s`).
            let vec4_bytes = 4 * v.storage.gradient.bytes();
            out.host_bytes += v
                .segments
                .iter()
                .map(|s| layout.padded_vec4s(s) * vec4_bytes)
                .sum::<u64>();
        }
        out.copied += usize::from(!matches!(g, Gradient::Resident));
        out.sparse += usize::from(*part == Part::Sparse);
    }
    Ok(())
}

/// Checks that the element type of gradient `g` is the variable's gradient type `dtype` (host slices
/// carry their type; GPU sparse values are f32).
fn check_type(name: &str, g: &Gradient<'_>, dtype: Dtype) -> Result<()> {
    let (got, hint) = match g {
        Gradient::Dense(_) | Gradient::Sparse { .. } => {
            (Dtype::F32, "give Dense16/Sparse16 values")
        }
        Gradient::Dense16(h) | Gradient::Sparse16 { values: h, .. } => {
            (h.dtype(), "give the values in the variable's gradient type")
        }
        Gradient::SparseGpu { .. } | Gradient::SparseGpuIndices { .. } if dtype != Dtype::F32 => {
            return Err(Error::GradientType {
                name: name.into(),
                expected: dtype,
                got: Dtype::F32,
                hint: "sparse values on the GPU are read as f32: a variable with 16-bit gradients \
                       takes sparse gradients from the host (Sparse16)",
            })
        }
        _ => return Ok(()),
    };
    if got != dtype {
        return Err(Error::GradientType {
            name: name.into(),
            expected: dtype,
            got,
            hint,
        });
    }
    Ok(())
}

/// Checks that `len` f32 can be copied from a caller's buffer for variable `name`.
pub(crate) fn check_gpu_buffer(name: &str, g: &GpuGradient<'_>, len: usize) -> Result<()> {
    check_gpu_bytes(name, g, len, 4)
}

/// Checks that `len` values of `elem_bytes` each (in whole 4-byte words) can be copied from a caller's
/// buffer for variable `name`.
pub(crate) fn check_gpu_bytes(
    name: &str,
    g: &GpuGradient<'_>,
    len: usize,
    elem_bytes: u64,
) -> Result<()> {
    let reason = if !g.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
        Some(format!("usage {:?} lacks COPY_SRC", g.buffer.usage()))
    } else if !g.offset.is_multiple_of(4) {
        Some(format!("offset {} is not a multiple of 4", g.offset))
    } else if (len as u64)
        .checked_mul(elem_bytes)
        .map(|bytes| bytes.next_multiple_of(4))
        .and_then(|bytes| g.offset.checked_add(bytes))
        .is_none_or(|end| end > g.buffer.size())
    {
        Some(format!(
            "offset {} + {len} values x {elem_bytes} bytes (in whole 4-byte words) exceeds the \
             buffer's {} bytes",
            g.offset,
            g.buffer.size()
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::GradientBuffer {
            name: name.into(),
            reason,
        }),
        None => Ok(()),
    }
}
