//! The WGSL declarations of the pooled buffers (variable, gradient, velocity, momentum, average
//! gradient) for a chunk's storage types, with the accessors the kernels use instead of indexing the
//! buffers: `ld_x(i)`, `st_x(i, value)`, and in the scalar form `rnd_x(value)` (the value rounded to the
//! buffer's type, as storing and loading it would give).
//!
//! WGSL has no generic bindings and an `override` cannot change a binding's type, so these few lines are
//! the only WGSL generated at run time: the rest of each module is the static files.
//!
//! - Vec4 form (the dense kernel, vec4 `i`): f32 buffers are `array<vec4<f32>>`; 16-bit buffers are
//!   `array<vec2<u32>>` (four halves in two words), converted by `shaders/half.wgsl`.
//! - Scalar form (sparse rows, norms; element `e`): f32 buffers are `array<f32>`; 16-bit buffers are
//!   words holding two elements. Two invocations may update the two halves of one word (rows need not
//!   start on an even element), so a written 16-bit buffer is `array<atomic<u32>>` and a store clears its
//!   half with `atomicAnd` and sets it with `atomicOr`: the other half is never touched, and the result
//!   does not depend on the order.

use std::fmt::Write;

use crate::dtype::{Dtype, StorageTypes};
use crate::kernels::BindingKind;

/// How a module indexes the pooled buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `ld_x(i: u32) -> vec4<f32>`: vec4 `i` (elements `4i .. 4i + 4`).
    Vec4,
    /// `ld_x(e: u32) -> f32`: element `e`.
    Scalar,
}

/// A pooled buffer a module declares: its WGSL name (`x`, `g`, `v`, `m`, `a`), binding and access.
pub type PoolBinding = (&'static str, u32, BindingKind);

/// The storage type of the pooled buffer named `name` under `storage`.
pub(crate) fn dtype_of(name: &str, storage: StorageTypes) -> Dtype {
    match name {
        "x" => storage.variable,
        "g" => storage.gradient,
        "c" => storage.copy.unwrap_or(Dtype::F32),
        _ => storage.state,
    }
}

/// The declarations and accessors of `pools` for `storage`.
/// With `ema`, the dense kernel's `ema_step` updates Keras's moving average of the variables (binding
/// 19, f32) in the step's dispatch; without, it does nothing.
pub(crate) fn declarations(
    flavor: Flavor,
    pools: &[PoolBinding],
    storage: StorageTypes,
    ema: bool,
) -> String {
    let mut s = String::from(
        "// The 16 bits of element `e` in its word (element 2k is the low half).\n\
         fn half_of(w: u32, e: u32) -> u32 { return (w >> ((e & 1u) * 16u)) & 0xffffu; }\n",
    );
    if flavor == Flavor::Vec4 {
        // 8-bit quantized state: the maps and the block reduction (`q8_flush` stores the state the
        // update stashed), or nothing to flush.
        s.push_str(&crate::pool_q8::flush_wgsl(storage.state == Dtype::Q8));
    }
    for &(n, b, kind) in pools {
        if n == "e" {
            s.push_str(if ema { EMA_STEP } else { NO_EMA_STEP });
            continue;
        }
        if n == "c" && storage.copy.is_none() {
            // No copy of the variables: its store does nothing (and binding 20 is not declared).
            let _ = match flavor {
                Flavor::Vec4 => writeln!(s, "fn st_c(i: u32, value: vec4<f32>) {{}}"),
                Flavor::Scalar => writeln!(s, "fn st_c(e: u32, value: f32) {{}}"),
            };
            continue;
        }
        let dtype = dtype_of(n, storage);
        if dtype == Dtype::Q8 {
            s.push_str(&crate::pool_q8::role_wgsl(flavor, n, b));
            continue;
        }
        let rw = kind == BindingKind::ReadWrite;
        let access = if rw { "read_write" } else { "read" };
        let (to_f32, from_f32) = match dtype {
            Dtype::F16 => ("f16_to_f32", "f32_to_f16"),
            _ => ("bf16_to_f32", "f32_to_bf16"),
        };
        let _ = match (flavor, dtype) {
            (Flavor::Vec4, Dtype::F32) => writeln!(
                s,
                "@group(0) @binding({b}) var<storage, {access}> {n}: array<vec4<f32>>;\n\
                 fn ld_{n}(i: u32) -> vec4<f32> {{ return {n}[i]; }}"
            ),
            (Flavor::Vec4, _) => {
                let t = if dtype == Dtype::F16 { "f16" } else { "bf16" };
                writeln!(
                    s,
                    "@group(0) @binding({b}) var<storage, {access}> {n}: array<vec2<u32>>;\n\
                     fn ld_{n}(i: u32) -> vec4<f32> {{ return unpack_{t}x4({n}[i]); }}"
                )
            }
            (Flavor::Scalar, Dtype::F32) => writeln!(
                s,
                "@group(0) @binding({b}) var<storage, {access}> {n}: array<f32>;\n\
                 fn ld_{n}(e: u32) -> f32 {{ return {n}[e]; }}\n\
                 fn rnd_{n}(value: f32) -> f32 {{ return value; }}"
            ),
            (Flavor::Scalar, _) if rw => writeln!(
                s,
                "@group(0) @binding({b}) var<storage, read_write> {n}: array<atomic<u32>>;\n\
                 fn ld_{n}(e: u32) -> f32 {{ return {to_f32}(half_of(atomicLoad(&{n}[e >> 1u]), e)); }}\n\
                 fn rnd_{n}(value: f32) -> f32 {{ return {to_f32}({from_f32}(value)); }}"
            ),
            (Flavor::Scalar, _) => writeln!(
                s,
                "@group(0) @binding({b}) var<storage, read> {n}: array<u32>;\n\
                 fn ld_{n}(e: u32) -> f32 {{ return {to_f32}(half_of({n}[e >> 1u], e)); }}\n\
                 fn rnd_{n}(value: f32) -> f32 {{ return {to_f32}({from_f32}(value)); }}"
            ),
        };
        if !rw {
            continue;
        }
        if n == "x" {
            // `st_x_sr`: the variable stored with stochastic rounding (bf16 only; the random bits
            // `r` per element), a plain store for the other types.
            let _ = match (flavor, dtype) {
                (Flavor::Vec4, Dtype::Bf16) => writeln!(
                    s,
                    "fn st_x_sr(i: u32, value: vec4<f32>, r: vec4<u32>) {{\n    \
                     x[i] = vec2<u32>(\n        \
                     f32_to_bf16_stochastic(value.x, r.x) | (f32_to_bf16_stochastic(value.y, r.y) << 16u),\n        \
                     f32_to_bf16_stochastic(value.z, r.z) | (f32_to_bf16_stochastic(value.w, r.w) << 16u),\n    \
                     );\n}}"
                ),
                (Flavor::Vec4, _) => writeln!(
                    s,
                    "fn st_x_sr(i: u32, value: vec4<f32>, r: vec4<u32>) {{ st_x(i, value); }}"
                ),
                (Flavor::Scalar, Dtype::Bf16) => writeln!(
                    s,
                    "fn st_x_sr(e: u32, value: f32, r: u32) {{\n    \
                     let shift = (e & 1u) * 16u;\n    \
                     atomicAnd(&x[e >> 1u], ~(0xffffu << shift));\n    \
                     atomicOr(&x[e >> 1u], f32_to_bf16_stochastic(value, r) << shift);\n}}"
                ),
                (Flavor::Scalar, _) => writeln!(
                    s,
                    "fn st_x_sr(e: u32, value: f32, r: u32) {{ st_x(e, value); }}"
                ),
            };
        }
        let _ = match (flavor, dtype) {
            (Flavor::Vec4, Dtype::F32) => writeln!(
                s,
                "fn st_{n}(i: u32, value: vec4<f32>) {{ {n}[i] = value; }}"
            ),
            (Flavor::Vec4, _) => {
                let t = if dtype == Dtype::F16 { "f16" } else { "bf16" };
                writeln!(
                    s,
                    "fn st_{n}(i: u32, value: vec4<f32>) {{ {n}[i] = pack_{t}x4(value); }}"
                )
            }
            (Flavor::Scalar, Dtype::F32) => {
                writeln!(s, "fn st_{n}(e: u32, value: f32) {{ {n}[e] = value; }}")
            }
            (Flavor::Scalar, _) => writeln!(
                s,
                "fn st_{n}(e: u32, value: f32) {{\n    \
                 let shift = (e & 1u) * 16u;\n    \
                 atomicAnd(&{n}[e >> 1u], ~(0xffffu << shift));\n    \
                 atomicOr(&{n}[e >> 1u], {from_f32}(value) << shift);\n}}"
            ),
        };
    }
    s
}

/// Keras's moving average in the dense dispatch: after the update of vec4 `i` (`x` its stored value),
/// `ema = m*ema + (1-m)*x` (`m` = 0 on Keras's first iteration), then with `ema_mode` 2 the variable
/// takes the average; the same arithmetic as `keras_base.wgsl::ema`, which serves the steps this cannot
/// (`in_range` false: past the dispatch's range).
const EMA_STEP: &str = "@group(0) @binding(19) var<storage, read_write> ema_slot: array<vec4<f32>>;
fn ema_step(i: u32, x: vec4<f32>, in_range: bool) {
    if p.ema_mode != 0u && in_range {
        let m = p.ema_momentum;
        let e = vec4<f32>(m) * ema_slot[i] + vec4<f32>(1.0 - m) * x;
        ema_slot[i] = e;
        if p.ema_mode == 2u {
            st_x(i, e);
        }
    }
}
";

/// No moving average in the dense dispatch.
const NO_EMA_STEP: &str = "fn ema_step(i: u32, x: vec4<f32>, in_range: bool) {}\n";
