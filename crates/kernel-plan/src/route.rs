//! `moe_route`: one block per token.

use crate::{dtype_suffix, fits, DeviceLimits, Launch, PlanError, PlanResult, INT_LIMIT};
use moemla_core::{DType, Op};

/// Threads per routing block.
pub const BLOCK: u32 = 256;

/// Dynamic shared memory of `moemla_moe_route_*`: scores, sel, taken (E each) and the
/// group score and kept flag (n_group each), 4 bytes per entry.
pub fn shared_bytes(experts: usize, n_group: usize) -> usize {
    12 * experts + 8 * n_group
}

/// The single launch of `moe_route` for `tokens` x `experts` logits of `dtype`.
pub fn plan(
    tokens: usize,
    experts: usize,
    n_group: usize,
    dtype: DType,
    limits: &DeviceLimits,
) -> PlanResult<Launch> {
    let op = Op::MoeRoute;
    let grid_x = fits(op, "T", tokens, INT_LIMIT)?;
    fits(op, "E", experts, INT_LIMIT)?;
    let smem = shared_bytes(experts, n_group);
    if smem > limits.max_shared_bytes as usize {
        return Err(PlanError {
            op,
            what: format!("E = {experts}"),
            reason: format!(
                "needs {smem} bytes of shared memory per block, the device allows {}",
                limits.max_shared_bytes
            ),
        });
    }
    Ok(Launch {
        kernel: format!("moemla_moe_route_{}", dtype_suffix(dtype)),
        grid: [grid_x, 1, 1],
        block: [BLOCK, 1, 1],
        shared_bytes: smem as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DeviceLimits {
        DeviceLimits {
            compute_units: 132,
            warp_size: 32,
            max_shared_bytes: 48 * 1024,
            tensor_cores: true,
        }
    }

    #[test]
    fn deepseek_v3_routing_is_one_block_per_token() {
        let l = plan(33, 256, 8, DType::BF16, &limits()).unwrap();
        assert_eq!(l.kernel, "moemla_moe_route_bf16");
        assert_eq!(l.grid, [33, 1, 1]);
        assert_eq!(l.block, [256, 1, 1]);
        assert_eq!(l.shared_bytes, 12 * 256 + 8 * 8);
    }

    #[test]
    fn too_many_experts_for_shared_memory_is_unsupported() {
        let err = plan(1, 8192, 1, DType::F32, &limits()).unwrap_err();
        assert_eq!(err.op, Op::MoeRoute);
        assert!(err.reason.contains("shared memory"));
    }
}
