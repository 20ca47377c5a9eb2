//! Checkpoints of 16-bit storage: each tensor keeps its buffer's type (safetensors F16/BF16, the stored
//! bits), a restored optimizer continues bit for bit, a file whose types differ from the optimizer's is
//! an `Error::Checkpoint` that changes nothing, and malformed 16-bit tensors are typed errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{ctx, expect_refused, kept_state, Rng};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use wgpu_rmsprop::half::{bf16, f16};
use wgpu_rmsprop::{
    Dtype, Gradient, HalfSlice, OptimizerOptions, RmsProp, RmsPropConfig, StorageTypes, Tensor,
    VarId, VarOptions,
};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wgpu-rmsprop-ckpt-dtypes-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A variable of a setup: name, shape, and its own storage types (`None`: the configuration's).
type Spec = (&'static str, &'static [usize], Option<StorageTypes>);

/// An optimizer with momentum and centered (every slot kept), small pool buffers (the 150-element
/// variable is split over several of them) and `vars` added with deterministic values.
fn make(default: StorageTypes, vars: &[Spec]) -> (RmsProp, Vec<VarId>) {
    let cfg = RmsPropConfig::builder()
        .learning_rate(0.01)
        .momentum(0.9)
        .centered(true)
        .storage(default)
        .build()
        .unwrap();
    let options = OptimizerOptions {
        max_chunk_bytes: Some(256),
        ..OptimizerOptions::default()
    };
    let mut opt = RmsProp::with_options(ctx(), cfg, options).unwrap();
    let mut rng = Rng::new(7);
    let ids = vars
        .iter()
        .map(|&(name, shape, storage)| {
            let n: usize = shape.iter().product();
            let init = rng.vec(n, 1.0, 0);
            let options = VarOptions {
                storage,
                ..VarOptions::default()
            };
            opt.add_variable_with(name, shape, &init, &options).unwrap()
        })
        .collect();
    (opt, ids)
}

/// A host gradient in a variable's gradient type.
enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Owned {
    fn gradient(&self) -> Gradient<'_> {
        match self {
            Owned::F32(v) => Gradient::Dense(v),
            Owned::F16(v) => Gradient::Dense16(HalfSlice::F16(v)),
            Owned::Bf16(v) => Gradient::Dense16(HalfSlice::Bf16(v)),
        }
    }
}

/// `steps` steps with gradients drawn from `seed` (the same gradients for the same seed), each in its
/// variable's gradient type.
fn run(opt: &mut RmsProp, ids: &[VarId], gradient_types: &[Dtype], seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..steps {
        let grads: Vec<Owned> = ids
            .iter()
            .zip(gradient_types)
            .map(|(&id, dtype)| {
                let n = opt.read_variable(id).unwrap().len();
                let g = rng.vec(n, 2.0, 5);
                match dtype {
                    Dtype::F32 | Dtype::Q8 => Owned::F32(g),
                    Dtype::F16 => Owned::F16(g.iter().map(|&x| f16::from_f32(x)).collect()),
                    Dtype::Bf16 => Owned::Bf16(g.iter().map(|&x| bf16::from_f32(x)).collect()),
                }
            })
            .collect();
        let list: Vec<(VarId, Gradient<'_>)> = ids
            .iter()
            .zip(&grads)
            .map(|(&id, g)| (id, g.gradient()))
            .collect();
        opt.apply(&list).unwrap();
    }
}

/// Every tensor's safetensors type in `path`, by name.
fn tensor_types(path: &Path) -> HashMap<String, StDtype> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.dtype()))
        .collect()
}

fn st(dtype: Dtype) -> StDtype {
    match dtype {
        Dtype::F32 => StDtype::F32,
        Dtype::F16 => StDtype::F16,
        Dtype::Bf16 => StDtype::BF16,
        Dtype::Q8 => StDtype::U8,
    }
}

/// Saves after 4 steps, checks the file's tensor types and bytes, restores into a fresh optimizer of
/// the same setup, and continues both 3 steps with the same gradients: bit for bit at every point.
fn resume_bit_for_bit(tag: &str, default: StorageTypes, vars: &[Spec]) {
    let dir = temp_dir(tag);
    let file = dir.join("ckpt.safetensors");
    let storage: Vec<StorageTypes> = vars.iter().map(|v| v.2.unwrap_or(default)).collect();
    let gradient_types: Vec<Dtype> = storage.iter().map(|s| s.gradient).collect();

    let (mut a, ids) = make(default, vars);
    run(&mut a, &ids, &gradient_types, 11, 4);
    a.save_checkpoint(&file, true).unwrap();
    let saved = kept_state(&mut a, &ids);

    // Each tensor in its buffer's type, holding the stored bits.
    let types = tensor_types(&file);
    let bytes = std::fs::read(&file).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    for (k, (&(name, _, _), s)) in vars.iter().zip(&storage).enumerate() {
        let slots = a.variable_slots(ids[k]).unwrap();
        assert_eq!(
            slots.len(),
            3,
            "{name}: velocity, momentum, average gradient"
        );
        let mut expected = vec![(format!("variables/{name}"), Tensor::Variable, s.variable)];
        expected.extend(slots.iter().map(|&slot| {
            (
                format!("slots/{}/{name}", slot.name()),
                Tensor::Slot(slot),
                s.state,
            )
        }));
        for (tensor, which, dtype) in expected {
            assert_eq!(types[&tensor], st(dtype), "{tag}: {tensor}");
            let values = a.read_many(&[(ids[k], which)]).unwrap().pop().unwrap();
            let stored: Vec<u8> = values
                .iter()
                .flat_map(|&x| match dtype {
                    Dtype::F32 | Dtype::Q8 => x.to_le_bytes().to_vec(),
                    Dtype::F16 => f16::from_f32(x).to_le_bytes().to_vec(),
                    Dtype::Bf16 => bf16::from_f32(x).to_le_bytes().to_vec(),
                })
                .collect();
            assert_eq!(
                tensors.tensor(&tensor).unwrap().data(),
                &stored[..],
                "{tag}: {tensor} holds the stored values"
            );
        }
    }
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1;
    let meta = meta.metadata().clone().unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&meta["storage"]).unwrap();
    let listed: Vec<serde_json::Value> = storage
        .iter()
        .map(|s| {
            serde_json::json!({
                "variable": s.variable.name(),
                "gradient": s.gradient.name(),
                "state": s.state.name(),
            })
        })
        .collect();
    assert_eq!(recorded, serde_json::Value::Array(listed), "{tag}: storage");
    assert_eq!(
        meta["format"],
        wgpu_rmsprop::checkpoint::FORMAT,
        "{tag}: format"
    );

    let (mut b, ids_b) = make(default, vars);
    run(&mut b, &ids_b, &gradient_types, 99, 1);
    b.load_checkpoint(&file).unwrap();
    assert_eq!(kept_state(&mut b, &ids_b), saved, "{tag}: restored");

    run(&mut a, &ids, &gradient_types, 23, 3);
    run(&mut b, &ids_b, &gradient_types, 23, 3);
    let (sa, sb) = (kept_state(&mut a, &ids), kept_state(&mut b, &ids_b));
    assert_eq!(sa.0, 7);
    assert_eq!(sa, sb, "{tag}: continued");
    assert_ne!(sa.1, saved.1, "{tag}: the steps changed the state");
    std::fs::remove_dir_all(&dir).unwrap();
}

const SHAPES: [(&str, &[usize]); 3] = [("w", &[3, 5]), ("b", &[7]), ("big", &[150])];

#[test]
fn all_bf16_resumes_bit_for_bit_with_bf16_tensors() {
    let vars: Vec<Spec> = SHAPES.iter().map(|&(n, s)| (n, s, None)).collect();
    resume_bit_for_bit("bf16", StorageTypes::all(Dtype::Bf16), &vars);
}

#[test]
fn all_f16_resumes_bit_for_bit_with_f16_tensors() {
    let vars: Vec<Spec> = SHAPES.iter().map(|&(n, s)| (n, s, None)).collect();
    resume_bit_for_bit("f16", StorageTypes::all(Dtype::F16), &vars);
}

#[test]
fn mixed_per_variable_storage_resumes_bit_for_bit() {
    let f16_state = StorageTypes {
        state: Dtype::F16,
        ..StorageTypes::default()
    };
    let vars: Vec<Spec> = vec![
        ("w", &[3, 5], Some(f16_state)),
        ("b", &[7], Some(StorageTypes::all(Dtype::Bf16))),
        ("big", &[150], None),
    ];
    resume_bit_for_bit("mixed", StorageTypes::default(), &vars);
}

#[test]
fn all_f32_checkpoints_still_load() {
    // Written by an all-f32 optimizer: F32 tensors, as before 16-bit storage existed.
    let vars: Vec<Spec> = SHAPES.iter().map(|&(n, s)| (n, s, None)).collect();
    resume_bit_for_bit("f32", StorageTypes::default(), &vars);

    // A file without `storage` metadata (written before it existed) holds f32 variables: it loads into
    // an all-f32 optimizer and is refused by a 16-bit one.
    let dir = temp_dir("legacy");
    let (mut a, ids) = make(StorageTypes::default(), &vars);
    run(&mut a, &ids, &[Dtype::F32; 3], 5, 2);
    let file = dir.join("new.safetensors");
    a.save_checkpoint(&file, true).unwrap();
    let legacy = dir.join("legacy.safetensors");
    common::rewrite_checkpoint(
        &file,
        &legacy,
        |_, _, _, _| None,
        |meta| {
            meta.remove("storage");
        },
    );
    let (mut b, ids_b) = make(StorageTypes::default(), &vars);
    b.load_checkpoint(&legacy).unwrap();
    assert_eq!(kept_state(&mut b, &ids_b), kept_state(&mut a, &ids));

    let state_only = StorageTypes {
        state: Dtype::Bf16,
        ..StorageTypes::default()
    };
    let (mut c, ids_c) = make(state_only, &vars);
    expect_refused(&mut c, &ids_c, &legacy, &["slots/", "F32", "BF16"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn differing_storage_types_are_refused_and_change_nothing() {
    let dir = temp_dir("mismatch");
    let vars: Vec<Spec> = vec![("w", &[3, 5], None), ("b", &[7], None)];
    let bf16 = StorageTypes::all(Dtype::Bf16);
    let f16 = StorageTypes::all(Dtype::F16);

    let (mut src, ids) = make(bf16, &vars);
    run(&mut src, &ids, &[Dtype::Bf16; 2], 3, 2);
    let bf16_file = dir.join("bf16.safetensors");
    src.save_checkpoint(&bf16_file, true).unwrap();
    let bf16_state_only = dir.join("bf16-state-only.safetensors");
    src.save_checkpoint(&bf16_state_only, false).unwrap();

    let (mut src32, ids32) = make(StorageTypes::default(), &vars);
    run(&mut src32, &ids32, &[Dtype::F32; 2], 3, 2);
    let f32_file = dir.join("f32.safetensors");
    src32.save_checkpoint(&f32_file, true).unwrap();

    // File bf16, optimizer f16: the first tensor checked is named, with both types.
    let (mut o16, ids16) = make(f16, &vars);
    run(&mut o16, &ids16, &[Dtype::F16; 2], 4, 1);
    expect_refused(
        &mut o16,
        &ids16,
        &bf16_file,
        &["tensor variables/w", "BF16", "F16 here"],
    );
    expect_refused(
        &mut o16,
        &ids16,
        &bf16_state_only,
        &["tensor slots/", "/w is BF16", "F16 here"],
    );

    // File f32, optimizer bf16.
    let (mut ob, idsb) = make(bf16, &vars);
    run(&mut ob, &idsb, &[Dtype::Bf16; 2], 4, 1);
    expect_refused(
        &mut ob,
        &idsb,
        &f32_file,
        &["tensor variables/w", "F32", "BF16 here"],
    );
    // And the other way round: file bf16, optimizer f32.
    let (mut o32, ids32b) = make(StorageTypes::default(), &vars);
    expect_refused(&mut o32, &ids32b, &bf16_file, &["BF16", "F32 here"]);

    // Only the gradient type differs (no tensor of that type is saved): the storage record refuses it.
    let grad_f32 = StorageTypes {
        gradient: Dtype::F32,
        ..bf16
    };
    let (mut og, idsg) = make(grad_f32, &vars);
    run(&mut og, &idsg, &[Dtype::F32; 2], 4, 1);
    expect_refused(
        &mut og,
        &idsg,
        &bf16_file,
        &["variable \"w\"", "storage types", "\"gradient\":\"bf16\""],
    );
    // Only the variable type differs and the file has no variables: refused too.
    let var_f32 = StorageTypes {
        variable: Dtype::F32,
        ..bf16
    };
    let (mut ov, idsv) = make(var_f32, &vars);
    expect_refused(&mut ov, &idsv, &bf16_state_only, &["storage types", "w"]);

    // The same setup loads both files.
    let (mut ok, idsok) = make(bf16, &vars);
    ok.load_checkpoint(&bf16_state_only).unwrap();
    ok.load_checkpoint(&bf16_file).unwrap();
    assert_eq!(kept_state(&mut ok, &idsok), kept_state(&mut src, &ids));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_16_bit_tensors_are_typed_errors() {
    let dir = temp_dir("malformed");
    let vars: Vec<Spec> = vec![("w", &[3, 5], None), ("b", &[7], None)];
    let bf16 = StorageTypes::all(Dtype::Bf16);
    let (mut src, ids) = make(bf16, &vars);
    run(&mut src, &ids, &[Dtype::Bf16; 2], 3, 2);
    let good = dir.join("good.safetensors");
    src.save_checkpoint(&good, true).unwrap();
    let (mut opt, ids_o) = make(bf16, &vars);
    run(&mut opt, &ids_o, &[Dtype::Bf16; 2], 8, 1);

    let target = "slots/velocity/w";
    let mut files: Vec<(PathBuf, Vec<&str>)> = Vec::new();
    // Well-formed files (correct checksum) whose tensor types no buffer holds, or are not the buffer's.
    let wide = |dtype: StDtype, size: usize| {
        move |name: &str, _: StDtype, shape: &[usize], data: &[u8]| {
            (name == target).then(|| (dtype, shape.to_vec(), vec![0u8; data.len() / 2 * size]))
        }
    };
    for (file, dtype, size, needle) in [
        ("f64.safetensors", StDtype::F64, 8, "F64"),
        ("i32.safetensors", StDtype::I32, 4, "I32"),
        ("u16.safetensors", StDtype::U16, 2, "U16"),
        ("f16.safetensors", StDtype::F16, 2, "F16"),
        ("f32.safetensors", StDtype::F32, 4, "F32"),
    ] {
        let p = dir.join(file);
        common::rewrite_checkpoint(&good, &p, wide(dtype, size), |_| {});
        files.push((p, vec![target, needle, "BF16 here"]));
    }
    // A 16-bit tensor of the wrong shape.
    let p = dir.join("shape.safetensors");
    common::rewrite_checkpoint(
        &good,
        &p,
        |name, dtype, _, data| (name == target).then(|| (dtype, vec![5, 3], data.to_vec())),
        |_| {},
    );
    files.push((p, vec![target, "shape"]));
    // A malformed `storage` record.
    let p = dir.join("storage.safetensors");
    common::rewrite_checkpoint(
        &good,
        &p,
        |_, _, _, _| None,
        |m| {
            m.insert("storage".into(), "{\"variable\":\"bf16\"}".into());
        },
    );
    files.push((p, vec!["storage"]));
    let p = dir.join("storage-json.safetensors");
    common::rewrite_checkpoint(
        &good,
        &p,
        |_, _, _, _| None,
        |m| {
            m.insert("storage".into(), "[".into());
        },
    );
    files.push((p, vec!["storage"]));
    // A 16-bit tensor whose byte length disagrees with its shape (the header edited in place: BF16 ->
    // F32 doubles the expected length; F64 makes it four times): the file is not valid safetensors.
    let bytes = std::fs::read(&good).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let at = header.find(&format!("\"{target}\"")).unwrap();
    let dtype_at = at + header[at..].find("\"BF16\"").unwrap();
    for (file, replacement) in [
        ("length-f32.safetensors", "\"F32\" "),
        ("length-f64.safetensors", "\"F64\" "),
    ] {
        let mut edited = bytes.clone();
        edited[8 + dtype_at..8 + dtype_at + 6].copy_from_slice(replacement.as_bytes());
        let p = dir.join(file);
        std::fs::write(&p, edited).unwrap();
        files.push((p, vec![]));
    }
    // Truncated inside the 16-bit data.
    let p = dir.join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    files.push((p, vec![]));

    for (file, needles) in &files {
        expect_refused(&mut opt, &ids_o, file, needles);
    }
    opt.load_checkpoint(&good).unwrap();
    assert_eq!(kept_state(&mut opt, &ids_o), kept_state(&mut src, &ids));
    std::fs::remove_dir_all(&dir).unwrap();
}
