//! Unit tests of `src/kernels.rs` (kept apart so that the module stays readable).
use super::*;

/// Every module parses and validates with naga, and every binding the Rust table lists is declared in
/// the WGSL with the same access (no GPU needed).
#[test]
fn shaders_validate_and_match_the_binding_tables() {
    use crate::dtype::Dtype::{Bf16, F16, F32};
    let modes = [ParamsMode::Uniform, ParamsMode::Immediate];
    let storages = [
        StorageTypes::default(),
        StorageTypes::all(F16),
        StorageTypes::all(Bf16),
        StorageTypes {
            variable: F32,
            gradient: Bf16,
            state: F16,
            copy: Some(Bf16),
        },
        StorageTypes {
            state: crate::dtype::Dtype::Q8,
            ..StorageTypes::default()
        },
    ];
    for (k, mode, storage) in ALL
        .iter()
        .flat_map(|k| modes.map(|m| (k, m)))
        .flat_map(|(k, m)| storages.map(|st| (k, m, st)))
    {
        let module = naga::front::wgsl::parse_str(&k.module.source(mode, storage))
            .unwrap_or_else(|e| panic!("{} ({mode:?}, {storage:?}): {e}", k.name));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} ({storage:?}): {e:?}", k.name));
        assert!(
            module.entry_points.iter().any(|e| e.name == k.entry),
            "{}",
            k.name
        );
        for (b, kind) in k.bindings_for(mode) {
            let var = module
                .global_variables
                .iter()
                .map(|(_, v)| v)
                .find(|v| {
                    v.binding
                        .as_ref()
                        .is_some_and(|r| r.group == 0 && r.binding == b)
                })
                .unwrap_or_else(|| panic!("{}: binding {b} not declared", k.name));
            let ok = match (kind, var.space) {
                (U, naga::AddressSpace::Uniform) => true,
                (R, naga::AddressSpace::Storage { access }) => {
                    !access.contains(naga::StorageAccess::STORE)
                }
                (RW, naga::AddressSpace::Storage { access }) => {
                    access.contains(naga::StorageAccess::STORE)
                }
                _ => false,
            };
            assert!(
                ok,
                "{}: binding {b} declared as {:?}, table says {kind:?}",
                k.name, var.space
            );
        }
    }
}

#[test]
fn folded_grids_stay_within_the_limit_with_less_than_a_row_past_the_end() {
    for max in [1u64, 2, 7, 65_535] {
        for groups in [
            1,
            2,
            max - 1,
            max,
            max + 1,
            2 * max,
            2 * max + 1,
            max * max - 1,
            max * max,
        ] {
            if groups == 0 || groups > max * max {
                continue;
            }
            let (gx, gy) = fold_grid(groups, max);
            assert!(
                gx <= max && gy <= max,
                "{groups} groups, limit {max}: {gx} x {gy}"
            );
            assert!(
                gx * gy >= groups,
                "{groups} groups, limit {max}: {gx} x {gy}"
            );
            assert!(
                gx * gy - groups < gy,
                "{groups} groups, limit {max}: {gx} x {gy}"
            );
        }
    }
    assert_eq!(fold_grid(65_536, 65_535), (32_768, 2));
}
