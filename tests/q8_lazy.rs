//! Lazy sparse steps on 8-bit quantized state (`rmsprop_lazy_q8.wgsl`) against the CPU twin, bit for
//! bit in values, codes and block absmax: rows of 1 to 1,000 elements (several rows per block, rows
//! spanning blocks, rows starting inside a block), blocks of 64 and 256, duplicates and unsorted
//! indices, the last partial block, tables split across pool buffers, clipping, several variables;
//! blocks without a listed row keep codes and absmax bit for bit; what is refused.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{ctx, Rng};
use safetensors::SafeTensors;
use wgpu_rmsprop::quant::Quantized;
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, Error, Gradient, Indices, OptimizerOptions, Preset, RmsProp, RmsPropConfig,
    RmsPropConfigBuilder, Slot, SparseMode, StorageTypes, VarId,
};

fn q8() -> StorageTypes {
    StorageTypes {
        state: Dtype::Q8,
        ..StorageTypes::default()
    }
}

/// A fresh directory (tests run in parallel threads: a counter keeps their directories apart).
fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "wgpu-rmsprop-q8-lazy-{tag}-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How many elements differ in bits, and the first (no megabyte dumps on failure).
fn same_bits(got: &[u32], want: &[u32], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    let diff = (0..got.len()).filter(|&i| got[i] != want[i]).count();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{label}: {diff} of {} differ, first [{i}]: {:#x} vs {:#x}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The codes and absmax of every q8 slot in a checkpoint of `opt`: "<slot>/<name>" -> (codes, absmax).
fn raw_q8(opt: &mut RmsProp, dir: &Path, tag: &str) -> HashMap<String, (Vec<u8>, Vec<u32>)> {
    let path = dir.join(format!("{tag}.safetensors"));
    opt.save_checkpoint(&path, true).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let Some(rest) = name.strip_prefix("slots/") else {
            continue;
        };
        let Some(base) = rest.strip_suffix("/absmax") else {
            continue;
        };
        let absmax = view
            .data()
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let codes = st.tensor(&format!("slots/{base}")).unwrap().data().to_vec();
        out.insert(base.to_string(), (codes, absmax));
    }
    out
}

/// A slot, its checkpoint name, the twin's values and its codes and absmax (if quantized).
type SlotView<'a> = (Slot, &'a str, Option<&'a Vec<f32>>, Option<&'a Quantized>);

/// Every variable and slot against the twin: values bit for bit, and the codes and absmax of each
/// quantized slot.
fn check(
    opt: &mut RmsProp,
    r: &Reference,
    ids: &[VarId],
    names: &[String],
    dir: &Path,
    label: &str,
) {
    let raw = raw_q8(opt, dir, "check");
    for (k, &id) in ids.iter().enumerate() {
        let s = &r.vars[k];
        let name = &names[k];
        same_bits(
            &bits(&opt.read_variable(id).unwrap()),
            &bits(&s.x),
            &format!("{label} {name} x"),
        );
        let slots: [SlotView; 3] = [
            (
                Slot::Velocity,
                "velocity",
                Some(&s.v),
                s.q8.as_ref().map(|q| &q.v),
            ),
            (
                Slot::Momentum,
                "momentum",
                s.m.as_ref(),
                s.q8.as_ref().and_then(|q| q.m.as_ref()),
            ),
            (
                Slot::AverageGradient,
                "average_gradient",
                s.a.as_ref(),
                s.q8.as_ref().and_then(|q| q.a.as_ref()),
            ),
        ];
        for (slot, sname, want, quantized) in slots {
            let Some(want) = want else { continue };
            let got = opt.read_slot(id, slot).unwrap();
            same_bits(&bits(&got), &bits(want), &format!("{label} {name} {sname}"));
            if let Some(q) = quantized {
                let (codes, absmax) = &raw[&format!("{sname}/{name}")];
                let want_codes: Vec<u32> = q.codes.iter().map(|&c| u32::from(c)).collect();
                let got_codes: Vec<u32> = codes.iter().map(|&c| u32::from(c)).collect();
                same_bits(
                    &got_codes,
                    &want_codes,
                    &format!("{label} {name} {sname} codes"),
                );
                same_bits(
                    absmax,
                    &bits(&q.absmax),
                    &format!("{label} {name} {sname} absmax"),
                );
            }
        }
    }
}

/// One table per `(rows, row_len)`; `steps` lazy steps listing `listed` rows each (duplicates and
/// unsorted order included, the last row always among them: the partial last block).
#[allow(clippy::too_many_arguments)]
fn run(
    b: RmsPropConfigBuilder,
    options: OptimizerOptions,
    tables: &[(usize, usize)],
    listed: usize,
    steps: usize,
    seed: u64,
    label: &str,
) -> (RmsProp, Reference, Vec<VarId>) {
    let config = b.sparse_mode(SparseMode::Lazy).build().unwrap();
    let mut opt = RmsProp::with_options(ctx(), config.clone(), options).unwrap();
    let mut r = Reference::new(config);
    let mut rng = Rng::new(seed);
    let dir = temp_dir(&format!("run-{seed}"));
    let (mut ids, mut names) = (Vec::new(), Vec::new());
    for (k, &(rows, row_len)) in tables.iter().enumerate() {
        let init = rng.vec(rows * row_len, 1.0, 0);
        let name = format!("t{k}");
        ids.push(opt.add_variable(&name, &[rows, row_len], &init).unwrap());
        r.add_variable(&[rows, row_len], &init);
        names.push(name);
    }
    for t in 0..steps {
        let mut all_indices = Vec::new();
        let mut all_values = Vec::new();
        for &(rows, row_len) in tables {
            let mut idx: Vec<usize> = (0..listed)
                .map(|_| (rng.next_f32().abs() * rows as f32) as usize % rows)
                .collect();
            idx.push(rows - 1);
            idx.push(idx[0]);
            // Scales from 1 down to 1e-5: blocks whose absmax moves, and blocks whose absmax stays.
            let scale = 10f32.powi(-((t % 6) as i32));
            all_values.push(rng.vec(idx.len() * row_len, scale, 5));
            all_indices.push(idx);
        }
        let i64s: Vec<Vec<i64>> = all_indices
            .iter()
            .map(|v| v.iter().map(|&i| i as i64).collect())
            .collect();
        let g: Vec<(VarId, Gradient)> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                let indices = Indices::I64(&i64s[k]);
                (
                    id,
                    Gradient::Sparse {
                        indices,
                        values: &all_values[k],
                    },
                )
            })
            .collect();
        opt.apply(&g).unwrap();
        let rg: Vec<Option<RefGradient>> = all_indices
            .iter()
            .zip(&all_values)
            .map(|(indices, values)| Some(RefGradient::Sparse { indices, values }))
            .collect();
        r.step(&rg).unwrap();
        check(
            &mut opt,
            &r,
            &ids,
            &names,
            &dir,
            &format!("{label} step {}", t + 1),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    (opt, r, ids)
}

#[test]
fn lazy_steps_match_the_twin_in_values_codes_and_absmax() {
    for preset in [Preset::Keras, Preset::Torch, Preset::Optax] {
        for (momentum, centered) in [(0.0, false), (0.9, false), (0.9, true)] {
            let b = RmsPropConfig::preset(preset)
                .learning_rate(0.01)
                .momentum(momentum)
                .centered(centered)
                .q8_min_size(64)
                .storage(q8());
            // Row lengths 1 (256 rows per block), 3 (rows inside blocks and across their ends),
            // 64, 300 and 1,000 (rows spanning 2-5 blocks, not starting on one); 17 rows of 300: a
            // partial last block.
            let tables = [(5000, 1), (1001, 3), (70, 64), (17, 300), (9, 1000)];
            run(
                b,
                OptimizerOptions::default(),
                &tables,
                12,
                4,
                u64::from(centered) + (momentum * 10.0) as u64,
                &format!("{preset:?} m={momentum} c={centered}"),
            );
        }
    }
}

#[test]
fn block_sizes_splits_clipping_and_options() {
    // Blocks of 64 elements with a workgroup of 16 (one block a workgroup) and of 256 (four), and of
    // 1,024 with 256. Clipping by value: the norms' summation order differs from the twin's by an ulp
    // (see tests/storage.rs), so clipnorm is left to the tests with tolerances.
    for (block, wg) in [(64, 16), (64, 256), (1024, 256)] {
        let b = RmsPropConfig::preset(Preset::Keras)
            .learning_rate(0.01)
            .momentum(0.9)
            .centered(true)
            .clipvalue(0.05)
            .q8_block(block)
            .q8_min_size(64)
            .storage(q8());
        let options = OptimizerOptions {
            workgroup_size: wg,
            ..OptimizerOptions::default()
        };
        run(
            b,
            options,
            &[(3001, 7), (64, 33)],
            40,
            3,
            7,
            &format!("block {block} wg {wg}"),
        );
    }
    // A table split across pool buffers of 8 blocks (the split falls inside rows).
    let b = RmsPropConfig::preset(Preset::Keras)
        .learning_rate(0.01)
        .momentum(0.9)
        .clipvalue(0.5)
        .q8_block(64)
        .q8_min_size(64)
        .storage(q8());
    let options = OptimizerOptions {
        max_chunk_bytes: Some(8 * 64 * 4),
        ..OptimizerOptions::default()
    };
    run(b, options, &[(300, 13)], 30, 3, 9, "split");
    // A bf16 variable with stochastic rounding (unlisted elements keep their values), and an f32
    // variable with its f16 copy.
    for (storage, sr) in [
        (
            StorageTypes {
                variable: Dtype::Bf16,
                ..q8()
            },
            true,
        ),
        (
            StorageTypes {
                copy: Some(Dtype::F16),
                ..q8()
            },
            false,
        ),
    ] {
        let mut b = RmsPropConfig::preset(Preset::Keras)
            .learning_rate(0.01)
            .momentum(0.9)
            .q8_min_size(64)
            .storage(storage);
        if sr {
            b = b.stochastic_rounding(77);
        }
        let label = format!("{storage:?}");
        let (mut opt, r, ids) = run(
            b,
            OptimizerOptions::default(),
            &[(999, 5)],
            20,
            3,
            4,
            &label,
        );
        if storage.copy.is_some() {
            let copy = opt
                .read_many(&[(ids[0], wgpu_rmsprop::Tensor::Copy)])
                .unwrap();
            let want: Vec<f32> = r.vars[0].x.iter().map(|&x| Dtype::F16.round(x)).collect();
            same_bits(&bits(&copy[0]), &bits(&want), "f16 copy");
        }
    }
}

#[test]
fn blocks_without_listed_rows_keep_codes_and_absmax() {
    let b = RmsPropConfig::preset(Preset::Keras)
        .learning_rate(0.01)
        .momentum(0.9)
        .q8_min_size(64)
        .storage(q8());
    // 1,000 rows of 16: 16 rows per block of 256, 63 blocks.
    let (mut opt, mut r, ids) = run(
        b,
        OptimizerOptions::default(),
        &[(1000, 16)],
        30,
        2,
        3,
        "warm",
    );
    let dir = temp_dir("untouched");
    let before = raw_q8(&mut opt, &dir, "before");
    let before_twin = r.vars[0].q8.clone().unwrap();
    // Rows 20 and 21 (block 1) and 999 (the last block): a large row, so the absmax changes, and a
    // tiny one, so it does not.
    let indices = [20usize, 21, 999];
    let mut values = vec![1e-9f32; 3 * 16];
    values[..16].fill(50.0);
    let i64s: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    opt.apply(&[(
        ids[0],
        Gradient::Sparse {
            indices: Indices::I64(&i64s),
            values: &values,
        },
    )])
    .unwrap();
    r.step(&[Some(RefGradient::Sparse {
        indices: &indices,
        values: &values,
    })])
    .unwrap();
    let after = raw_q8(&mut opt, &dir, "after");
    let twin = r.vars[0].q8.clone().unwrap();
    for slot in ["velocity", "momentum"] {
        let (c0, a0) = &before[&format!("{slot}/t0")];
        let (c1, a1) = &after[&format!("{slot}/t0")];
        for blk in 0..63 {
            let codes = blk * 256..((blk + 1) * 256).min(16_000);
            if blk == 1 {
                // The large row moved the absmax: the block was quantized again.
                assert_ne!(a0[blk], a1[blk], "{slot} block 1 absmax");
            } else if blk == 62 {
                // Unlisted rows 992..998 of the last block keep their codes where the absmax stayed.
                if a0[blk] == a1[blk] {
                    assert_eq!(c0[992 * 16 - 62 * 256..], c1[992 * 16 - 62 * 256..]);
                }
            } else {
                assert_eq!(a0[blk], a1[blk], "{slot} block {blk} absmax");
                assert_eq!(c0[codes.clone()], c1[codes], "{slot} block {blk} codes");
            }
        }
    }
    // The twin says the same of its own state.
    for blk in (0..63).filter(|&b| b != 1 && b != 62) {
        let codes = blk * 256..(blk + 1) * 256;
        assert_eq!(before_twin.v.codes[codes.clone()], twin.v.codes[codes]);
        assert_eq!(
            before_twin.v.absmax[blk].to_bits(),
            twin.v.absmax[blk].to_bits()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sequential_duplicates_and_gpu_indices_are_refused() {
    // TF's raw kernels apply duplicates one after another: each pair would be quantized.
    let config = RmsPropConfig::preset(Preset::TfRaw)
        .storage(q8())
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
    let id = opt.add_variable("t", &[1024, 8], &vec![0.5; 8192]).unwrap();
    let before = common::kept_state(&mut opt, &[id]);
    let e = opt
        .apply(&[(
            id,
            Gradient::Sparse {
                indices: Indices::I64(&[1]),
                values: &[0.1; 8],
            },
        )])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "sparse_mode",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(common::kept_state(&mut opt, &[id]), before);
    // The twin refuses it too.
    let mut r = Reference::new(config);
    r.add_variable(&[1024, 8], &vec![0.5; 8192]);
    let e = r
        .step(&[Some(RefGradient::Sparse {
            indices: &[1],
            values: &[0.1; 8],
        })])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "sparse_mode",
                ..
            }
        ),
        "{e}"
    );

    // Indices on the GPU are grouped in no order: the block update needs them sorted.
    let config = RmsPropConfig::preset(Preset::Keras)
        .storage(q8())
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config).unwrap();
    let id = opt.add_variable("t", &[1024, 8], &vec![0.5; 8192]).unwrap();
    let before = common::kept_state(&mut opt, &[id]);
    let device = ctx().device();
    use wgpu::util::DeviceExt;
    let idx = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&[1i32, 2]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let vals = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&[0.1f32; 16]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let e = opt
        .apply(&[(
            id,
            Gradient::SparseGpuIndices {
                indices: wgpu_rmsprop::GpuIndices {
                    buffer: &idx,
                    offset: 0,
                    len: 2,
                },
                values: wgpu_rmsprop::GpuGradient {
                    buffer: &vals,
                    offset: 0,
                },
            },
        )])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "sparse_mode",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(common::kept_state(&mut opt, &[id]), before);
}
