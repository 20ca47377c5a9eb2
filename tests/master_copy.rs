//! Master weights: f32 variables in the optimizer and a 16-bit copy written by the same kernels (dense
//! and lazy sparse) for the caller's forward pass. The variables and state match the CPU twin bit for
//! bit and the copy is the variables rounded to nearest even, after every step and after a checkpoint is
//! restored; misuse is refused with typed errors.

mod common;

use common::{ctx, Rng};
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, Error, GpuGradient, Gradient, Indices, Preset, RmsProp, RmsPropConfig, Slot,
    StorageTypes, Tensor, VarOptions,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn master(copy: Dtype) -> StorageTypes {
    StorageTypes {
        variable: Dtype::F32,
        gradient: Dtype::F32,
        state: Dtype::F16,
        copy: Some(copy),
    }
}

#[test]
fn the_copy_is_the_rounded_variable_after_dense_and_sparse_steps_and_a_restore() {
    for (preset, copy) in [(Preset::TfRaw, Dtype::Bf16), (Preset::Keras, Dtype::F16)] {
        let config = RmsPropConfig::preset(preset)
            .learning_rate(0.01)
            .momentum(0.5)
            .storage(master(copy))
            .build()
            .unwrap();
        let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
        let mut twin = Reference::new(config.clone());
        let mut rng = Rng::new(3);
        let shapes: [&[usize]; 3] = [&[3], &[257], &[7, 5]];
        let mut ids = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let init = rng.vec(n, 2.0, 0);
            ids.push(opt.add_variable(&format!("w{k}"), shape, &init).unwrap());
            twin.add_variable(shape, &init);
        }
        let check =
            |opt: &mut RmsProp, ids: &[wgpu_rmsprop::VarId], twin: &Reference, label: &str| {
                for (k, &id) in ids.iter().enumerate() {
                    let x = opt.read_variable(id).unwrap();
                    assert_eq!(bits(&x), bits(&twin.vars[k].x), "{label} w{k} x");
                    let v = opt.read_slot(id, Slot::Velocity).unwrap();
                    assert_eq!(bits(&v), bits(&twin.vars[k].v), "{label} w{k} v");
                    let m = opt.read_slot(id, Slot::Momentum).unwrap();
                    assert_eq!(
                        bits(&m),
                        bits(twin.vars[k].m.as_ref().unwrap()),
                        "{label} w{k} m"
                    );
                    let c = opt.read_many(&[(id, Tensor::Copy)]).unwrap().remove(0);
                    let want: Vec<f32> = x.iter().map(|&v| copy.round(v)).collect();
                    assert_eq!(bits(&c), bits(&want), "{label} w{k} copy");
                }
            };
        check(&mut opt, &ids, &twin, &format!("{preset:?} init"));
        for step in 0..4 {
            let g0 = rng.vec(3, 1.0, 0);
            let g1 = rng.vec(257, 1.0, 4);
            let indices = [6i64, 1, (step % 7) as i64, 1];
            let rows: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
            let values = rng.vec(indices.len() * 5, 1.0, 0);
            opt.apply(&[
                (ids[0], Gradient::Dense(&g0)),
                (ids[1], Gradient::Dense(&g1)),
                (
                    ids[2],
                    Gradient::Sparse {
                        indices: Indices::I64(&indices),
                        values: &values,
                    },
                ),
            ])
            .unwrap();
            twin.step(&[
                Some(RefGradient::Dense(&g0)),
                Some(RefGradient::Dense(&g1)),
                Some(RefGradient::Sparse {
                    indices: &rows,
                    values: &values,
                }),
            ])
            .unwrap();
            check(&mut opt, &ids, &twin, &format!("{preset:?} step {step}"));
        }
        let slices = opt.copy_slices(ids[1]).unwrap();
        assert_eq!(slices[0].dtype, copy);
        assert_eq!(slices[0].bound_bytes(), 257usize.div_ceil(4) as u64 * 8);
        // A restored optimizer writes the copy from the restored variables.
        let path =
            std::env::temp_dir().join(format!("master-copy-{}.safetensors", std::process::id()));
        opt.save_checkpoint(&path, true).unwrap();
        let mut fresh = RmsProp::new(ctx(), config).unwrap();
        let mut fresh_ids = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            fresh_ids.push(
                fresh
                    .add_variable(&format!("w{k}"), shape, &vec![0.0; n])
                    .unwrap(),
            );
        }
        fresh.load_checkpoint(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        check(
            &mut fresh,
            &fresh_ids,
            &twin,
            &format!("{preset:?} restored"),
        );
    }
}

#[test]
fn misuse_of_the_copy_is_refused() {
    // The copy must be a 16-bit type.
    let e = RmsPropConfig::preset(Preset::Keras)
        .storage(master(Dtype::F32))
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "storage",
                ..
            }
        ),
        "{e}"
    );
    let config = RmsPropConfig::preset(Preset::Keras)
        .storage(master(Dtype::Bf16))
        .build()
        .unwrap();
    let mut opt = RmsProp::new(ctx(), config).unwrap();
    // A variable cannot opt out of the copy.
    let own = VarOptions {
        storage: Some(StorageTypes::default()),
        ..VarOptions::default()
    };
    let e = opt
        .add_variable_with("a", &[4], &[1.0; 4], &own)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidVarOptions {
                field: "storage",
                ..
            }
        ),
        "{e}"
    );
    // Initial values from a GPU buffer are f32: the copy would be left undefined.
    let src = ctx().device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let e = opt
        .add_variable_from_buffer(
            "b",
            &[4],
            GpuGradient {
                buffer: &src,
                offset: 0,
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidVarOptions {
                field: "storage",
                ..
            }
        ),
        "{e}"
    );
    assert!(opt.variable("a").is_err() && opt.variable("b").is_err());
    // Without a copy there is none to read.
    let mut plain = RmsProp::new(ctx(), RmsPropConfig::default()).unwrap();
    let id = plain.add_variable("w", &[2], &[1.0, 2.0]).unwrap();
    let e = plain.read_many(&[(id, Tensor::Copy)]).unwrap_err();
    assert!(matches!(e, Error::SlotNotPresent { .. }), "{e}");
}
