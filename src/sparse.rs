//! Host side of sparse (IndexedSlices) gradients: index types, validation, and grouping the indices by
//! row into the layout the sparse kernels read. Pure functions (no GPU), so they can be fuzzed.

use crate::error::{Error, Result};

/// Row indices of a sparse gradient, in any of the usual integer types.
#[derive(Debug, Clone, Copy)]
pub enum Indices<'a> {
    /// `i32` (TensorFlow's default).
    I32(&'a [i32]),
    /// `i64` (PyTorch's default).
    I64(&'a [i64]),
    /// `u32`.
    U32(&'a [u32]),
}

impl Indices<'_> {
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            Indices::I32(s) => s.len(),
            Indices::I64(s) => s.len(),
            Indices::U32(s) => s.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k`-th index, widened.
    pub fn get(&self, k: usize) -> i64 {
        match self {
            Indices::I32(s) => i64::from(s[k]),
            Indices::I64(s) => s[k],
            Indices::U32(s) => i64::from(s[k]),
        }
    }
}

/// Checks a sparse gradient for a variable `name` of `shape`: the variable has rows, every index is in
/// `[0, rows)`, there are `len(indices) * row_len` values, and the sizes fit the kernels' u32 indexing.
pub fn validate(
    name: &str,
    shape: &[usize],
    indices: &Indices<'_>,
    values_len: usize,
) -> Result<()> {
    let Some(&rows) = shape.first() else {
        return Err(Error::SparseScalar { name: name.into() });
    };
    let row_len: usize = shape[1..].iter().product();
    let bad_length = || Error::SparseValuesLength {
        name: name.into(),
        indices: indices.len(),
        row_len,
        got: values_len,
    };
    if indices.len().checked_mul(row_len) != Some(values_len) {
        return Err(bad_length());
    }
    // Positions and values are addressed with u32 in the kernels.
    if values_len as u64 >= u64::from(u32::MAX) || indices.len() as u64 >= u64::from(u32::MAX / 4) {
        return Err(bad_length());
    }
    for k in 0..indices.len() {
        let i = indices.get(k);
        if i < 0 || i as u64 >= rows as u64 {
            return Err(Error::IndexOutOfRange {
                name: name.into(),
                index: i,
                position: k,
                rows,
            });
        }
    }
    Ok(())
}

/// Words of the grouped layout before the distinct rows: the number of distinct rows, and a cursor the
/// GPU grouping pass uses.
pub const HEADER: usize = 2;

/// Appends to `out` the grouped layout of `indices` (already validated) that the sparse kernels read:
/// `[distinct, 0]`, then `cap` distinct rows (in increasing order), `cap` first and `cap` one-past-last
/// positions into the position list, then the positions of each row's duplicates, in list order. On the
/// host `cap` is the number of distinct rows; the GPU grouping pass writes the same layout with
/// `cap = len(indices)` (rows in any order, each row's positions in list order). Returns the number of
/// distinct rows. `keys` is scratch space (reused between steps, so no allocation in steady state).
///
/// ```
/// use wgpu_rmsprop::sparse::{group_rows, Indices};
/// let (mut keys, mut out) = (Vec::new(), Vec::new());
/// let distinct = group_rows(&Indices::I32(&[5, 2, 5]), &mut keys, &mut out);
/// // [2, 0] | rows 2, 5 | firsts 0, 1 | lasts 1, 3 | positions: row 2 <- #1, row 5 <- #0, #2
/// assert_eq!((distinct, out), (2, vec![2, 0, 2, 5, 0, 1, 1, 3, 1, 0, 2]));
/// ```
pub fn group_rows(indices: &Indices<'_>, keys: &mut Vec<u64>, out: &mut Vec<u32>) -> u32 {
    keys.clear();
    keys.extend((0..indices.len()).map(|k| ((indices.get(k) as u64) << 32) | k as u64));
    keys.sort_unstable();
    let base = out.len();
    out.extend([0, 0]);
    // Row starts in the sorted keys: distinct rows, then firsts, then lasts (the next start).
    fn starts(keys: &[u64]) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut prev = u64::MAX;
        keys.iter()
            .enumerate()
            .filter(move |(_, &key)| std::mem::replace(&mut prev, key >> 32) != key >> 32)
            .map(|(k, &key)| (k as u32, (key >> 32) as u32))
    }
    out.extend(starts(keys).map(|(_, row)| row));
    let unique = (out.len() - base - HEADER) as u32;
    out[base] = unique;
    out.extend(starts(keys).map(|(k, _)| k));
    if unique > 0 {
        out.extend(starts(keys).skip(1).map(|(k, _)| k));
        out.push(keys.len() as u32);
    }
    out.extend(keys.iter().map(|&key| (key & 0xffff_ffff) as u32));
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_keeps_list_order_within_a_row() {
        let mut keys = Vec::new();
        let mut out = Vec::new();
        let u = group_rows(&Indices::I64(&[7, 2, 9, 7, 0, 7]), &mut keys, &mut out);
        assert_eq!(u, 4);
        // [4, 0] | rows 0 2 7 9 | firsts 0 1 2 5 | lasts 1 2 5 6 | positions
        assert_eq!(
            out,
            vec![4, 0, 0, 2, 7, 9, 0, 1, 2, 5, 1, 2, 5, 6, 4, 1, 0, 3, 5, 2]
        );
    }

    #[test]
    fn validation_names_the_bad_index() {
        let e = validate("t", &[4, 2], &Indices::I32(&[1, -3]), 4).unwrap_err();
        assert!(matches!(
            e,
            Error::IndexOutOfRange {
                index: -3,
                position: 1,
                rows: 4,
                ..
            }
        ));
        let e = validate("t", &[4, 2], &Indices::U32(&[4]), 2).unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { index: 4, .. }));
        assert!(validate("t", &[4, 2], &Indices::U32(&[3]), 3).is_err());
        assert!(validate("t", &[], &Indices::U32(&[]), 0).is_err());
        assert!(validate("t", &[0, 2], &Indices::U32(&[]), 0).is_ok());
    }

    #[test]
    fn an_empty_list_groups_to_an_empty_layout() {
        // Found by the sparse_indices fuzz target: no stray "last" entry without rows.
        let (mut keys, mut out) = (Vec::new(), Vec::new());
        assert_eq!(group_rows(&Indices::I32(&[]), &mut keys, &mut out), 0);
        assert_eq!(out, vec![0, 0]);
    }
}
