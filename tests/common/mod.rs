//! Shared test helpers: one GPU context per test process (lavapipe leaks when many devices are made),
//! a deterministic generator, and comparisons with stated tolerances.
#![allow(dead_code)]

pub mod trio;

use std::sync::OnceLock;

use wgpu_rmsprop::reference::ReferenceState;
use wgpu_rmsprop::{GpuContext, RmsProp, Slot, VarId};

/// The process's context. A missing adapter fails the test (never a skip).
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let _ = env_logger::builder().is_test(true).try_init();
        GpuContext::new().expect("a GPU adapter is required (lavapipe in CI)")
    })
}

/// xorshift64*: deterministic values in [-scale, scale), with about one in `zero_every` exactly 0.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32, zero_every: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = self.next_f32() * scale;
                if zero_every > 0 && i as u32 % zero_every == zero_every - 1 {
                    0.0
                } else {
                    x
                }
            })
            .collect()
    }
}

/// Relative and absolute tolerance of GPU-vs-reference comparisons: |a - e| <= ATOL + RTOL * |e|.
/// Lavapipe is bit-exact with the reference in these tests. GPUs that contract a*b+c into one fma round
/// differently; where cancellation makes a small result out of O(1) operands (the state here is O(1),
/// gradients up to 3), that shows as an absolute difference of a few ulps of the operands (seen on an
/// H100: 1.07e-7 on an average_gradient of 6.4e-5), hence ATOL = 1e-6 (about 8 ulps at 1.0).
pub const RTOL: f32 = 2e-5;
pub const ATOL: f32 = 1e-6;

pub fn assert_close(label: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{label}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= ATOL + RTOL * e.abs(),
            "{label}[{i}]: gpu {a} vs reference {e} (|diff| {} > {ATOL} + {RTOL}*|e|)",
            (a - e).abs()
        );
    }
}

/// Compares a variable and every slot the optimizer keeps with the reference.
pub fn assert_matches(opt: &mut RmsProp, id: VarId, r: &ReferenceState, label: &str) {
    assert_close(&format!("{label} x"), &opt.read_variable(id).unwrap(), &r.x);
    assert_close(
        &format!("{label} velocity"),
        &opt.read_slot(id, Slot::Velocity).unwrap(),
        &r.v,
    );
    match &r.m {
        Some(m) => assert_close(
            &format!("{label} momentum"),
            &opt.read_slot(id, Slot::Momentum).unwrap(),
            m,
        ),
        None => assert!(
            opt.read_slot(id, Slot::Momentum).is_err(),
            "{label}: unexpected momentum slot"
        ),
    }
    match &r.a {
        Some(a) => assert_close(
            &format!("{label} average_gradient"),
            &opt.read_slot(id, Slot::AverageGradient).unwrap(),
            a,
        ),
        None => assert!(
            opt.read_slot(id, Slot::AverageGradient).is_err(),
            "{label}: unexpected average_gradient slot"
        ),
    }
}

/// Bit patterns of a variable, every kept slot, and the step count: for "nothing changed" checks.
pub fn snapshot(opt: &mut RmsProp, ids: &[VarId]) -> (u64, Vec<Vec<u32>>) {
    let mut out = Vec::new();
    for &id in ids {
        out.push(
            opt.read_variable(id)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect(),
        );
        for slot in opt.slots() {
            out.push(
                opt.read_slot(id, slot)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            );
        }
    }
    (opt.iterations(), out)
}

/// Bit patterns of every variable and every slot it keeps (one read-back), and the step count.
pub fn kept_state(opt: &mut RmsProp, ids: &[VarId]) -> (u64, Vec<Vec<u32>>) {
    let mut items = Vec::new();
    for &id in ids {
        items.push((id, wgpu_rmsprop::Tensor::Variable));
        for slot in opt.variable_slots(id).unwrap() {
            items.push((id, wgpu_rmsprop::Tensor::Slot(slot)));
        }
    }
    let values = opt.read_many(&items).unwrap();
    let bits = values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect();
    (opt.iterations(), bits)
}

/// Loading `file` into `opt` is an `Error::Checkpoint` whose message holds every `needle`, and the
/// optimizer's state is unchanged, bit for bit.
pub fn expect_refused(opt: &mut RmsProp, ids: &[VarId], file: &std::path::Path, needles: &[&str]) {
    let before = kept_state(opt, ids);
    match opt.load_checkpoint(file) {
        Err(wgpu_rmsprop::Error::Checkpoint { message, path }) => {
            assert_eq!(path, file.display().to_string());
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{}: {message:?} lacks {needle:?}",
                    file.display()
                );
            }
        }
        other => panic!(
            "{}: expected a checkpoint error, got {other:?}",
            file.display()
        ),
    }
    assert_eq!(
        kept_state(opt, ids),
        before,
        "{} changed the state",
        file.display()
    );
}

/// FNV-1a 64 over the tensors' names and bytes in name order: the checkpoint's `checksum` (to forge
/// files that are well formed and wrong).
pub fn checksum(tensors: &[(String, safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)]) -> String {
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, _, _, data) in sorted {
        for &b in name.as_bytes().iter().chain(data) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

pub type Replace<'a> = dyn Fn(
        &str,
        safetensors::tensor::Dtype,
        &[usize],
        &[u8],
    ) -> Option<(safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)>
    + 'a;

/// Copies the checkpoint `from` to `to`, replacing tensors as `replace` says (None: kept) and editing
/// the metadata, with a correct checksum: a well-formed file whose contents are wrong.
pub fn rewrite_checkpoint(
    from: &std::path::Path,
    to: &std::path::Path,
    replace: impl Fn(
        &str,
        safetensors::tensor::Dtype,
        &[usize],
        &[u8],
    ) -> Option<(safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)>,
    edit: impl FnOnce(&mut std::collections::HashMap<String, String>),
) {
    let replace: &Replace<'_> = &replace;
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = safetensors::SafeTensors::read_metadata(&bytes)
        .unwrap()
        .1
        .metadata()
        .clone()
        .unwrap();
    let tensors: Vec<(String, safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let (dtype, shape, data) = replace(&name, v.dtype(), v.shape(), v.data())
                .unwrap_or_else(|| (v.dtype(), v.shape().to_vec(), v.data().to_vec()));
            (name, dtype, shape, data)
        })
        .collect();
    edit(&mut meta);
    meta.insert("checksum".into(), checksum(&tensors));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Copies the checkpoint `from` to `to` with tensor `target` replaced by `data` of `dtype` and `shape`
/// (a correct checksum: well formed, wrong).
pub fn replace_tensor(
    from: &std::path::Path,
    to: &std::path::Path,
    target: &str,
    dtype: safetensors::tensor::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
) {
    rewrite_checkpoint(
        from,
        to,
        |name, _, _, _| (name == target).then(|| (dtype, shape.clone(), data.clone())),
        |_| {},
    );
}
