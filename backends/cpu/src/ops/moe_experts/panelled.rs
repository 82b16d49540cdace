//! The grouped SwiGLU FFN over weights laid out in panels ([`PanelWeights`], from
//! `pack_expert_weights`): per expert, runs of weight panels meet all of the expert's
//! tokens in blocks of up to [`MAX_BLOCK_TOKENS`] ([`kernel::products`]), the panels
//! walked in column chunks of [`CHUNK`] so that a chunk read from memory for the first
//! block is still in cache (L1 or L2) for the others; that first block requests the next
//! chunk meanwhile, where the expert has [`PREFETCH_MIN_TOKENS`] tokens or more. Tokens,
//! activations and outputs are kept in column panels, `[ceil(width / 16), n_e, 16]` per
//! expert, expert after expert: a run of output panels is then one contiguous chunk, and
//! the next GEMM reads it as its token panels.

use super::permute::Permutation;
use crate::aligned::Aligned;
use crate::panels::kernel::{self, Pass};
use crate::panels::{PanelWeights, CHUNK, LANES, MAX_BLOCK_PANELS, MAX_BLOCK_TOKENS};
use crate::pooled::{self, Pooled};
use crate::vmath;
use moemla_core::{DeviceTensor, Error, ExpertWeight, Op, Result};
use rayon::prelude::*;

/// Fewest tokens of an expert for which its first block over each chunk prefetches the
/// weights ([`Pass::prefetch`]; the expert's later blocks never do: they read the chunk
/// from cache). With fewer, the expert is bound by its weights' stream, and the hardware
/// prefetchers run it faster alone. In the op on a 2-core Zen 4 (f32,
/// H 2048, I 1408, E 64, top-6; A/B in one process, min ms of three rounds, prefetching
/// always against from 8 tokens): T = 1 7.1-7.7 against 6.7-7.1, T = 16 47.3-50.7 against
/// 38.6-40.5, T = 64 (6 tokens per expert) 69.8-83.7 against 67.8-80.9; at T = 128 (12 per
/// expert) never prefetching took 93.4-103.6 against 78.6-83.4 always.
const PREFETCH_MIN_TOKENS: usize = 8;

/// Bytes of weights per task: a run of panels of one expert.
#[cfg(not(test))]
const TASK_BYTES: usize = 2 << 20;
/// Small tasks in tests, so that their shapes span several runs and a partial one.
#[cfg(test)]
const TASK_BYTES: usize = 8 << 10;

/// Both weights of a call in panels, and the FFN's widths.
#[derive(Clone, Copy, Debug)]
pub struct PanelExperts<'a> {
    /// Gate and up projections.
    pub w13: &'a PanelWeights,
    /// Down projections.
    pub w2: &'a PanelWeights,
    /// H.
    pub hidden: usize,
    /// I.
    pub inter: usize,
}

impl<'a> PanelExperts<'a> {
    /// The weights `(w13 arg, w13)` and `(w2 arg, w2)` of a call in panels, `None` where
    /// neither is. One in panels without the other, or one packed as the other kind or
    /// for other dims (a reshaped tensor) is [`Error::Input`].
    pub fn of(
        backend: &str,
        (a13, w13): (&'static str, &'a DeviceTensor),
        (a2, w2): (&'static str, &'a DeviceTensor),
        (hidden, inter): (usize, usize),
    ) -> Result<Option<Self>> {
        let p13 = PanelWeights::of_tensor(w13, backend, a13, ExpertWeight::GateUp)?;
        let p2 = PanelWeights::of_tensor(w2, backend, a2, ExpertWeight::Down)?;
        let unpaired = |arg, other| Error::Input {
            op: Op::MoeExperts,
            arg,
            expected: format!("laid out by pack_expert_weights, as `{other}` is"),
            got: "the contract's layout".to_string(),
        };
        match (p13, p2) {
            (Some(w13), Some(w2)) => Ok(Some(PanelExperts {
                w13,
                w2,
                hidden,
                inter,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(unpaired(a2, a13)),
            (None, Some(_)) => Err(unpaired(a13, a2)),
        }
    }

    /// Each routed row's down projection `W2_e (silu(W1_e x) * W3_e x)` (with a SwiGLU
    /// `limit` c, `silu(min(g, c)) * clamp(u, -c, c)`), in column panels of width H, for
    /// the rows of `perm` gathered from `x` [T, H].
    pub fn run(&self, perm: &Permutation, x: &[f32], limit: Option<f32>) -> Result<Pooled> {
        let xc = gather(perm, x, self.hidden)?;
        let hc = self.gate_up(perm, &xc, limit)?;
        drop(xc);
        self.down(perm, &hc)
    }

    /// The activations in column panels of width I.
    fn gate_up(&self, perm: &Permutation, xc: &[f32], limit: Option<f32>) -> Result<Pooled> {
        let (h, i) = (self.hidden, self.inter);
        let mut out = panels_buffer(perm, i, "cpu moe_experts activations")?;
        let runs = runs(perm, &mut out, i.div_ceil(LANES), run_panels(2 * h));
        runs.into_par_iter()
            .try_for_each_init(Aligned::new, |up, run| {
                let x = expert_panels(perm, xc, h, run.expert);
                let w = |group| move |p| self.w13.panel(run.expert, group, p);
                multiply(w(0), (x, run.tokens, h), run.first, run.out)?;
                // The up projections, overwritten by `multiply` (a thread's buffer, reused).
                up.try_resize(run.out.len(), 0.0, "cpu moe_experts up projections")?;
                multiply(w(1), (x, run.tokens, h), run.first, up)?;
                vmath::swiglu(run.out, up, limit);
                Ok(())
            })?;
        Ok(out)
    }

    /// The down projections in column panels of width H.
    fn down(&self, perm: &Permutation, hc: &[f32]) -> Result<Pooled> {
        let (h, i) = (self.hidden, self.inter);
        let mut out = panels_buffer(perm, h, "cpu moe_experts down projections")?;
        let runs = runs(perm, &mut out, h.div_ceil(LANES), run_panels(i));
        runs.into_par_iter().try_for_each(|run| {
            let x = expert_panels(perm, hc, i, run.expert);
            let w = |p| self.w2.panel(run.expert, 0, p);
            multiply(w, (x, run.tokens, i), run.first, run.out)
        })?;
        Ok(out)
    }
}

/// Adds `scale(v)` for each value `v` of permuted row `row` of `y` (column panels of
/// width `width`) to `acc` (`width` long).
pub fn add_row(
    y: &[f32],
    perm: &Permutation,
    (row, width): (usize, usize),
    acc: &mut [f32],
    scale: impl Fn(f32) -> f32,
) {
    let (first, n) = perm.owner_rows(row);
    let base = first * row_len(width);
    for (c, a) in acc.chunks_mut(LANES).enumerate() {
        let at = base + (c * n + row - first) * LANES;
        for (a, &v) in a.iter_mut().zip(&y[at..at + LANES]) {
            *a += scale(v);
        }
    }
}

/// A zeroed buffer of column panels of width `width` for every row of `perm`.
fn panels_buffer(perm: &Permutation, width: usize, what: &str) -> Result<Pooled> {
    pooled::zeroed(&[perm.rows(), row_len(width)], what)
}

/// Floats of one row in column panels of width `width`: whole panels of 16.
fn row_len(width: usize) -> usize {
    width.div_ceil(LANES) * LANES
}

/// The rows of `perm` gathered from `x` [T, width] into column panels (zero past `width`).
fn gather(perm: &Permutation, x: &[f32], width: usize) -> Result<Pooled> {
    let mut out = panels_buffer(perm, width, "cpu moe_experts gathered rows")?;
    let panels = width.div_ceil(LANES);
    let runs = runs(perm, &mut out, panels, 1);
    runs.into_par_iter().for_each(|run| {
        let (first, _) = perm.expert_rows(run.expert);
        let (col, live) = (run.first * LANES, (width - run.first * LANES).min(LANES));
        for (t, dst) in run.out.chunks_mut(LANES).enumerate() {
            let token = perm.tokens[first + t];
            dst[..live].copy_from_slice(&x[token * width + col..][..live]);
        }
    });
    Ok(out)
}

/// Expert `expert`'s column panels in `buf` (rows of `perm`, panels of width `width`).
fn expert_panels<'b>(perm: &Permutation, buf: &'b [f32], width: usize, expert: usize) -> &'b [f32] {
    let (first, n) = perm.expert_rows(expert);
    &buf[first * row_len(width)..(first + n) * row_len(width)]
}

/// Panels per run for weights of `cols` columns (per panel index: 2 groups for `w13`).
fn run_panels(cols: usize) -> usize {
    (TASK_BYTES / cols.saturating_mul(LANES * 4).max(1)).max(1)
}

/// A run of one expert's output panels.
struct Run<'b> {
    expert: usize,
    /// The expert's rows (tokens).
    tokens: usize,
    /// Its first panel.
    first: usize,
    /// Its panels, `[panels, tokens, 16]`.
    out: &'b mut [f32],
}

/// `buf` (column panels, `panels` per row) cut into runs of up to `per_run` panels of
/// each expert with rows, in order.
fn runs<'b>(perm: &Permutation, buf: &'b mut [f32], panels: usize, per_run: usize) -> Vec<Run<'b>> {
    let mut items = Vec::new();
    let mut rest = buf;
    for expert in 0..perm.offsets.len() - 1 {
        let (_, n) = perm.expert_rows(expert);
        let mut first = 0;
        while n > 0 && first < panels {
            let count = per_run.min(panels - first);
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(count * n * LANES);
            rest = tail;
            items.push(Run {
                expert,
                tokens: n,
                first,
                out,
            });
            first += count;
        }
    }
    items
}

/// `out` (panels `first..` of one expert's outputs, `[panels, n, 16]`) `= W x` for its
/// tokens `x` (column panels of `k` columns, `n` tokens) and weight panels `panel(p)`.
fn multiply<'w>(
    panel: impl Fn(usize) -> &'w [f32],
    (x, n, k): (&[f32], usize, usize),
    first: usize,
    out: &mut [f32],
) -> Result<()> {
    let stride = n * LANES;
    let panels = out.len() / stride;
    let blocks = n.div_ceil(MAX_BLOCK_TOKENS);
    let mut p = 0;
    while p < panels {
        let count = (panels - p).min(MAX_BLOCK_PANELS);
        let pair = &mut out[p * stride..(p + count) * stride];
        let (o0, o1) = pair.split_at_mut(stride);
        let w = [panel(first + p), panel(first + p + count - 1)];
        let mut col = 0;
        while col < k {
            let cols = CHUNK.min(k - col);
            let mut t0 = 0;
            for b in 0..blocks {
                let tokens = (n - t0) / (blocks - b);
                let ws = [&w[0][col * LANES..], &w[1][col * LANES..]];
                let second: &mut [f32] = match count {
                    2 => &mut o1[t0 * LANES..],
                    _ => Default::default(),
                };
                let mut outs = [&mut o0[t0 * LANES..], second];
                let xs = (&x[col / LANES * stride + t0 * LANES..], stride, tokens);
                let pass = Pass {
                    accumulate: col > 0,
                    prefetch: b == 0 && n >= PREFETCH_MIN_TOKENS,
                };
                // Tensors are packed only where the CPU has AVX-512F (`panels::available`).
                if !kernel::products(&ws[..count], xs, cols, &mut outs[..count], pass) {
                    return Err(Error::Device {
                        backend: crate::NAME.to_string(),
                        call: "moe_experts".to_string(),
                        message: "weights in panels need AVX-512F, which this CPU lacks".into(),
                    });
                }
                t0 += tokens;
            }
            col += cols;
        }
        p += count;
    }
    Ok(())
}
