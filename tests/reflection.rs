//! The host's view of the shaders checked against the shaders themselves through naga reflection (no GPU
//! needed): the layout of the structs the host writes or sizes (`Params`, `VarInfo`), and the names of
//! the pipeline-overridable constants it sets. The shaders are parsed as the crate composes them (every
//! kernel module, both parameter modes).

use std::collections::BTreeSet;

use naga::{Module, ScalarKind, TypeInner};
use wgpu_rmsprop::kernels::{self, Params, ParamsMode, VarInfo, VAR_INFO_BYTES};
use wgpu_rmsprop::{Preset, RmsPropConfig, SparseMode, VarOptions};

/// One Rust field: name, offset, size, and the WGSL scalar it must be.
type Field = (&'static str, usize, usize, ScalarKind);

trait Scalar {
    const KIND: ScalarKind;
}
impl Scalar for f32 {
    const KIND: ScalarKind = ScalarKind::Float;
}
impl Scalar for u32 {
    const KIND: ScalarKind = ScalarKind::Uint;
}

/// The fields of a Rust struct in declaration order, each with its offset (`offset_of!`), size and
/// scalar kind; the closure makes the compiler check that each listed type is the field's type.
macro_rules! fields {
    ($ty:ty { $($field:ident: $ft:ty),* $(,)? }) => {{
        let _types_match = |s: &$ty| {
            $(let _: &$ft = &s.$field;)*
        };
        let fields: Vec<Field> = vec![$((
            stringify!($field),
            std::mem::offset_of!($ty, $field),
            std::mem::size_of::<$ft>(),
            <$ft as Scalar>::KIND,
        )),*];
        fields
    }};
}

fn params_fields() -> Vec<Field> {
    fields!(Params {
        lr: f32,
        rho: f32,
        one_minus_rho: f32,
        momentum: f32,
        epsilon: f32,
        weight_decay: f32,
        clipvalue: f32,
        bias_correction: f32,
        step: u32,
        begin: u32,
        end: u32,
        groups_x: u32,
        var_index: u32,
        row_len: u32,
        values_base: u32,
        index_base: u32,
        unique_rows: u32,
        seg_first: u32,
        seg_len: u32,
        seg_base: u32,
        opt_base: u32,
        sr_seed: u32,
        ema_mode: u32,
        ema_momentum: f32,
        rows_base: u32,
        hist_base: u32,
        pad1: u32,
        pad2: u32,
    })
}

fn var_info_fields() -> Vec<Field> {
    fields!(VarInfo {
        mul: f32,
        div: f32,
        clipvalue: f32,
        flags: u32,
    })
}

/// Every module the pipelines are built from, parsed by naga, with a label.
fn modules() -> Vec<(String, String, Module)> {
    let mut out = Vec::new();
    let storages = [
        wgpu_rmsprop::StorageTypes::default(),
        wgpu_rmsprop::StorageTypes::all(wgpu_rmsprop::Dtype::F16),
        wgpu_rmsprop::StorageTypes::all(wgpu_rmsprop::Dtype::Bf16),
        wgpu_rmsprop::StorageTypes {
            state: wgpu_rmsprop::Dtype::Q8,
            ..wgpu_rmsprop::StorageTypes::default()
        },
    ];
    for k in kernels::ALL {
        for mode in [ParamsMode::Uniform, ParamsMode::Immediate] {
            for storage in storages {
                let source = k.module.source(mode, storage);
                let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
                    panic!("{} ({mode:?}): {}", k.name, e.emit_to_string(&source))
                });
                out.push((
                    format!("{} ({mode:?}, {storage:?})", k.name),
                    source,
                    module,
                ));
            }
        }
    }
    out
}

/// Compares the WGSL struct `name` of `module` with the Rust fields: same member names in the same
/// order, same offsets, sizes and scalar kinds, and a span equal to the Rust size.
fn check_struct(label: &str, module: &Module, name: &str, rust: &[Field], rust_size: usize) {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{label}: no struct {name}"));
    let TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{label}: {name} is not a struct");
    };
    assert_eq!(
        members.len(),
        rust.len(),
        "{label}: {name} has {} members in WGSL, {} in Rust",
        members.len(),
        rust.len()
    );
    for (m, &(field, offset, size, kind)) in members.iter().zip(rust) {
        let wgsl_name = m.name.as_deref().unwrap_or("<unnamed>");
        assert_eq!(wgsl_name, field, "{label}: {name} member order");
        assert_eq!(
            m.offset as usize, offset,
            "{label}: {name}.{field} offset (WGSL vs offset_of!)"
        );
        let TypeInner::Scalar(s) = module.types[m.ty].inner else {
            panic!("{label}: {name}.{field} is not a scalar in WGSL");
        };
        assert_eq!(s.kind, kind, "{label}: {name}.{field} scalar kind");
        assert_eq!(usize::from(s.width), size, "{label}: {name}.{field} size");
    }
    assert_eq!(
        *span as usize, rust_size,
        "{label}: {name} span (WGSL) vs size_of (Rust)"
    );
}

#[test]
fn params_and_var_info_match_the_wgsl_structs() {
    let params = params_fields();
    let var_info = var_info_fields();
    assert_eq!(VAR_INFO_BYTES as usize, std::mem::size_of::<VarInfo>());
    for (label, _, module) in modules() {
        check_struct(
            &label,
            &module,
            "Params",
            &params,
            std::mem::size_of::<Params>(),
        );
        check_struct(
            &label,
            &module,
            "VarInfo",
            &var_info,
            std::mem::size_of::<VarInfo>(),
        );
    }
}

/// Overrides a module declares that the host deliberately leaves at their WGSL default.
const LEFT_AT_DEFAULT: &[&str] = &["REDUCE_SIZE"];

/// Every constant the host sets: `kernels::constants` for a few configurations (the names do not depend
/// on the configuration, the values do), with per-variable options too.
fn host_constants() -> Vec<Vec<(&'static str, f64)>> {
    let configs = [
        RmsPropConfig::default(),
        RmsPropConfig::builder()
            .momentum(0.9)
            .centered(true)
            .clipnorm(1.0)
            .build()
            .unwrap(),
        RmsPropConfig::preset(Preset::Torch)
            .sparse_mode(SparseMode::Dense)
            .global_clipnorm(2.0)
            .build()
            .unwrap(),
    ];
    let mut out: Vec<Vec<(&'static str, f64)>> = configs
        .iter()
        .map(|c| kernels::constants(c, 64, 2))
        .collect();
    // Per-variable options: VAR_OPTIONS becomes a mask of table fields, momentum and centered slots.
    let options = VarOptions {
        lr_multiplier: 0.5,
        momentum: Some(0.9),
        centered: Some(true),
        maximize: Some(true),
        ..VarOptions::default()
    };
    let c = &configs[0];
    let with = kernels::constants_with_options(c, &[options.hyper(c)], 64, 2);
    assert!(with.iter().any(|&(n, v)| n == "VAR_OPTIONS" && v > 1.0));
    out.push(with);
    out
}

/// Each name the host sets is declared as an `override` in the modules it is passed to (the host's filter
/// agrees with naga), reaches at least one module, and has a value its WGSL type can hold; every
/// `override` a module declares is set by the host or listed as left at its default. A renamed override,
/// on either side, fails here instead of silently running with its default.
#[test]
fn host_constants_are_the_overrides_the_shaders_declare() {
    let modules = modules();
    for constants in host_constants() {
        let host: BTreeSet<&str> = constants.iter().map(|(n, _)| *n).collect();
        assert_eq!(host.len(), constants.len(), "a constant is set twice");
        let mut reached = BTreeSet::new();
        for (label, source, module) in &modules {
            let declared: Vec<(&str, &naga::Override)> = module
                .overrides
                .iter()
                .map(|(_, o)| (o.name.as_deref().unwrap_or(""), o))
                .collect();
            let names: BTreeSet<&str> = declared.iter().map(|(n, _)| *n).collect();
            let passed = kernels::module_constants(source, &constants);
            for &(name, value) in &passed {
                assert!(
                    names.contains(name),
                    "{label}: the host passes {name}, the module declares no such override"
                );
                let (_, o) = declared.iter().find(|(n, _)| *n == name).unwrap();
                let TypeInner::Scalar(s) = module.types[o.ty].inner else {
                    panic!("{label}: override {name} is not a scalar");
                };
                let fits = match s.kind {
                    ScalarKind::Bool => value == 0.0 || value == 1.0,
                    ScalarKind::Uint => value >= 0.0 && value.fract() == 0.0,
                    ScalarKind::Float => value.is_finite(),
                    _ => false,
                };
                assert!(fits, "{label}: {name} = {value} does not fit {:?}", s.kind);
                reached.insert(name);
            }
            for name in &names {
                assert!(
                    host.contains(name) || LEFT_AT_DEFAULT.contains(name),
                    "{label}: override {name} is neither set by the host nor left at its default \
                     on purpose (renamed?)"
                );
                if host.contains(name) {
                    assert!(
                        passed.iter().any(|(n, _)| n == name),
                        "{label}: declares {name}, the host filter does not pass it"
                    );
                }
            }
        }
        let missing: Vec<&&str> = host.difference(&reached).collect();
        assert!(
            missing.is_empty(),
            "set by the host but declared by no module: {missing:?}"
        );
    }
}
