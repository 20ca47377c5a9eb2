//! The parts of a step, each with one job: the variable registry and layout, validation, sparse
//! preparation, the pure planner, the GPU objects, and the encoder that records a plan.

pub(crate) mod encode;
pub(crate) mod gpu;
pub(crate) mod layout;
pub(crate) mod plan;
pub(crate) mod sparse_prep;
pub(crate) mod types;
pub(crate) mod validate;
