//! The pipeline-overridable constants of the kernels: which variant of the update a configuration
//! (and its variables' options) selects, and which constants each module declares.

use crate::config::{AverageForm, EpsilonPlacement, MomentumForm, RmsPropConfig};
use crate::var_options::Variant;

/// The `override` constants that select `config`'s variant (no per-variable options), with the launch
/// shape (invocations per workgroup, vec4s per invocation of the dense kernel).
pub fn constants(
    config: &RmsPropConfig,
    workgroup_size: u32,
    vec4s_per_invocation: u32,
) -> Vec<(&'static str, f64)> {
    let variant = Variant::of(config, []);
    variant_constants(config, &variant, workgroup_size, vec4s_per_invocation)
}

/// As [`constants`], for `config` with `hypers`, one per variable ([`crate::VarOptions::hyper`]): the
/// slots any variable keeps, the decay mode any variable needs, and `VAR_OPTIONS` when some variable's
/// values differ from the configuration's.
pub fn constants_with_options(
    config: &RmsPropConfig,
    hypers: &[crate::VarHyper],
    workgroup_size: u32,
    vec4s_per_invocation: u32,
) -> Vec<(&'static str, f64)> {
    let variant = Variant::of(config, hypers.iter().copied());
    variant_constants(config, &variant, workgroup_size, vec4s_per_invocation)
}

pub(crate) fn variant_constants(
    config: &RmsPropConfig,
    variant: &Variant,
    workgroup_size: u32,
    vec4s_per_invocation: u32,
) -> Vec<(&'static str, f64)> {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    let (norm_mode, clip_norm) = match (config.clipnorm(), config.global_clipnorm()) {
        (Some(c), _) => (1.0, c),
        (None, Some(c)) => (2.0, c),
        _ => (0.0, 1.0),
    };
    vec![
        ("WORKGROUP_SIZE", f64::from(workgroup_size)),
        ("VEC4S_PER_INVOCATION", f64::from(vec4s_per_invocation)),
        ("CENTERED", b(variant.centered)),
        ("HAS_MOMENTUM", b(variant.momentum)),
        (
            "EPS_OUTSIDE",
            b(config.epsilon_placement() == EpsilonPlacement::OutsideSqrt),
        ),
        (
            "MOMENTUM_FORM",
            match config.momentum_form() {
                MomentumForm::LrInside => 0.0,
                MomentumForm::LrAfter => 1.0,
                MomentumForm::NegatedTrace => 2.0,
            },
        ),
        ("NESTEROV", b(config.nesterov())),
        (
            "LERP_AVERAGE",
            b(config.average_form() == AverageForm::Lerp),
        ),
        ("BIAS_CORRECTION", b(config.bias_correction())),
        ("DECOUPLED_DECAY", b(variant.decoupled)),
        ("L2_DECAY", b(variant.l2)),
        ("MAXIMIZE", b(config.maximize())),
        ("PER_VAR", b(per_var(config))),
        (
            "SEQUENTIAL",
            b(config.duplicate_indices() == crate::config::DuplicateIndices::Sequential),
        ),
        (
            "HAS_SQUARES",
            b(config.duplicate_indices() == crate::config::DuplicateIndices::Keras3),
        ),
        (
            "LAZY_SQUARES",
            b(
                config.duplicate_indices() == crate::config::DuplicateIndices::Keras3
                    && config.global_clipnorm().is_none(),
            ),
        ),
        ("NORM_MODE", norm_mode),
        (
            "SKIP_NONFINITE",
            b(config.non_finite() == crate::config::NonFinite::SkipStep),
        ),
        ("CLIP_NORM", clip_norm),
        ("VAR_OPTIONS", f64::from(variant.var_options)),
        ("ROW_VELOCITY", b(variant.rowwise)),
        ("STOCHASTIC", b(config.stochastic_rounding().is_some())),
        ("Q8_BLOCK", (config.q8_block() / 4) as f64),
        ("LAZY_HISTORY", f64::from(config.lazy_history())),
        (
            "ACCUMULATE",
            b(config.gradient_accumulation_steps().is_some()),
        ),
    ]
}

/// Whether the update kernels read per-variable clipping state.
pub(crate) fn per_var(config: &RmsPropConfig) -> bool {
    config.clips() || config.duplicate_indices() == crate::config::DuplicateIndices::Keras3
}

/// Names of the `override` constants a module declares, so that each pipeline gets only its own.
fn declared(source: &str, name: &str) -> bool {
    source.contains(&format!("override {name}:"))
}

/// The `constants` that a pipeline of the module `source` receives (those it declares); public so that
/// `tests/reflection.rs` can hold this filter to naga's list of the module's overrides.
#[doc(hidden)]
pub fn module_constants<'a>(source: &str, constants: &[(&'a str, f64)]) -> Vec<(&'a str, f64)> {
    constants
        .iter()
        .copied()
        .filter(|(n, _)| declared(source, n))
        .collect()
}
