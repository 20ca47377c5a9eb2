//! Checkpoints: the complete optimizer state (every slot, the step count, the skipped-step count, the
//! configuration and preset, and optionally the variables) in the safetensors format, so that Python
//! users can open it (`safetensors.numpy.load_file`).
//!
//! Tensors are named `slots/<slot>/<variable>` and `variables/<variable>` (the variable's shape). Each
//! tensor keeps the element type of the buffer it comes from (see [`crate::StorageTypes`] and
//! [`crate::VarOptions::storage`]): safetensors `F32`, `F16` or `BF16`, holding the stored values bit for
//! bit (a 16-bit tensor is the buffer's 16-bit values, not values widened to f32), so a restored
//! optimizer continues bit for bit. Variables are in the variable type, velocity, momentum and average
//! gradient in the state type; the moving average ([`crate::Slot::Ema`]) is always f32. NumPy has no
//! bfloat16: in Python, `BF16` tensors load with `safetensors.torch` (or `safe_open(framework="pt")`).
//!
//! A slot in 8-bit quantized state ([`crate::Dtype::Q8`]) is two tensors: `slots/<slot>/<variable>`,
//! `U8` of the variable's shape, the codes (one per element, in order), and
//! `slots/<slot>/<variable>/absmax`, `F32` of shape `[blocks]`, each block's absmax (blocks of
//! [`crate::RmsPropConfig::q8_block`] elements from the variable's start, the last one partial when the
//! size is not a multiple). Value `i` is [`crate::quant::Codebook::dequantize`] of its code and
//! `absmax[i / block]`, in [`crate::quant::Codebook::dynamic`] (unsigned for velocity, signed for momentum
//! and average gradient).
//! Both are the GPU's bytes: a restored optimizer continues bit for bit.
//!
//! The metadata holds `format`, `preset`, `config` (JSON), `iterations`, `skipped_steps`, `variables`
//! (JSON list of names and shapes), `var_options` (JSON list, per variable, of its options as they
//! resolve: see [`var_options_json`]), `storage` (JSON list, per variable, of its storage types: see
//! [`storage_json`]) and `checksum` (FNV-1a 64 of the tensors' names and bytes). A variable's slot
//! tensors are those it keeps (with per-variable options, not every variable has every slot). The
//! format stays `wgpu-rmsprop-checkpoint/1`: `storage` is an addition, and a file without it (written
//! before 16-bit storage existed) holds f32 variables only, so it loads into an all-f32 optimizer as
//! before. The configuration's default storage ([`crate::RmsPropConfig::storage`]) is not compared:
//! what each variable holds is, through `storage` and the tensors' types.
//!
//! Writing is atomic: a temporary file beside the target is written, flushed to disk and renamed over
//! it, so a crash mid-save leaves the previous checkpoint intact. Restoring reads and checks everything
//! (format, preset, configuration, names, shapes, tensor types, sizes, storage types) before it writes
//! anything to the GPU: a truncated, corrupted or mismatched file (per-variable options included; a file
//! without `var_options` holds variables without options) is an [`Error::Checkpoint`] and the optimizer
//! is left exactly as it was. There is no conversion between types: a tensor whose safetensors type is
//! not its buffer's type (a `BF16` velocity for an optimizer whose state is f16, an `F32` variable for
//! a bf16 variable, an `F64` tensor, `U8` codes for f32 state or the reverse) is an error naming the tensor, the file's type and the
//! optimizer's, and so is a variable whose storage types (variable, gradient or state) differ from
//! the file's. A variable's storage types are fixed when it is added: to change them, add the
//! variables with the file's types, load, and copy the values over.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use serde_json::{json, Value};

use crate::config::{LearningRate, RmsPropConfig, WeightDecay};
use crate::dtype::{Dtype, StorageTypes};
use crate::error::{Error, Result};
use crate::var_options::VarHyper;

/// FNV-1a (64-bit) over the tensors' names and bytes in name order: safetensors has no checksum, and a
/// flipped bit in the data would otherwise restore silently.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, data) in sorted {
        for &b in name.as_bytes().iter().chain(data) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The `format` metadata value this crate writes and reads.
pub const FORMAT: &str = "wgpu-rmsprop-checkpoint/1";

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The configuration as JSON, every knob that changes the numbers (closures as `"closure"`).
pub fn config_json(c: &RmsPropConfig) -> Value {
    let lr = match c.learning_rate() {
        LearningRate::Constant(x) => json!(x),
        LearningRate::Schedule(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        LearningRate::FnOfStep(_) | LearningRate::Callable(_) => json!("closure"),
    };
    let (wd_mode, wd) = match c.weight_decay() {
        WeightDecay::None => ("none", 0.0),
        WeightDecay::Decoupled(x) => ("decoupled", x),
        WeightDecay::L2(x) => ("l2", x),
    };
    let mut v = json!({
        "learning_rate": lr,
        "rho": c.rho(),
        "momentum": c.momentum(),
        "epsilon": c.epsilon(),
        "centered": c.centered(),
        "epsilon_placement": format!("{:?}", c.epsilon_placement()),
        "momentum_form": format!("{:?}", c.momentum_form()),
        "average_form": format!("{:?}", c.average_form()),
        "momentum_slot": c.has_momentum(),
        "initial_accumulator_value": c.initial_accumulator_value(),
        "bias_correction": c.bias_correction(),
        "nesterov": c.nesterov(),
        "maximize": c.maximize(),
        "weight_decay_mode": wd_mode,
        "weight_decay": wd,
        "clipvalue": c.clipvalue(),
        "clipnorm": c.clipnorm(),
        "global_clipnorm": c.global_clipnorm(),
        "sparse_mode": format!("{:?}", c.sparse_mode()),
        "duplicate_indices": format!("{:?}", c.duplicate_indices()),
        "non_finite": format!("{:?}", c.non_finite()),
    });
    // Present only when set, so that checkpoints written before the key existed still match. The loss
    // scale is not part of it: dynamic loss scaling changes it between steps.
    if let (Some(n), Some(map)) = (c.gradient_accumulation_steps(), v.as_object_mut()) {
        map.insert("gradient_accumulation_steps".into(), json!(n));
    }
    // The block of 8-bit state decides how its codes and absmax interleave: a file of another block
    // size is refused (present only with q8 state).
    if let (crate::dtype::Dtype::Q8, Some(map)) = (c.storage().state, v.as_object_mut()) {
        map.insert("q8_block".into(), json!(c.q8_block()));
        map.insert("q8_min_size".into(), json!(c.q8_min_size()));
    }
    if let (true, Some(map)) = (c.use_ema(), v.as_object_mut()) {
        map.insert("use_ema".into(), json!(true));
        map.insert("ema_momentum".into(), json!(c.ema_momentum()));
        map.insert(
            "ema_overwrite_frequency".into(),
            json!(c.ema_overwrite_frequency()),
        );
    }
    v
}

/// One variable's options as they resolve (what the kernels read, and whether it is frozen), as JSON:
/// two option sets that give the same numbers give the same JSON.
pub fn var_options_json(h: &VarHyper, frozen: bool) -> Value {
    let mut v = json!({
        "lr_multiplier": h.lr_multiplier,
        "lr_addend": h.lr_addend,
        "rho": h.rho,
        "momentum": h.momentum,
        "epsilon": h.epsilon,
        "weight_decay": if h.decay { json!(h.weight_decay) } else { Value::Null },
        "momentum_slot": h.momentum_slot,
        "centered": h.centered,
        "maximize": h.maximize,
        "frozen": frozen,
    });
    // Only when set, so that files written before it existed still match.
    if let (true, Some(map)) = (h.rowwise, v.as_object_mut()) {
        map.insert("rowwise_velocity".into(), json!(true));
    }
    v
}

/// One variable's storage types as JSON (`{"variable": "bf16", "gradient": "bf16", "state": "f16"}`,
/// the names of [`Dtype::name`]); the `storage` metadata is the list of these, per variable.
pub fn storage_json(s: &StorageTypes) -> Value {
    json!({
        "variable": s.variable.name(),
        "gradient": s.gradient.name(),
        "state": s.state.name(),
    })
}

/// The safetensors type of `dtype`.
fn st_dtype(dtype: Dtype) -> StDtype {
    match dtype {
        Dtype::F32 => StDtype::F32,
        Dtype::F16 => StDtype::F16,
        Dtype::Bf16 => StDtype::BF16,
        // Codes: one byte per element (their blocks' absmax are F32 tensors of their own).
        Dtype::Q8 => StDtype::U8,
    }
}

/// The storage type a safetensors type stands for, if any buffer can hold it.
pub(crate) fn from_st_dtype(dtype: StDtype) -> Option<Dtype> {
    match dtype {
        StDtype::F32 => Some(Dtype::F32),
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::Bf16),
        StDtype::U8 => Some(Dtype::Q8),
        _ => None,
    }
}

/// One tensor of a checkpoint: its values as stored (little-endian bytes of `dtype`).
pub(crate) struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub bytes: Vec<u8>,
}

/// What [`crate::RmsProp::save_checkpoint`] gathers: metadata and named tensors.
pub(crate) struct Contents {
    pub metadata: HashMap<String, String>,
    pub tensors: Vec<Tensor>,
}

/// Writes `contents` to `path` atomically (temporary file, flush, rename, directory sync).
pub(crate) fn write(path: &Path, mut contents: Contents) -> Result<()> {
    let sum = checksum(
        contents
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.bytes.as_slice())),
    );
    contents.metadata.insert("checksum".into(), sum);
    let views: Vec<(String, TensorView)> = contents
        .tensors
        .iter()
        .map(|t| {
            TensorView::new(st_dtype(t.dtype), t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| fail(path, format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(contents.metadata))
        .map_err(|e| fail(path, e.to_string()))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(path, "not a file path"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| fail(path, e.to_string());
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A checkpoint read and checked against an optimizer's configuration and variables.
pub(crate) struct Restored {
    pub iterations: u64,
    pub skipped: u64,
    /// The loss scale factor when saved (it changes with dynamic loss scaling).
    pub loss_scale_factor: Option<f64>,
    /// Per variable (in the optimizer's order): its values if saved, then each kept slot's values, as
    /// stored (little-endian bytes of the buffer's type, checked to be the file's; q8 slots: the codes
    /// and absmax interleaved as the GPU stores them, see [`crate::pool_q8`]).
    pub variables: Vec<Option<Vec<u8>>>,
    pub slots: Vec<Vec<Vec<u8>>>,
}

/// What a checkpoint must match.
pub(crate) struct Expected<'a> {
    pub config: &'a RmsPropConfig,
    /// `(name, shape)` of every variable.
    pub variables: &'a [(String, Vec<usize>)],
    /// Per variable: its velocity is one value per row (tensor shape `[rows]`).
    pub rowwise: &'a [bool],
    /// The storage types of every variable (its variable tensor is `storage.variable`).
    pub storage: &'a [StorageTypes],
    /// The slot names of each variable, with the type of the slot's buffer.
    pub slots: &'a [Vec<(&'a str, Dtype)>],
    /// Elements per q8 block ([`RmsPropConfig::q8_block`]).
    pub q8_block: usize,
    /// Every variable's [`var_options_json`], as an array.
    pub var_options: Value,
    /// The same with default options, what a file without `var_options` holds.
    pub default_options: Value,
}

/// Reads `path` and checks it against what `expected` lists.
pub(crate) fn read(path: &Path, expected: &Expected<'_>) -> Result<Restored> {
    let (config, variables) = (expected.config, expected.variables);
    let bytes = std::fs::read(path).map_err(|e| fail(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| fail(path, format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(path, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| fail(path, format!("metadata `{k}` is missing")))
    };
    if get("format")? != FORMAT {
        return Err(fail(
            path,
            format!("format {:?}, expected {FORMAT:?}", get("format")?),
        ));
    }
    let preset = get("preset")?;
    if preset != config.preset_kind().name() {
        return Err(fail(
            path,
            format!(
                "preset {preset:?} in the checkpoint, {:?} here",
                config.preset_kind().name()
            ),
        ));
    }
    let names = st.names();
    let sum = checksum(
        names
            .iter()
            .filter_map(|&n| st.tensor(n).ok().map(|t| (n, t.data()))),
    );
    if get("checksum")? != &sum {
        return Err(fail(
            path,
            "checksum mismatch: the tensor data is corrupted",
        ));
    }
    let saved: Value =
        serde_json::from_str(get("config")?).map_err(|e| fail(path, format!("config: {e}")))?;
    let here = config_json(config);
    if let (Value::Object(saved), Value::Object(here)) = (&saved, &here) {
        for (k, v) in here {
            let s = saved.get(k).unwrap_or(&Value::Null);
            let closure = *v == json!("closure") || *s == json!("closure");
            if s != v && !closure {
                return Err(fail(
                    path,
                    format!("config `{k}` is {s} in the checkpoint, {v} here"),
                ));
            }
        }
        // Keys written only when set (gradient_accumulation_steps) must not be dropped either.
        if let Some((k, s)) = saved.iter().find(|(k, _)| !here.contains_key(*k)) {
            return Err(fail(
                path,
                format!("config `{k}` is {s} in the checkpoint, not set here"),
            ));
        }
    } else {
        return Err(fail(path, "config is not a JSON object"));
    }
    let number = |k: &str| -> Result<u64> {
        get(k)?
            .parse::<u64>()
            .map_err(|e| fail(path, format!("metadata `{k}`: {e}")))
    };
    let saved_options: Value = match meta.get("var_options") {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| fail(path, format!("var_options: {e}")))?
        }
        None => expected.default_options.clone(),
    };
    if let (Value::Array(saved), Value::Array(here)) = (&saved_options, &expected.var_options) {
        for (i, (s, h)) in saved.iter().zip(here).enumerate() {
            if s != h {
                let name = variables.get(i).map_or("?", |v| v.0.as_str());
                return Err(fail(
                    path,
                    format!(
                        "variable {name:?} has options {s} in the checkpoint, {h} here (set them \
                         after loading to change them)"
                    ),
                ));
            }
        }
    } else {
        return Err(fail(path, "var_options is not a JSON array"));
    }
    let iterations = number("iterations")?;
    let skipped = number("skipped_steps")?;
    let loss_scale_factor = match meta.get("loss_scale_factor") {
        None => None,
        Some(text) => {
            let f = text
                .parse::<f64>()
                .map_err(|e| fail(path, format!("metadata `loss_scale_factor`: {e}")))?;
            crate::config::check_loss_scale(f).map_err(|e| fail(path, e.to_string()))?;
            Some(f)
        }
    };
    let listed: Vec<(String, Vec<usize>)> = serde_json::from_str(get("variables")?)
        .map_err(|e| fail(path, format!("variables: {e}")))?;
    if listed != variables {
        return Err(fail(
            path,
            format!("variables {listed:?} in the checkpoint, {variables:?} here"),
        ));
    }
    let tensor =
        |name: &str, shape: &[usize], dtype: Dtype, required: bool| -> Result<Option<Vec<u8>>> {
            match st.tensor(name) {
                Ok(t) => {
                    let file = t.dtype();
                    if from_st_dtype(file) != Some(dtype) {
                        return Err(fail(
                            path,
                            format!(
                                "tensor {name} is {file:?} in the checkpoint, {:?} here (the \
                                 optimizer's {dtype} buffer); storage types are not converted on \
                                 load",
                                st_dtype(dtype)
                            ),
                        ));
                    }
                    if t.shape() != shape {
                        return Err(fail(
                            path,
                            format!(
                                "tensor {name} has shape {:?}, expected {shape:?}",
                                t.shape()
                            ),
                        ));
                    }
                    let elems: usize = shape.iter().product();
                    let data = t.data();
                    if Some(data.len()) != elems.checked_mul(dtype.bytes() as usize) {
                        return Err(fail(
                            path,
                            format!(
                                "tensor {name} holds {} bytes, expected {elems} {dtype} values",
                                data.len()
                            ),
                        ));
                    }
                    Ok(Some(data.to_vec()))
                }
                Err(_) if !required => Ok(None),
                Err(e) => Err(fail(path, format!("tensor {name}: {e}"))),
            }
        };
    let mut out = Restored {
        iterations,
        skipped,
        loss_scale_factor,
        variables: Vec::new(),
        slots: Vec::new(),
    };
    for ((((name, shape), slots), storage), &rowwise) in variables
        .iter()
        .zip(expected.slots)
        .zip(expected.storage)
        .zip(expected.rowwise)
    {
        let rows = [shape.first().copied().unwrap_or(1)];
        out.variables.push(tensor(
            &format!("variables/{name}"),
            shape,
            storage.variable,
            false,
        )?);
        let mut per = Vec::new();
        for &(slot, dtype) in slots {
            let tname = format!("slots/{slot}/{name}");
            let shape = match (slot, rowwise) {
                ("velocity", true) => &rows[..],
                _ => &shape[..],
            };
            let values = tensor(&tname, shape, dtype, true)?.unwrap_or_default();
            if dtype != Dtype::Q8 {
                per.push(values);
                continue;
            }
            // Codes (U8, the variable's shape) and one absmax per block (F32), interleaved back.
            let block = expected.q8_block;
            let blocks = values.len().div_ceil(block);
            let aname = format!("{tname}/absmax");
            let absmax = tensor(&aname, &[blocks], Dtype::F32, true)?.unwrap_or_default();
            let joined = crate::pool_q8::join_blocks(&values, &absmax, block)
                .ok_or_else(|| fail(path, format!("tensor {aname} does not match {tname}")))?;
            per.push(joined);
        }
        out.slots.push(per);
    }
    // After the tensors (whose errors name the tensor): the storage types, which also cover the
    // gradient type and a variable type when the variables were not saved.
    let saved_storage: Value = match meta.get("storage") {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| fail(path, format!("storage: {e}")))?
        }
        // Written before 16-bit storage existed: every buffer f32.
        None => Value::Array(vec![
            storage_json(&StorageTypes::default());
            variables.len()
        ]),
    };
    match &saved_storage {
        Value::Array(saved) if saved.len() == variables.len() => {
            for ((s, here), (name, _)) in saved.iter().zip(expected.storage).zip(variables) {
                let h = storage_json(here);
                if *s != h {
                    return Err(fail(
                        path,
                        format!(
                            "variable {name:?} has storage types {s} in the checkpoint, {h} here \
                             (a variable's storage types are fixed when it is added; they are not \
                             converted on load)"
                        ),
                    ));
                }
            }
        }
        _ => {
            return Err(fail(
                path,
                format!(
                    "storage is not a JSON array of {} entries, one per variable",
                    variables.len()
                ),
            ))
        }
    }
    Ok(out)
}
