//! Expert weights laid out in panels of 16 rows, the CPU backend's answer to
//! `pack_expert_weights` for F32 weights on AVX-512: each panel holds, column after
//! column, the 16 values of its rows in that column (`[K, 16]`), so that a weight vector
//! of 16 output rows is one load and every token of a block is broadcast against it
//! ([`kernel::products`]). Each expert's matrix is split into groups packed separately
//! (gate rows and up rows for `w13`, so that the two halves' panels pair up whatever I
//! is); a group's last panel is padded with zero rows.

pub mod kernel;

use crate::aligned::Aligned;
use moemla_core::{DType, DeviceBuffer, DeviceTensor, Error, ExpertWeight, Op, Result};
use rayon::prelude::*;
use std::any::Any;
use std::fmt;

/// Rows per panel: one AVX-512 vector of f32.
pub const LANES: usize = 16;

/// Most panels one kernel block multiplies at once.
pub const MAX_BLOCK_PANELS: usize = 2;

/// Columns per chunk: the op walks each run of panels a chunk of columns at a time, and
/// every token block of the expert meets the chunk before the next (two panels' chunk,
/// 2 x 256 x 64 B = 32 KiB, stays in Zen 5's 48 KiB L1 after the first block read it,
/// in L2 where L1 is smaller). Measured with the kernel alone (16 experts of 2816 x 2048
/// f32 streamed, both cores of the Zen 5 dev machine): 256 and 512 as fast as whole rows
/// at 25-40 tokens; in the op on a 2-core Zen 4 (V2-Lite T = 256 and H = 7168 T = 64 f32,
/// next chunk prefetched): 128, 256 and 384 alike.
pub const CHUNK: usize = 256;

/// Most tokens one kernel block multiplies at once (`MAX_BLOCK_PANELS` x this many
/// accumulators stay in registers).
pub const MAX_BLOCK_TOKENS: usize = 12;

/// Where the panels of an `[E, N, K]` expert weight tensor lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Which weight the tensor is.
    pub kind: ExpertWeight,
    /// E.
    pub experts: usize,
    /// Groups per expert: 2 (gate, up) for `GateUp`, 1 for `Down`.
    pub groups: usize,
    /// Rows per group (I for `GateUp`, H for `Down`).
    pub rows: usize,
    /// K, the columns (H for `GateUp`, I for `Down`).
    pub cols: usize,
}

impl Layout {
    /// The layout of `kind` with dims `[E, N, K]`.
    pub fn of(kind: ExpertWeight, [experts, n, cols]: [usize; 3]) -> Layout {
        let groups = match kind {
            ExpertWeight::GateUp => 2,
            ExpertWeight::Down => 1,
        };
        Layout {
            kind,
            experts,
            groups,
            rows: n / groups,
            cols,
        }
    }

    /// The tensor's dims, `[E, N, K]`.
    pub fn dims(&self) -> [usize; 3] {
        [self.experts, self.groups * self.rows, self.cols]
    }

    /// Panels per group.
    pub fn panels(&self) -> usize {
        self.rows.div_ceil(LANES)
    }

    /// Floats per panel.
    fn panel_len(&self) -> usize {
        self.cols * LANES
    }

    /// Floats in all panels, or `None` when that overflows.
    fn len(&self) -> Option<usize> {
        self.experts
            .checked_mul(self.groups)?
            .checked_mul(self.panels())?
            .checked_mul(self.cols)?
            .checked_mul(LANES)
    }

    /// Index of panel `panel` of group `group` of expert `expert`.
    fn index(&self, expert: usize, group: usize, panel: usize) -> usize {
        (expert * self.groups + group) * self.panels() + panel
    }
}

/// A packed expert weight tensor: the buffer of the tensors `pack_expert_weights` returns
/// on the CPU. Immutable once packed.
pub struct PanelWeights {
    layout: Layout,
    data: Aligned<f32>,
}

impl PanelWeights {
    /// Packs `w` (`[E, N, K]` row-major, `layout`'s dims), allocating fallibly.
    pub fn pack(w: &[f32], layout: Layout) -> Result<PanelWeights> {
        let len = layout.len().ok_or_else(|| Error::Size {
            dtype: DType::F32,
            shape: layout.dims().into(),
        })?;
        let mut data = Aligned::try_filled(len, 0.0f32, "cpu pack_expert_weights")?;
        let (rows, cols, panels) = (layout.rows, layout.cols, layout.panels());
        if len > 0 {
            data.par_chunks_mut(layout.panel_len())
                .enumerate()
                .for_each(|(index, panel)| {
                    let (group_index, p) = (index / panels, index % panels);
                    let first = group_index * rows + p * LANES;
                    let live = (rows - p * LANES).min(LANES);
                    crate::transpose::strided(&w[first * cols..], cols, (live, cols), panel, LANES);
                });
        }
        Ok(PanelWeights { layout, data })
    }

    /// The weights back in the contract's row-major `[E, N, K]` layout.
    pub fn unpack(&self) -> Result<Vec<f32>> {
        let l = self.layout;
        // At most the panels' checked length (that only adds padding rows).
        let len: usize = l.dims().iter().product();
        let mut out = moemla_core::alloc::try_filled_vec(len, "cpu download of packed weights")?;
        if len > 0 {
            out.par_chunks_mut(l.rows * l.cols)
                .enumerate()
                .for_each(|(group_index, group)| {
                    for p in 0..l.panels() {
                        let live = (l.rows - p * LANES).min(LANES);
                        let panel = &self.data[(group_index * l.panels() + p) * l.panel_len()..];
                        let dst = &mut group[p * LANES * l.cols..];
                        crate::transpose::strided(panel, LANES, (l.cols, live), dst, l.cols);
                    }
                });
        }
        Ok(out)
    }

    /// `t`'s panels if it is a tensor in panels (of backend `backend`), checked to be
    /// packed as `kind` for `t`'s own dims (not, say, reshaped): [`Error::Input`] naming
    /// `moe_experts`'s `arg` otherwise.
    pub fn of_tensor<'a>(
        t: &'a DeviceTensor,
        backend: &str,
        arg: &'static str,
        kind: ExpertWeight,
    ) -> Result<Option<&'a PanelWeights>> {
        let Ok(p) = t.buffer::<PanelWeights>(backend, "moe_experts", arg) else {
            return Ok(None);
        };
        let dims: [usize; 3] = t.dims().try_into().unwrap_or_default();
        if p.layout != Layout::of(kind, dims) {
            return Err(Error::Input {
                op: Op::MoeExperts,
                arg,
                expected: format!("weights packed as {kind:?} for shape {}", t.shape()),
                got: format!(
                    "weights packed as {:?} for shape {:?}",
                    p.layout.kind,
                    p.layout.dims()
                ),
            });
        }
        Ok(Some(p))
    }

    /// Whether `t` is a tensor in panels.
    pub fn holds(t: &DeviceTensor) -> bool {
        t.buffer::<PanelWeights>(t.backend(), "moe_experts", "weights")
            .is_ok()
    }

    /// Bytes of the panels (padding included).
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// Panel `panel` of group `group` (0 gate or rows, 1 up) of expert `expert`: `[K, 16]`.
    pub fn panel(&self, expert: usize, group: usize, panel: usize) -> &[f32] {
        let start = self.layout.index(expert, group, panel) * self.layout.panel_len();
        &self.data[start..start + self.layout.panel_len()]
    }
}

impl fmt::Debug for PanelWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PanelWeights({:?})", self.layout)
    }
}

impl DeviceBuffer for PanelWeights {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Whether this CPU lays F32 expert weights out in panels (it has AVX-512F, which
/// [`kernel::products`] needs).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests;
