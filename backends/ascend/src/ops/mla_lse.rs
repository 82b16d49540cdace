//! The second pass of mla_decode: `lse` [B, Hq, Sq] (natural log, f32), which FIA's MLA
//! mode cannot output, from existing aclnn ops on the same inputs.
//!
//! Per sequence b with seqlen > 0: its used cache blocks are gathered into an F32
//! `[n_used * block_size, 576]` matrix (aclnnInplaceCopy per block, converting dtype), `q[b]`
//! is copied as F32 `[Sq * Hq, 576]` (aclnnInplaceCopy), scores = q @ K^T over the first
//! seqlen rows (aclnnMatmul with K^T a transposed view, cubeMathType 0 = KEEP_DTYPE),
//! scaled by softmax_scale (aclnnMuls), and for each query i aclnnLogSumExp over its
//! attended columns [0, L_i) writes `lse[b, :, i]` through a strided view. Ranges with
//! L_i <= 0 keep the -inf lse was initialised with.

use super::mla_decode::DQK;
use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::buffer::DevMem;
use crate::ops::compose;
use crate::AscendBackend;
use moemla_core::calls::MlaDecodeCall;
use moemla_core::Result;

/// Queues the lse computation of sequence `bi` (`len` > 0 cached tokens). Its temporaries
/// may be dropped before the stream ran (`Device` defers their free).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lse_for_sequence(
    be: &AscendBackend,
    call: &MlaDecodeCall<'_>,
    bi: usize,
    len: usize,
    row: &[i32],
    q_mem: &DevMem,
    kv_mem: &DevMem,
    lse: &DevMem,
) -> Result<()> {
    let dev = &be.dev;
    let (sq, hq, bs) = (call.s_q, call.h_q, call.block_size);
    let dt = acl_dtype(call.dtype);
    let used = len.div_ceil(bs);
    let rows = sq * hq;
    let copy = |dst: &DevMem,
                dims: &[usize],
                dst_off: usize,
                src: &DevMem,
                src_off: usize|
     -> Result<()> {
        let d = dev.tensor(dst, dims, None, dst_off, ACL_FLOAT)?;
        let s = dev.tensor(src, dims, None, src_off, dt)?;
        compose::inplace_copy(dev, &d, &s)
    };
    let k32 = dev.alloc(used * bs * DQK * 4)?;
    for (j, &blk) in row[..used].iter().enumerate() {
        copy(
            &k32,
            &[bs, DQK],
            j * bs * DQK,
            kv_mem,
            blk as usize * bs * DQK,
        )?;
    }
    let q32 = dev.alloc(rows * DQK * 4)?;
    copy(&q32, &[rows, DQK], 0, q_mem, bi * rows * DQK)?;
    let scores = dev.alloc(rows * len * 4)?;
    let scaled = dev.alloc(rows * len * 4)?;
    {
        let a = dev.tensor(&q32, &[rows, DQK], None, 0, ACL_FLOAT)?;
        let kt = dev.tensor(&k32, &[DQK, len], Some(&[1, DQK]), 0, ACL_FLOAT)?;
        let c = dev.tensor(&scores, &[rows, len], None, 0, ACL_FLOAT)?;
        compose::matmul(dev, &a, &kt, &c)?;
        let s = dev.scalar_f32(call.params.softmax_scale as f32)?;
        let out = dev.tensor(&scaled, &[rows, len], None, 0, ACL_FLOAT)?;
        compose::muls(dev, &c, &s, &out)?;
    }
    let last_dim = dev.int_array(&[1])?;
    for i in 0..sq {
        let l = call.attended_len(len, i);
        if l <= 0 {
            continue;
        }
        let x = dev.tensor(
            &scaled,
            &[hq, l as usize],
            Some(&[len, 1]),
            i * hq * len,
            ACL_FLOAT,
        )?;
        let y = dev.tensor(lse, &[hq], Some(&[sq]), bi * hq * sq + i, ACL_FLOAT)?;
        compose::log_sum_exp(dev, &x, &last_dim, &y)?;
    }
    Ok(())
}
