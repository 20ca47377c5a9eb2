//! Edges of 16-bit storage found by an independent review: copy slices aligned for binding, a loss
//! scale set later refused, the copy only of f32 variables, stochastic rounding of the last sequential
//! pair, error messages naming the right types; and areas checked against the CPU twin bit for bit
//! (interleaved chunks growing, slot kinds gained later, split variables with stochastic rounding,
//! record_read of 16-bit items).

mod common;

use common::{ctx, Rng};
use wgpu_rmsprop::half::bf16;
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, DuplicateIndices, GpuGradient, Gradient, HalfSlice, Indices, OptimizerOptions, Preset,
    RmsProp, RmsPropConfig, Slot, SparseMode, StorageTypes, Tensor, VarId, VarOptions,
};
use Dtype::{Bf16, F16, F32};

fn st(variable: Dtype, gradient: Dtype, state: Dtype, copy: Option<Dtype>) -> StorageTypes {
    StorageTypes {
        variable,
        gradient,
        state,
        copy,
    }
}

fn with(storage: StorageTypes) -> VarOptions {
    VarOptions {
        storage: Some(storage),
        ..VarOptions::default()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// `StorageTypes::copy` with f32 variables, gradients and state: the copy buffer is 16-bit, so the
/// chunk's variables must start on twice as many vec4s for the copy slices to be aligned for binding
/// (as `variable_slices` are: "offsets aligned for binding").
#[test]
fn copy_slices_are_aligned_for_binding() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .storage(st(F32, F32, F32, Some(F16)))
        .build()
        .unwrap();
    let o = OptimizerOptions {
        slice_alignment: Some(256),
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), cfg, o).unwrap();
    let a = opt.add_variable("a", &[3], &[1.0; 3]).unwrap();
    let b = opt.add_variable("b", &[5], &[2.0; 5]).unwrap();
    for id in [a, b] {
        for s in opt.variable_slices(id).unwrap() {
            assert_eq!(s.offset % 256, 0, "variable slice {s:?}");
        }
        for s in opt.copy_slices(id).unwrap() {
            assert_eq!(s.offset % 256, 0, "copy slice {s:?}");
        }
    }
    // The slice can be bound as the caller would (a validation error otherwise).
    let s = opt.copy_slices(b).unwrap().remove(0);
    let device = ctx().device();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: true },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }],
    });
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let _bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &s.buffer,
                offset: s.offset,
                size: wgpu::BufferSize::new(s.bound_bytes()),
            }),
        }],
    });
    let err = pollster_block(scope.pop());
    assert!(err.is_none(), "binding the copy slice: {err:?}");
}

fn pollster_block<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        let _ = ctx().device().poll(wgpu::PollType::Poll);
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// A loss scale set after the optimizer was built with 16-bit storage (by the configuration or by a
/// variable's options): the Keras base-class kernel (`keras_base.wgsl`) reads the gradient pool as f32
/// vec4s. It must be refused (as the builder and the twin refuse loss scaling with 16-bit storage), or
/// else the step must be that of `g / scale`.
#[test]
fn loss_scale_set_later_with_16_bit_storage() {
    let bf = StorageTypes::all(Bf16);
    for (default, own) in [(bf, None), (StorageTypes::default(), Some(bf))] {
        let cfg = RmsPropConfig::preset(Preset::Keras)
            .learning_rate(0.01)
            .storage(default)
            .build()
            .unwrap();
        let o = VarOptions {
            storage: own,
            ..VarOptions::default()
        };
        let init = [1.0f32, -0.5, 0.25, 2.0, 1.5];
        let g: Vec<f32> = vec![0.5, 1.0, -2.0, 0.75, 4.0];
        let mut plain = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let p = plain.add_variable_with("w", &[5], &init, &o).unwrap();
        let quarter: Vec<f32> = g.iter().map(|x| x / 4.0).collect();
        plain
            .apply(&[(p, Gradient::Dense16(HalfSlice::Bf16(&to_bf16(&quarter))))])
            .unwrap();
        let want = plain.read_variable(p).unwrap();

        let mut opt = RmsProp::new(ctx(), cfg).unwrap();
        let w = opt.add_variable_with("w", &[5], &init, &o).unwrap();
        if opt.set_loss_scale_factor(4.0).is_err() {
            continue; // refused: fine
        }
        let r = opt.apply(&[(w, Gradient::Dense16(HalfSlice::Bf16(&to_bf16(&g))))]);
        if r.is_err() {
            continue; // refused at the step: fine
        }
        let got = opt.read_variable(w).unwrap();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{own:?}: got {got:?}, want {want:?}"
        );
    }
}

/// A copy with a 16-bit variable: "a copy of the variables in this type". The copy must be the
/// stored variable rounded to the copy's type, at add time and after a step (the kernel stores the copy
/// from the unrounded f32 result, the upload from the unrounded initial values), whether the 16-bit
/// variable comes from the configuration or from a variable's options.
#[test]
fn copy_of_a_16_bit_variable_is_the_variable_rounded() {
    let master = st(F32, F32, F32, Some(F16));
    let bf_var = st(Bf16, F32, F32, Some(F16));
    for (default, own) in [(bf_var, None), (master, Some(bf_var))] {
        let built = RmsPropConfig::builder()
            .learning_rate(0.01)
            .storage(default)
            .build();
        let Ok(cfg) = built else {
            continue; // refused: fine
        };
        let mut opt = RmsProp::new(ctx(), cfg).unwrap();
        let init = [0.1f32, 0.3, -0.7];
        let o = VarOptions {
            storage: own,
            ..VarOptions::default()
        };
        let Ok(w) = opt.add_variable_with("w", &[3], &init, &o) else {
            assert_eq!(opt.num_variables(), 0);
            continue; // refused: fine
        };
        let check = |opt: &mut RmsProp, label: &str| {
            let x = opt.read_variable(w).unwrap();
            let c = opt.read_many(&[(w, Tensor::Copy)]).unwrap().remove(0);
            let want: Vec<f32> = x.iter().map(|&v| F16.round(v)).collect();
            assert_eq!(bits(&c), bits(&want), "{label}: copy {c:?} variable {x:?}");
        };
        check(&mut opt, "after add");
        opt.apply(&[(w, Gradient::Dense(&[0.3, -0.2, 0.1]))])
            .unwrap();
        check(&mut opt, "after a step");
    }
}

/// A slot kind new to the pools (momentum from one variable's options) while chunks of 16-bit state
/// exist: the new buffers of those chunks must be sized in their type, and later steps must match the
/// twin bit for bit (also for the 16-bit variable gaining momentum by `set_variable_options`).
#[test]
fn a_new_slot_kind_with_16_bit_chunks() {
    let cfg = RmsPropConfig::preset(Preset::Keras)
        .learning_rate(0.01)
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut twin = Reference::new(cfg);
    let mut rng = Rng::new(11);
    let bf = StorageTypes::all(Bf16);
    let half_state = st(F32, F32, F16, None);
    let momentum = |storage, m| VarOptions {
        momentum: Some(m),
        storage,
        ..VarOptions::default()
    };
    let vars: Vec<(&[usize], VarOptions)> = vec![
        (&[1001], with(bf)),
        (&[37], with(half_state)),
        (&[5000], momentum(None, 0.9)),
        (&[9], momentum(Some(half_state), 0.5)),
        (&[3, 7], with(bf)),
    ];
    let mut ids = Vec::new();
    for (k, (shape, o)) in vars.iter().enumerate() {
        let init = rng.vec(shape.iter().product(), 2.0, 0);
        ids.push(
            opt.add_variable_with(&format!("v{k}"), shape, &init, o)
                .unwrap(),
        );
        twin.add_variable_with(shape, &init, o).unwrap();
    }
    for t in 0..4 {
        if t == 2 {
            let o = momentum(Some(bf), 0.7);
            opt.set_variable_options(ids[0], &o).unwrap();
            twin.set_variable_options(0, &o).unwrap();
        }
        let gs: Vec<Vec<f32>> = twin
            .vars
            .iter()
            .map(|v| rng.vec(v.x.len(), 1.0, 7))
            .collect();
        let halves: Vec<Vec<bf16>> = gs.iter().map(|g| to_bf16(g)).collect();
        let mut list = Vec::new();
        let mut rg = Vec::new();
        let wide: Vec<Vec<f32>> = halves
            .iter()
            .map(|h| h.iter().map(|x| x.to_f32()).collect())
            .collect();
        for k in 0..ids.len() {
            if twin.vars[k].storage.gradient == Bf16 {
                list.push((ids[k], Gradient::Dense16(HalfSlice::Bf16(&halves[k]))));
                rg.push(Some(RefGradient::Dense(&wide[k])));
            } else {
                list.push((ids[k], Gradient::Dense(&gs[k])));
                rg.push(Some(RefGradient::Dense(&gs[k])));
            }
        }
        opt.apply(&list).unwrap();
        twin.step(&rg).unwrap();
        compare_all(&mut opt, &ids, &twin, &format!("step {t}"));
    }
}

fn compare_all(opt: &mut RmsProp, ids: &[VarId], twin: &Reference, label: &str) {
    for (k, &id) in ids.iter().enumerate() {
        let r = &twin.vars[k];
        let x = opt.read_variable(id).unwrap();
        assert_eq!(bits(&x), bits(&r.x), "{label} v{k} x");
        let v = opt.read_slot(id, Slot::Velocity).unwrap();
        assert_eq!(bits(&v), bits(&r.v), "{label} v{k} velocity");
        if let Some(m) = &r.m {
            let got = opt.read_slot(id, Slot::Momentum).unwrap();
            assert_eq!(bits(&got), bits(m), "{label} v{k} momentum");
        }
        if let Some(a) = &r.a {
            let got = opt.read_slot(id, Slot::AverageGradient).unwrap();
            assert_eq!(bits(&got), bits(a), "{label} v{k} average");
        }
    }
}

/// Stochastic rounding with variables of several storages interleaved, split across small pool
/// buffers (the segment map's first-element word of later segments), partial steps (absent
/// variables: dense runs that start mid-chunk), GPU gradients of odd length and sparse rows scattered
/// into a bf16 gradient pool: bit for bit with the twin.
#[test]
fn stochastic_rounding_with_split_interleaved_variables() {
    for (mode, dups) in [
        (SparseMode::Dense, DuplicateIndices::Keras3),
        (SparseMode::Lazy, DuplicateIndices::Sum),
    ] {
        let cfg = RmsPropConfig::preset(Preset::Keras)
            .learning_rate(0.01)
            .momentum(0.5)
            .sparse_mode(mode)
            .duplicate_indices(dups)
            .stochastic_rounding(99)
            .build()
            .unwrap();
        let o = OptimizerOptions {
            max_chunk_bytes: Some(1024),
            slice_alignment: Some(64),
            ..OptimizerOptions::default()
        };
        let mut opt = RmsProp::with_options(ctx(), cfg.clone(), o).unwrap();
        let mut twin = Reference::new(cfg);
        let mut rng = Rng::new(21);
        let bf = StorageTypes::all(Bf16);
        let mixed = st(Bf16, F32, F16, None);
        let vars: Vec<(Vec<usize>, VarOptions)> = vec![
            (vec![5], VarOptions::default()),
            (vec![301], with(bf)),
            (vec![77], with(mixed)),
            (vec![1003], VarOptions::default()),
            (vec![150, 3], with(bf)),
            (vec![3], with(bf)),
            (vec![999], with(mixed)),
        ];
        let mut ids = Vec::new();
        for (k, (shape, o)) in vars.iter().enumerate() {
            let init = rng.vec(shape.iter().product(), 2.0, 0);
            ids.push(
                opt.add_variable_with(&format!("v{k}"), shape, &init, o)
                    .unwrap(),
            );
            twin.add_variable_with(shape, &init, o).unwrap();
        }
        assert!(opt.variable_slices(ids[6]).unwrap().len() > 1);
        assert!(opt.variable_slices(ids[4]).unwrap().len() > 1);
        for t in 0..5 {
            let gs: Vec<Vec<f32>> = twin
                .vars
                .iter()
                .map(|v| rng.vec(v.x.len(), 1.0, 9))
                .collect();
            let halves: Vec<Vec<bf16>> = gs.iter().map(|g| to_bf16(g)).collect();
            let wide: Vec<Vec<f32>> = halves
                .iter()
                .map(|h| h.iter().map(|x| x.to_f32()).collect())
                .collect();
            let rows: Vec<i64> = vec![149, 0, 7, 0, (t * 31 % 150) as i64, 100];
            let urows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
            let svals = to_bf16(&rng.vec(rows.len() * 3, 1.0, 0));
            let swide: Vec<f32> = svals.iter().map(|x| x.to_f32()).collect();
            // v1's gradient from a GPU buffer (301 halves: 151 words).
            let mut words: Vec<u8> = halves[1]
                .iter()
                .flat_map(|h| h.to_bits().to_le_bytes())
                .collect();
            words.resize(words.len().next_multiple_of(4), 0);
            let buffer = ctx().device().create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 8 + words.len() as u64,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx().queue().write_buffer(&buffer, 8, &words);
            let mut list = Vec::new();
            let mut rg: Vec<Option<RefGradient>> = Vec::new();
            for k in 0..ids.len() {
                let absent = (t + k) % 3 == 0 && k != 4;
                if absent {
                    rg.push(None);
                    continue;
                }
                let g16 = twin.vars[k].storage.gradient == Bf16;
                match k {
                    4 => {
                        list.push((
                            ids[k],
                            Gradient::Sparse16 {
                                indices: Indices::I64(&rows),
                                values: HalfSlice::Bf16(&svals),
                            },
                        ));
                        rg.push(Some(RefGradient::Sparse {
                            indices: &urows,
                            values: &swide,
                        }));
                    }
                    1 => {
                        list.push((
                            ids[k],
                            Gradient::Gpu(GpuGradient {
                                buffer: &buffer,
                                offset: 8,
                            }),
                        ));
                        rg.push(Some(RefGradient::Dense(&wide[k])));
                    }
                    _ if g16 => {
                        list.push((ids[k], Gradient::Dense16(HalfSlice::Bf16(&halves[k]))));
                        rg.push(Some(RefGradient::Dense(&wide[k])));
                    }
                    _ => {
                        list.push((ids[k], Gradient::Dense(&gs[k])));
                        rg.push(Some(RefGradient::Dense(&gs[k])));
                    }
                }
            }
            opt.apply(&list).unwrap();
            twin.step(&rg).unwrap();
            compare_all(&mut opt, &ids, &twin, &format!("{mode:?} step {t}"));
        }
    }
}

/// Pool growth of one storage's chunk while chunks of other storages exist (the GPU copy of a grown
/// chunk's contents in its types, the copy kind included), then steps: bit for bit with the twin, and
/// the copy the rounded variable.
#[test]
fn growth_of_interleaved_chunks_keeps_their_contents() {
    let cfg = RmsPropConfig::preset(Preset::TfRaw)
        .learning_rate(0.01)
        .momentum(0.5)
        .storage(st(F32, F32, F32, Some(Bf16)))
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
    let mut twin = Reference::new(cfg);
    let mut rng = Rng::new(5);
    let half_state = st(F32, F32, F16, Some(Bf16));
    let g16 = st(F32, Bf16, Bf16, Some(Bf16));
    let vars: Vec<(usize, VarOptions)> = vec![
        (7, VarOptions::default()),
        (9, with(half_state)),
        (5, with(g16)),
        (20_001, VarOptions::default()), // grows chunk 0
        (3, with(half_state)),
        (40_003, with(half_state)), // grows chunk 1
        (33_333, with(g16)),        // grows chunk 2
        (11, VarOptions::default()),
    ];
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for (k, (n, o)) in vars.iter().enumerate() {
        let init = rng.vec(*n, 2.0, 0);
        ids.push(
            opt.add_variable_with(&format!("v{k}"), &[*n], &init, o)
                .unwrap(),
        );
        twin.add_variable_with(&[*n], &init, o).unwrap();
        versions.push(opt.layout_version());
        // Steps between additions, so that growth copies state that is not the initial one.
        let gs: Vec<Vec<f32>> = twin
            .vars
            .iter()
            .map(|v| rng.vec(v.x.len(), 1.0, 5))
            .collect();
        let halves: Vec<Vec<bf16>> = gs.iter().map(|g| to_bf16(g)).collect();
        let wide: Vec<Vec<f32>> = halves
            .iter()
            .map(|h| h.iter().map(|x| x.to_f32()).collect())
            .collect();
        let mut list = Vec::new();
        let mut rg = Vec::new();
        for j in 0..ids.len() {
            if twin.vars[j].storage.gradient == Bf16 {
                list.push((ids[j], Gradient::Dense16(HalfSlice::Bf16(&halves[j]))));
                rg.push(Some(RefGradient::Dense(&wide[j])));
            } else {
                list.push((ids[j], Gradient::Dense(&gs[j])));
                rg.push(Some(RefGradient::Dense(&gs[j])));
            }
        }
        opt.apply(&list).unwrap();
        twin.step(&rg).unwrap();
        compare_all(&mut opt, &ids, &twin, &format!("after v{k}"));
        for (j, &id) in ids.iter().enumerate() {
            let x = opt.read_variable(id).unwrap();
            let c = opt.read_many(&[(id, Tensor::Copy)]).unwrap().remove(0);
            let want: Vec<f32> = x.iter().map(|&v| Bf16.round(v)).collect();
            assert_eq!(bits(&c), bits(&want), "after v{k}: v{j} copy");
        }
    }
    assert_eq!(opt.pool_stats().chunks, 3);
    assert!(versions[3] > versions[2] && versions[5] > versions[4] && versions[6] > versions[5]);
}

/// `record_read` of 16-bit tensors of odd length (each item on a 4-byte boundary) and split ones.
#[test]
fn record_read_of_16_bit_items() {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .storage(StorageTypes::all(F16))
        .build()
        .unwrap();
    let o = OptimizerOptions {
        max_chunk_bytes: Some(512),
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), cfg, o).unwrap();
    let a_init: Vec<f32> = (0..5).map(|i| i as f32 + 0.5).collect();
    let b_init: Vec<f32> = (0..301).map(|i| -(i as f32) * 0.25).collect();
    let a = opt.add_variable("a", &[5], &a_init).unwrap();
    let b = opt
        .add_variable_with("b", &[301], &b_init, &with(st(F32, F16, F32, None)))
        .unwrap();
    let c = opt.add_variable("c", &[131], &b_init[..131]).unwrap();
    assert!(opt.variable_slices(c).unwrap().len() > 1);
    let device = ctx().device();
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let items = [
        (a, Tensor::Variable),
        (b, Tensor::Variable),
        (c, Tensor::Variable),
        (a, Tensor::Slot(Slot::Velocity)),
    ];
    let mut encoder = device.create_command_encoder(&Default::default());
    let out = opt.record_read(&mut encoder, &items, &dst, 4).unwrap();
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&dst, 0, &staging, 0, 4096);
    ctx().queue().submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |_| {});
    device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .unwrap();
    let bytes = staging.get_mapped_range(..).unwrap().to_vec();
    let half_at = |at: usize| F16.from_bits16(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(out[0], (4, 5));
    let ga: Vec<f32> = (0..5).map(|i| half_at(4 + 2 * i)).collect();
    assert_eq!(ga, a_init.iter().map(|&x| F16.round(x)).collect::<Vec<_>>());
    assert_eq!(out[1], (16, 301));
    let gb: Vec<f32> = (0..301).map(|i| f32_at(16 + 4 * i)).collect();
    assert_eq!(gb, b_init);
    assert_eq!(out[2].1, 131);
    let gc: Vec<f32> = (0..131)
        .map(|i| half_at(out[2].0 as usize + 2 * i))
        .collect();
    assert_eq!(
        gc,
        b_init[..131]
            .iter()
            .map(|&x| F16.round(x))
            .collect::<Vec<_>>()
    );
    assert_eq!(out[3], (out[2].0 + 264, 5));
}

/// Stochastic rounding with TF raw's sequential duplicates (lazy sparse): documented as "the TF raw
/// sequential duplicates round each listed pair but the last to nearest", so a row listed once is
/// stored stochastically, as a dense step stores it. An update below half a bf16 ulp must then move
/// some elements (about p = 0.2 of them), as it does in a dense step.
#[test]
fn stochastic_rounding_of_the_last_sequential_pair() {
    let n = 1 << 14;
    let cfg = RmsPropConfig::preset(Preset::TfRaw)
        .learning_rate(0.001)
        .storage(StorageTypes::all(Bf16))
        .stochastic_rounding(7)
        .build()
        .unwrap();
    assert_eq!(cfg.duplicate_indices(), DuplicateIndices::Sequential);
    let init = vec![1.5f32; n];
    let mut moved = Vec::new();
    for sparse in [false, true] {
        let mut opt = RmsProp::new(ctx(), cfg.clone()).unwrap();
        let mut twin = Reference::new(cfg.clone());
        let id = opt.add_variable("w", &[n, 1], &init).unwrap();
        twin.add_variable(&[n, 1], &init);
        let g = vec![bf16::from_f32(0.25); n];
        let rows: Vec<i64> = (0..n as i64).collect();
        let urows: Vec<usize> = (0..n).collect();
        let wide = vec![0.25f32; n];
        let grad = match sparse {
            false => Gradient::Dense16(HalfSlice::Bf16(&g)),
            true => Gradient::Sparse16 {
                indices: Indices::I64(&rows),
                values: HalfSlice::Bf16(&g),
            },
        };
        opt.apply(&[(id, grad)]).unwrap();
        let rg = match sparse {
            false => RefGradient::Dense(&wide),
            true => RefGradient::Sparse {
                indices: &urows,
                values: &wide,
            },
        };
        twin.step(&[Some(rg)]).unwrap();
        let x = opt.read_variable(id).unwrap();
        assert_eq!(
            bits(&x),
            bits(&twin.vars[0].x),
            "sparse {sparse}: gpu vs twin"
        );
        moved.push(x.iter().filter(|&&v| v != 1.5).count());
    }
    let (dense, sparse) = (moved[0], moved[1]);
    assert!(dense > n / 20, "dense step: {dense} of {n} moved");
    assert!(
        sparse > n / 20,
        "sequential sparse step: {sparse} of {n} moved (dense: {dense}): no stochastic rounding"
    );
}

/// Sparse values on the GPU (f32) for a variable with bf16 gradients: the error names the types the
/// right way round (f32 given, bf16 taken).
#[test]
fn gpu_sparse_values_for_16_bit_gradients_name_the_types() {
    let cfg = RmsPropConfig::builder()
        .storage(StorageTypes::all(Bf16))
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), cfg).unwrap();
    let w = opt.add_variable("w", &[4, 2], &[1.0; 8]).unwrap();
    let values = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let rows = [1i64];
    let e = opt
        .apply(&[(
            w,
            Gradient::SparseGpu {
                indices: Indices::I64(&rows),
                values: GpuGradient {
                    buffer: &values,
                    offset: 0,
                },
            },
        )])
        .unwrap_err();
    match e {
        wgpu_rmsprop::Error::GradientType { expected, got, .. } => {
            assert_eq!((expected, got), (Bf16, F32), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
