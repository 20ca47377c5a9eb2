//! Checkpoints of 8-bit quantized state: each q8 slot is its codes (`U8`, the variable's shape) and its
//! blocks' absmax (`F32`, `<slot tensor>/absmax`); a restored optimizer continues bit for bit (a partial
//! last block, a variable split over pool buffers whose size is not a multiple of the block, a small
//! variable that keeps f32 state); q8 state against f32 state either way, and a malformed absmax tensor,
//! are `Error::Checkpoint` that change nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{ctx, expect_refused, kept_state, Rng};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use wgpu_rmsprop::{
    Dtype, Gradient, OptimizerOptions, RmsProp, RmsPropConfig, StorageTypes, VarId,
};

const BLOCK: usize = 256;

/// Name, shape.
const VARS: [(&str, &[usize]); 3] = [("big", &[10_007]), ("w", &[60, 100]), ("bias", &[100])];

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-rmsprop-q8ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Momentum and centered (every slot kept), state `state`, pool buffers of 20,000 bytes (1,250 vec4:
/// not a multiple of the 64-vec4 block, rounded down to whole blocks): "big" (10,007 elements, a
/// partial last block) spans three of them; "bias" (100 elements) keeps f32 state.
fn make(state: Dtype) -> (RmsProp, Vec<VarId>) {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .storage(StorageTypes {
            state,
            ..StorageTypes::default()
        })
        .q8_block(BLOCK)
        .q8_min_size(1000)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        max_chunk_bytes: Some(20_000),
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), cfg, options).unwrap();
    let mut rng = Rng::new(7);
    let ids = VARS
        .iter()
        .map(|&(name, shape)| {
            let n: usize = shape.iter().product();
            opt.add_variable(name, shape, &rng.vec(n, 1.0, 0)).unwrap()
        })
        .collect();
    (opt, ids)
}

/// `steps` steps with dense gradients drawn from `seed`.
fn run(opt: &mut RmsProp, ids: &[VarId], seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..steps {
        let grads: Vec<Vec<f32>> = VARS
            .iter()
            .map(|(_, s)| rng.vec(s.iter().product(), 0.5, 7))
            .collect();
        let list: Vec<(VarId, Gradient<'_>)> = ids
            .iter()
            .zip(&grads)
            .map(|(&id, g)| (id, Gradient::Dense(g)))
            .collect();
        opt.apply(&list).unwrap();
    }
}

/// Every tensor of `path`: name -> (type, shape, bytes).
fn tensors(path: &Path) -> HashMap<String, (StDtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// The state (decoded) and the raw bytes (codes and absmax, as a checkpoint writes them) of `opt`.
fn raw(
    opt: &mut RmsProp,
    dir: &Path,
    tag: &str,
) -> HashMap<String, (StDtype, Vec<usize>, Vec<u8>)> {
    let path = dir.join(format!("raw-{tag}.safetensors"));
    opt.save_checkpoint(&path, true).unwrap();
    tensors(&path)
}

#[test]
fn q8_state_resumes_bit_for_bit_with_codes_and_absmax() {
    let dir = temp_dir("resume");
    let (mut a, ids) = make(Dtype::Q8);
    run(&mut a, &ids, 11, 4);
    let path = dir.join("a.safetensors");
    a.save_checkpoint(&path, true).unwrap();

    // The file: codes U8 in the variable's shape, absmax F32 per block; the small variable in F32.
    let file = tensors(&path);
    for slot in ["velocity", "momentum", "average_gradient"] {
        for (name, shape) in [("big", vec![10_007]), ("w", vec![60, 100])] {
            let (d, s, b) = &file[&format!("slots/{slot}/{name}")];
            assert_eq!((*d, s), (StDtype::U8, &shape), "{slot}/{name}");
            let n: usize = shape.iter().product();
            assert_eq!(b.len(), n);
            let (d, s, b) = &file[&format!("slots/{slot}/{name}/absmax")];
            assert_eq!((*d, s), (StDtype::F32, &vec![n.div_ceil(BLOCK)]));
            assert_eq!(b.len(), 4 * n.div_ceil(BLOCK));
            // Every absmax is a finite magnitude, and some are not 0 after steps.
            let absmax: Vec<f32> = b
                .chunks(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            assert!(absmax.iter().all(|x| x.is_finite() && *x >= 0.0));
            assert!(absmax.iter().any(|&x| x > 0.0), "{slot}/{name}");
        }
        let (d, s, _) = &file[&format!("slots/{slot}/bias")];
        assert_eq!((*d, s), (StDtype::F32, &vec![100]));
        assert!(!file.contains_key(&format!("slots/{slot}/bias/absmax")));
    }
    assert_eq!(file["variables/big"].0, StDtype::F32);

    // Restored into a fresh optimizer (after its own different steps): the same state, bit for bit.
    let (mut b, ids_b) = make(Dtype::Q8);
    run(&mut b, &ids_b, 99, 1);
    b.load_checkpoint(&path).unwrap();
    assert_eq!(kept_state(&mut b, &ids_b), kept_state(&mut a, &ids));
    assert_eq!(raw(&mut b, &dir, "b0"), file, "restored bytes");

    // Three more identical steps on both.
    run(&mut a, &ids, 12, 3);
    run(&mut b, &ids_b, 12, 3);
    assert_eq!(kept_state(&mut b, &ids_b), kept_state(&mut a, &ids));
    assert_eq!(
        raw(&mut b, &dir, "b1"),
        raw(&mut a, &dir, "a1"),
        "after 3 steps"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn q8_and_f32_state_files_are_refused_either_way() {
    let dir = temp_dir("mismatch");
    let (mut q, ids_q) = make(Dtype::Q8);
    run(&mut q, &ids_q, 3, 2);
    let (mut f, ids_f) = make(Dtype::F32);
    run(&mut f, &ids_f, 4, 2);
    let qfile = dir.join("q8.safetensors");
    let ffile = dir.join("f32.safetensors");
    q.save_checkpoint(&qfile, true).unwrap();
    f.save_checkpoint(&ffile, true).unwrap();
    expect_refused(&mut q, &ids_q, &ffile, &[]);
    expect_refused(&mut f, &ids_f, &qfile, &[]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_absmax_and_codes_are_refused() {
    let dir = temp_dir("malformed");
    let (mut src, ids) = make(Dtype::Q8);
    run(&mut src, &ids, 5, 2);
    let good = dir.join("good.safetensors");
    src.save_checkpoint(&good, true).unwrap();
    let (mut opt, ids_o) = make(Dtype::Q8);
    run(&mut opt, &ids_o, 6, 1);
    let bad = dir.join("bad.safetensors");
    let absmax = "slots/momentum/big/absmax";
    let blocks = 10_007usize.div_ceil(BLOCK);
    // One block short.
    let short = vec![0u8; 4 * (blocks - 1)];
    common::replace_tensor(&good, &bad, absmax, StDtype::F32, vec![blocks - 1], short);
    expect_refused(&mut opt, &ids_o, &bad, &[absmax, "shape"]);
    // Missing: a file without it.
    let none = Vec::new();
    common::replace_tensor(&good, &bad, absmax, StDtype::F32, vec![0], none);
    expect_refused(&mut opt, &ids_o, &bad, &[absmax]);
    // Not F32.
    let halves = vec![0u8; 2 * blocks];
    common::replace_tensor(&good, &bad, absmax, StDtype::F16, vec![blocks], halves);
    expect_refused(&mut opt, &ids_o, &bad, &[absmax, "F16"]);
    // Codes of the wrong shape and type.
    let codes = "slots/velocity/w";
    common::replace_tensor(&good, &bad, codes, StDtype::U8, vec![6000], vec![0; 6000]);
    expect_refused(&mut opt, &ids_o, &bad, &[codes, "shape"]);
    common::replace_tensor(
        &good,
        &bad,
        codes,
        StDtype::I8,
        vec![60, 100],
        vec![0; 6000],
    );
    expect_refused(&mut opt, &ids_o, &bad, &[codes, "I8"]);
    // The good file loads.
    opt.load_checkpoint(&good).unwrap();
    assert_eq!(kept_state(&mut opt, &ids_o), kept_state(&mut src, &ids));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The block size decides how codes and absmax interleave: a file written with another block size is
/// refused (the configuration records it), with nothing changed.
#[test]
fn a_file_of_another_block_size_is_refused() {
    let (mut a, ids) = make(Dtype::Q8);
    run(&mut a, &ids, 3, 2);
    let path = temp_dir("block").join("a.safetensors");
    a.save_checkpoint(&path, true).unwrap();
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .storage(StorageTypes {
            state: Dtype::Q8,
            ..StorageTypes::default()
        })
        .q8_block(BLOCK * 2)
        .q8_min_size(1000)
        .build()
        .unwrap();
    let mut b = RmsProp::new(ctx(), cfg).unwrap();
    let mut rng = Rng::new(7);
    let b_ids: Vec<VarId> = VARS
        .iter()
        .map(|&(name, shape)| {
            let n: usize = shape.iter().product();
            b.add_variable(name, shape, &rng.vec(n, 1.0, 0)).unwrap()
        })
        .collect();
    let before = kept_state(&mut b, &b_ids);
    let e = b.load_checkpoint(&path).unwrap_err();
    assert!(matches!(e, wgpu_rmsprop::Error::Checkpoint { .. }), "{e}");
    assert_eq!(kept_state(&mut b, &b_ids), before);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
