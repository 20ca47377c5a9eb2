//! Unit tests of `src/step/plan.rs` (kept apart so that the module stays readable).
#[test]
fn q8_blocks_per_row_is_the_most_blocks_any_row_touches() {
    for block in [64u64, 256, 1024] {
        for row_len in (1..=70).chain([255, 256, 257, 300, 1000, 1024, 2048, 3000]) {
            let most = (0..4 * block)
                .map(|r| (r * row_len + row_len - 1) / block - r * row_len / block + 1)
                .max()
                .unwrap();
            assert_eq!(
                super::q8_blocks_per_row(row_len, block),
                most,
                "{row_len} {block}"
            );
        }
    }
}

use super::*;
use crate::step::sparse_prep::HeadRegions;
use crate::step::types::Gradient;
use crate::Indices;
use proptest::prelude::*;

fn cfg(max_groups: u32, per_var: bool, jobs: bool, lazy: bool) -> PlanConfig {
    PlanConfig {
        workgroup_size: 4,
        vec4s_per_invocation: 1,
        max_groups,
        per_var,
        var_options: false,
        skip_nonfinite: false,
        stochastic: false,
        lazy,
        lazy_exact: false,
        lazy_history: 0,
        jobs_needed: jobs,
        use_squares: false,
    }
}

fn layout(lens: &[usize], chunk_limit: u64, align: u64) -> Layout {
    let mut l = Layout::new(1, chunk_limit, align);
    for (i, &n) in lens.iter().enumerate() {
        let name = format!("v{i}");
        let p = l.plan_variable(&name, &[n], n, Default::default()).unwrap();
        l.commit_plain(&name, &[n], p);
    }
    l
}

/// Vec4 `(chunk, index)` covered by the dense dispatches, each with its multiplicity, checking on the
/// way that each dispatch's grid holds its range and stays within the limits.
fn dense_coverage(
    plan: &Plan,
    c: &PlanConfig,
    chunks: usize,
) -> Vec<std::collections::BTreeMap<u64, u32>> {
    let mut cover = vec![std::collections::BTreeMap::new(); chunks];
    for d in &plan.dispatches {
        if !matches!(d.which, Which::Dense | Which::DenseAt) {
            continue;
        }
        let p = d.params;
        assert!(p.begin < p.end);
        assert_eq!(d.which == Which::DenseAt, p.begin > 0);
        assert!(p.groups_x >= 1 && p.groups_x <= c.max_groups);
        assert!(d.groups_y >= 1 && d.groups_y <= c.max_groups);
        // Enough invocations for the range, computed without overflow in u64 (the kernels'
        // u32 index math: begin + global id stays below 2^32 since end <= chunk limit <= 2^30).
        let per_group = u64::from(c.workgroup_size * c.vec4s_per_invocation);
        let invocations = u64::from(p.groups_x) * u64::from(d.groups_y) * per_group;
        assert!(invocations >= u64::from(p.end - p.begin));
        assert!(u64::from(p.begin) + invocations < 1 << 32);
        for i in p.begin..p.end {
            *cover[d.chunk].entry(u64::from(i)).or_insert(0) += 1;
        }
    }
    cover
}

#[test]
fn one_dispatch_per_chunk_when_every_variable_steps_even_with_alignment_gaps() {
    let l = layout(&[3, 5, 1, 17], 1 << 20, 16);
    let parts = vec![Part::Dense; 4];
    let mut out = Plan::default();
    let c = cfg(65535, false, false, true);
    plan(
        &c,
        Params::default(),
        &l,
        &parts,
        &SparsePrep::default(),
        &mut out,
    );
    assert_eq!(out.dispatches.len(), 1);
    let p = out.dispatches[0].params;
    assert_eq!((p.begin, p.end), (0, 48 + 5));
}

#[test]
fn an_absent_variable_splits_the_run() {
    let l = layout(&[4, 4, 4], 1 << 20, 1);
    let parts = vec![Part::Dense, Part::Absent, Part::Dense];
    let mut out = Plan::default();
    plan(
        &cfg(65535, false, false, true),
        Params::default(),
        &l,
        &parts,
        &SparsePrep::default(),
        &mut out,
    );
    let ranges: Vec<(u32, u32)> = out
        .dispatches
        .iter()
        .map(|d| (d.params.begin, d.params.end))
        .collect();
    assert_eq!(ranges, vec![(0, 1), (2, 3)]);
}

#[test]
fn sparse_rows_of_a_split_table_are_dispatched_per_chunk() {
    // 10 rows of 4 elements, chunks of 4 vec4 (4 rows each).
    let mut l = Layout::new(1, 4, 1);
    let p = l
        .plan_variable("table", &[10, 4], 40, Default::default())
        .unwrap();
    l.commit_plain("table", &[10, 4], p);
    let rows = [9i64, 0, 5, 0];
    let values = vec![1.0f32; 16];
    let id = l.id(0);
    let grads = [(
        id,
        Gradient::Sparse {
            indices: Indices::I64(&rows),
            values: &values,
        },
    )];
    let mut sp = SparsePrep::default();
    sp.prepare(&l, grads.iter().copied(), 1, &HeadRegions::default());
    let mut out = Plan::default();
    plan(
        &cfg(65535, false, false, true),
        Params::default(),
        &l,
        &[Part::Sparse],
        &sp,
        &mut out,
    );
    let lazy: Vec<(usize, u32, u32)> = out
        .dispatches
        .iter()
        .filter(|d| d.which == Which::Lazy)
        .map(|d| (d.chunk, d.params.begin, d.params.end))
        .collect();
    // Distinct rows 0, 5, 9: row 0 in chunk 0, row 5 in chunk 1, row 9 in chunk 2.
    assert_eq!(lazy, vec![(0, 0, 4), (1, 4, 8), (2, 8, 12)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every vec4 of every dense-updated variable is covered exactly once; nothing of an absent or
    /// lazily updated variable is; each variable's work is one contiguous range inside one
    /// dispatch (or one per segment); every dispatch stays within the grid limits.
    #[test]
    fn dense_dispatches_cover_every_listed_vec4_exactly_once(
        lens in proptest::collection::vec(0usize..300, 1..12),
        parts_seed in proptest::collection::vec(0u8..3, 12),
        chunk_limit in 8u64..200,
        align_pow in 0u32..3,
        max_groups in 1u32..6,
        per_var in any::<bool>(),
        var_options in any::<bool>(),
    ) {
        let align = 1u64 << align_pow;
        let l = layout(&lens, chunk_limit.max(align), align);
        let parts: Vec<Part> = (0..lens.len())
            .map(|i| match parts_seed[i] {
                0 => Part::Absent,
                // A frozen variable (per-variable options) takes part as an absent one.
                1 if var_options => Part::Frozen,
                _ => Part::Dense,
            })
            .collect();
        let c = PlanConfig { var_options, ..cfg(max_groups, per_var, false, true) };
        let mut out = Plan::default();
        plan(&c, Params::default(), &l, &parts, &SparsePrep::default(), &mut out);
        let cover = dense_coverage(&out, &c, l.chunks.len());
        // Exactly once.
        for chunk in &cover {
            prop_assert!(chunk.values().all(|&n| n == 1));
        }
        // Every vec4 of a listed variable covered; no vec4 of another variable.
        for (var, v) in l.variables.iter().enumerate() {
            for s in &v.segments {
                for i in s.offset..s.offset + s.vec4s() {
                    let covered = cover[s.chunk].contains_key(&i);
                    prop_assert_eq!(covered, parts[var] == Part::Dense, "var {} vec4 {}", var, i);
                }
            }
        }
        // Nothing past a chunk's capacity.
        for (ci, chunk) in cover.iter().enumerate() {
            if let Some((&last, _)) = chunk.iter().next_back() {
                prop_assert!(last < l.chunks[ci].capacity);
            }
        }
        // Per-variable state and options: every dense dispatch searches its own chunk's segment
        // map, and the variable it finds for each vec4 of a listed variable is that variable.
        if per_var || var_options {
            let (regions, entries) = l.segment_map();
            for d in out.dispatches.iter().filter(|d| matches!(d.which, Which::Dense | Which::DenseAt)) {
                prop_assert_eq!((d.params.seg_base, d.params.seg_len), regions[d.chunk]);
                let (base, n) = regions[d.chunk];
                let starts = &entries[base as usize - l.variables.len()..][..n as usize];
                let vars = &entries[(base + n) as usize - l.variables.len()..][..n as usize];
                for (var, v) in l.variables.iter().enumerate() {
                    for s in v.segments.iter().filter(|s| s.chunk == d.chunk && parts[var] == Part::Dense) {
                        for i in s.offset..s.offset + s.vec4s() {
                            if i < u64::from(d.params.begin) || i >= u64::from(d.params.end) {
                                continue;
                            }
                            // The kernel's search: the last start <= i.
                            let k = starts.partition_point(|e| u64::from(e[3]) <= i) - 1;
                            prop_assert_eq!(vars[k][3] as usize, var);
                            // And the index of the vec4's first element in the variable.
                            let at = u64::from(starts[k][0]) + (i - u64::from(starts[k][3])) * 4;
                            prop_assert_eq!(at, s.first_elem as u64 + (i - s.offset) * 4);
                        }
                    }
                }
            }
        }
    }

    /// Norm jobs cover every element of every dense gradient exactly once, in tiles of at most
    /// NORM_TILE, and each variable's jobs are contiguous in the job table.
    #[test]
    fn norm_jobs_cover_every_dense_element_once_and_contiguously(
        lens in proptest::collection::vec(0usize..400, 1..8),
        present in proptest::collection::vec(any::<bool>(), 8),
        chunk_limit in 8u64..100,
    ) {
        let l = layout(&lens, chunk_limit, 1);
        let parts: Vec<Part> = (0..lens.len())
            .map(|i| if present[i] { Part::Dense } else { Part::Absent })
            .collect();
        let c = cfg(65535, true, true, true);
        let mut out = Plan::default();
        plan(&c, Params::default(), &l, &parts, &SparsePrep::default(), &mut out);
        for (var, v) in l.variables.iter().enumerate() {
            let [first, count, _, _] = out.var_step[var];
            let jobs = &out.jobs[first as usize..(first + count) as usize];
            prop_assert!(jobs.iter().all(|j| j[2] == var as u32));
            let total: u64 = jobs.iter().map(|j| u64::from(j[1])).sum();
            let expected = if parts[var] == Part::Dense { v.len as u64 } else { 0 };
            prop_assert_eq!(total, expected);
            prop_assert!(jobs.iter().all(|j| u64::from(j[1]) <= NORM_TILE));
        }
    }
}

#[test]
fn the_largest_ranges_the_limits_allow_fit_u32_index_math() {
    // A chunk of 2^30 vec4 (16 GiB, the cap) on a device with 65,535 workgroups per dimension and
    // workgroups of 1,024, 16 vec4 per invocation.
    let mut l = Layout::new(1, 1 << 30, 16);
    let n = (1usize << 32) - 1; // the most elements a variable may have
    let p = l
        .plan_variable("huge", &[n], n, Default::default())
        .unwrap();
    l.commit_plain("huge", &[n], p);
    for (wg, per) in [(1024, 16), (64, 1), (1, 1)] {
        let c = PlanConfig {
            workgroup_size: wg,
            vec4s_per_invocation: per,
            ..cfg(65535, false, false, true)
        };
        let mut out = Plan::default();
        plan(
            &c,
            Params::default(),
            &l,
            &[Part::Dense],
            &SparsePrep::default(),
            &mut out,
        );
        let mut next = 0u64;
        for d in &out.dispatches {
            let p = d.params;
            assert_eq!(u64::from(p.begin), next);
            let per_group = u64::from(wg * per);
            let inv = u64::from(p.groups_x) * u64::from(d.groups_y) * per_group;
            assert!(inv >= u64::from(p.end - p.begin));
            assert!(u64::from(p.begin) + inv <= 1 << 32, "{wg} {per}: {p:?}");
            next = u64::from(p.end);
        }
        assert_eq!(next, (n as u64).div_ceil(4));
    }
}
