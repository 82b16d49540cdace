//! `moe_route`: one block per token.

use crate::{
    check_launch, checked, dtype_suffix, fits, DeviceLimits, Launch, PlanError, PlanResult,
    INT_LIMIT,
};
use moemla_core::{DType, Op};

/// Threads per routing block.
pub const BLOCK: u32 = 256;

/// Static shared memory of `moemla_moe_route_*`: one f32 per warp of a 1024-thread block.
pub const STATIC_SHARED_BYTES: u32 = 32 * 4;

/// Bins of one radix-select pass.
const RADIX_BINS: usize = 256;

/// Dynamic shared memory of `moemla_moe_route_*` with `block` threads (the layout in
/// kernels/README.md): `sel` `f32[E]`, `cand` `i32[top_k rounded up to a power of two]`,
/// `gscore` f32, `gsel` i32 and `gkept` i32 `[n_group]` each, `hist` `i32[256]`,
/// `part` `i32[2 * block]`, `bcast` `i32[2]`. `None` when the count overflows.
pub fn shared_bytes(experts: usize, top_k: usize, n_group: usize, block: usize) -> Option<usize> {
    let cand = top_k.max(1).checked_next_power_of_two()?;
    let entries = experts
        .checked_add(cand)?
        .checked_add(n_group.checked_mul(3)?)?
        .checked_add(RADIX_BINS)?
        .checked_add(block.checked_mul(2)?)?
        .checked_add(2)?;
    entries.checked_mul(4)
}

/// The single launch of `moe_route` for `tokens` x `experts` logits of `dtype`, choosing
/// `top_k` experts out of `n_group` groups.
pub fn plan(
    tokens: usize,
    experts: usize,
    top_k: usize,
    n_group: usize,
    dtype: DType,
    limits: &DeviceLimits,
) -> PlanResult<Launch> {
    let op = Op::MoeRoute;
    let grid_x = fits(op, "T", tokens, INT_LIMIT)?;
    fits(op, "E", experts, INT_LIMIT)?;
    fits(
        op,
        "T * top_k",
        checked(op, "T * top_k", tokens.checked_mul(top_k))?,
        INT_LIMIT,
    )?;
    let smem = checked(
        op,
        "shared memory",
        shared_bytes(experts, top_k, n_group, BLOCK as usize),
    )?;
    let shared_bytes = u32::try_from(smem)
        .ok()
        .filter(|&b| b <= limits.max_shared_bytes)
        .ok_or_else(|| PlanError {
            op,
            what: format!("E = {experts}, top_k = {top_k}, n_group = {n_group}"),
            reason: format!(
                "needs {smem} bytes of shared memory per block, the device allows {}",
                limits.max_shared_bytes
            ),
        })?;
    let launch = Launch {
        kernel: format!("moemla_moe_route_{}", dtype_suffix(dtype)),
        grid: [grid_x, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes,
    };
    check_launch(op, &launch, STATIC_SHARED_BYTES, limits)?;
    Ok(launch)
}

/// The launch of `moemla_moe_route_hash_resolve` after a hash-routed `moe_route`: one
/// thread turns the first bad `tid2eid` entry in token order into its table position.
pub fn hash_resolve() -> Launch {
    Launch {
        kernel: "moemla_moe_route_hash_resolve".into(),
        grid: [1, 1, 1],
        block: [1, 1, 1],
        shared_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DeviceLimits {
        DeviceLimits::cuda(132, 48 * 1024, true)
    }

    #[test]
    fn deepseek_v3_routing_is_one_block_per_token() {
        let l = plan(33, 256, 8, 8, DType::BF16, &limits()).unwrap();
        assert_eq!(l.kernel, "moemla_moe_route_bf16");
        assert_eq!(l.grid, [33, 1, 1]);
        assert_eq!(l.block, [256, 1, 1]);
        // sel 256, cand 8, groups 3 * 8, hist 256, part 512, bcast 2 entries of 4 bytes.
        assert_eq!(l.shared_bytes, 4 * (256 + 8 + 24 + 256 + 512 + 2));
    }

    #[test]
    fn candidates_round_up_to_a_power_of_two() {
        let base = shared_bytes(64, 1, 1, 256).unwrap();
        assert_eq!(shared_bytes(64, 5, 1, 256).unwrap(), base + 4 * 7);
        assert_eq!(shared_bytes(64, 64, 1, 256).unwrap(), base + 4 * 63);
        assert_eq!(shared_bytes(usize::MAX / 2, 1, 1, 256), None);
    }

    #[test]
    fn too_many_experts_for_shared_memory_is_unsupported() {
        let err = plan(1, 16384, 8, 1, DType::F32, &limits()).unwrap_err();
        assert_eq!(err.op, Op::MoeRoute);
        assert!(
            err.reason.contains("bytes of shared memory per block"),
            "{err:?}"
        );
    }

    #[test]
    fn sizes_that_overflow_are_plan_errors_not_wraps() {
        let err = plan(usize::MAX, 256, 8, 8, DType::F32, &limits()).unwrap_err();
        assert!(err.what.starts_with("T = "), "{err:?}");
        let err = plan(1 << 20, 256, 1 << 12, 1, DType::F32, &limits()).unwrap_err();
        assert!(err.what.starts_with("T * top_k = "), "{err:?}");
        let err = plan(1, usize::MAX / 2, 1, 1, DType::F32, &limits()).unwrap_err();
        assert!(err.what.starts_with("E = "), "{err:?}");
    }
}
