//! Stochastic rounding of bf16 variables: the GPU stores exactly what the CPU twin computes (the same
//! hash of seed, step, variable and element), dense and lazy sparse, and the stored values are unbiased:
//! an update below half a bf16 ulp is lost with round-to-nearest but kept on average.

mod common;

use common::{ctx, Rng};
use wgpu_rmsprop::half::bf16;
use wgpu_rmsprop::reference::{RefGradient, Reference};
use wgpu_rmsprop::{
    Dtype, Gradient, HalfSlice, Indices, Preset, RmsProp, RmsPropConfig, Slot, StorageTypes,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Variables, gradients and state in bf16 except where `gradient` says.
fn storage(gradient: Dtype) -> StorageTypes {
    StorageTypes {
        variable: Dtype::Bf16,
        gradient,
        state: Dtype::Bf16,
        copy: None,
    }
}

#[test]
fn stochastic_rounding_is_bit_exact_with_the_twin_dense_and_sparse() {
    for (preset, momentum) in [
        (Preset::Keras, 0.5),
        (Preset::TfRaw, 0.0),
        (Preset::Torch, 0.9),
    ] {
        let config = RmsPropConfig::preset(preset)
            .learning_rate(0.01)
            .momentum(momentum)
            .storage(storage(Dtype::Bf16))
            .stochastic_rounding(1234)
            .build()
            .unwrap();
        let mut opt = RmsProp::new(ctx(), config.clone()).unwrap();
        let mut twin = Reference::new(config);
        let mut rng = Rng::new(7);
        // Odd lengths and a table with odd rows (two rows share a word of halves).
        let shapes: [&[usize]; 4] = [&[1], &[257], &[1023], &[9, 3]];
        let mut ids = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let init = rng.vec(n, 1.0, 0);
            ids.push(opt.add_variable(&format!("w{k}"), shape, &init).unwrap());
            twin.add_variable(shape, &init);
        }
        for step in 0..6 {
            let dense: Vec<Vec<bf16>> = shapes[..3]
                .iter()
                .map(|s| {
                    let n: usize = s.iter().product();
                    rng.vec(n, 0.5, 5)
                        .iter()
                        .map(|&x| bf16::from_f32(x))
                        .collect()
                })
                .collect();
            let indices: Vec<i64> = vec![4, 0, 4, 8, (step % 9) as i64];
            let values: Vec<bf16> = rng
                .vec(indices.len() * 3, 0.5, 0)
                .iter()
                .map(|&x| bf16::from_f32(x))
                .collect();
            let mut grads: Vec<(_, Gradient)> = dense
                .iter()
                .zip(&ids)
                .map(|(g, &id)| (id, Gradient::Dense16(HalfSlice::Bf16(g))))
                .collect();
            grads.push((
                ids[3],
                Gradient::Sparse16 {
                    indices: Indices::I64(&indices),
                    values: HalfSlice::Bf16(&values),
                },
            ));
            opt.apply(&grads).unwrap();
            let wide: Vec<Vec<f32>> = dense
                .iter()
                .map(|g| g.iter().map(|h| h.to_f32()).collect())
                .collect();
            let wide_values: Vec<f32> = values.iter().map(|h| h.to_f32()).collect();
            let mut tg: Vec<Option<RefGradient>> =
                wide.iter().map(|g| Some(RefGradient::Dense(g))).collect();
            let rows: Vec<usize> = indices.iter().map(|&i| i as usize).collect();
            tg.push(Some(RefGradient::Sparse {
                indices: &rows,
                values: &wide_values,
            }));
            twin.step(&tg).unwrap();
        }
        for (k, &id) in ids.iter().enumerate() {
            let label = format!("{preset:?} w{k}");
            let x = opt.read_variable(id).unwrap();
            assert_eq!(bits(&x), bits(&twin.vars[k].x), "{label} x");
            let v = opt.read_slot(id, Slot::Velocity).unwrap();
            assert_eq!(bits(&v), bits(&twin.vars[k].v), "{label} velocity");
            if let Some(m) = &twin.vars[k].m {
                let got = opt.read_slot(id, Slot::Momentum).unwrap();
                assert_eq!(bits(&got), bits(m), "{label} momentum");
            }
            assert!(
                x.iter().all(|&v| bf16::from_f32(v).to_f32() == v),
                "{label}: every value is a bf16"
            );
        }
    }
}

/// 65,536 elements at 1.5 (bf16 spacing there: 2^-7) take one Keras step of about 3.16e-3 (below half
/// the spacing): round-to-nearest keeps every element at 1.5, stochastic rounding stores 1.5 - 2^-7 with
/// probability 3.16e-3 / 2^-7 and its mean is the f32 result within 5 standard deviations.
#[test]
fn stochastic_rounding_is_unbiased_where_round_to_nearest_loses_the_update() {
    let n = 1 << 16;
    let init = vec![1.5f32; n];
    let grad: Vec<bf16> = vec![bf16::from_f32(0.25); n];
    let exact = {
        let config = RmsPropConfig::preset(Preset::Keras).build().unwrap();
        let mut twin = Reference::new(config);
        twin.add_variable(&[1], &[1.5]);
        twin.step(&[Some(RefGradient::Dense(&[0.25]))]).unwrap();
        f64::from(twin.vars[0].x[0])
    };
    let mut means = Vec::new();
    for sr in [None, Some(99)] {
        let mut b = RmsPropConfig::preset(Preset::Keras).storage(storage(Dtype::Bf16));
        if let Some(seed) = sr {
            b = b.stochastic_rounding(seed);
        }
        let mut opt = RmsProp::new(ctx(), b.build().unwrap()).unwrap();
        let id = opt.add_variable("w", &[n], &init).unwrap();
        opt.apply(&[(id, Gradient::Dense16(HalfSlice::Bf16(&grad)))])
            .unwrap();
        let x = opt.read_variable(id).unwrap();
        means.push(x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64);
        if sr.is_none() {
            assert!(
                x.iter().all(|&v| v == 1.5),
                "round to nearest loses the update"
            );
        } else {
            let down = 1.5 - 2f64.powi(-7);
            assert!(x
                .iter()
                .all(|&v| f64::from(v) == 1.5 || f64::from(v) == down));
        }
    }
    let p = (1.5 - exact) / 2f64.powi(-7);
    assert!(p > 0.1 && p < 0.5, "the update is below half an ulp: {p}");
    let sd = 2f64.powi(-7) * (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (means[1] - exact).abs() < 5.0 * sd,
        "stochastic mean {} vs exact {exact} (sd {sd})",
        means[1]
    );
    assert!(
        (means[0] - exact).abs() > 50.0 * sd,
        "round to nearest is biased"
    );
}
