//! The tensors each op's case files carry (names and dtype rules), from the contract.

use moemla_core::{DType, Op};

/// What dtype a case tensor must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The run dtype (F32, F16 or BF16), the same for every `Run` tensor of the case.
    Run,
    /// Always F32.
    F32,
    /// Always I32.
    I32,
    /// Always U8 (packed bytes, compared byte for byte).
    U8,
    /// The run dtype or F8E4M3 (expert weights; the op checks both agree).
    RunOrF8,
    /// The run dtype or U8 (a latent cache: dense, or `fp8_ds_v32` rows).
    RunOrU8,
}

impl Rule {
    /// Whether a tensor of dtype `got` fits this rule in a case of run dtype `run`.
    pub(crate) fn accepts(self, run: DType, got: DType) -> bool {
        match self {
            Rule::Run => got == run,
            Rule::F32 => got == DType::F32,
            Rule::I32 => got == DType::I32,
            Rule::U8 => got == DType::U8,
            Rule::RunOrF8 => got == run || got == DType::F8E4M3,
            Rule::RunOrU8 => got == run || got == DType::U8,
        }
    }

    /// The dtypes this rule accepts in a case of run dtype `run`, in words.
    pub(crate) fn describe(self, run: DType) -> String {
        match self {
            Rule::Run => run.to_string(),
            Rule::F32 => "F32".into(),
            Rule::I32 => "I32".into(),
            Rule::U8 => "U8".into(),
            Rule::RunOrF8 => format!("{run} or F8_E4M3"),
            Rule::RunOrU8 => format!("{run} or U8"),
        }
    }

    /// Whether an output of this rule is compared as floats (with a tolerance).
    pub(crate) fn is_float_output(self) -> bool {
        matches!(self, Rule::F32)
    }
}

/// One tensor argument: its name (without the `in.` / `out.` prefix), dtype rule and
/// whether a case must carry it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arg {
    pub name: &'static str,
    pub rule: Rule,
    pub required: bool,
}

/// The tensors of one op. The first input decides the run dtype (logits, x, q, kv).
#[derive(Debug)]
pub(crate) struct OpSpec {
    pub inputs: &'static [Arg],
    /// Expected outputs as stored: floats as F32, ids as I32, bytes as U8.
    pub outputs: &'static [Arg],
}

const fn arg(name: &'static str, rule: Rule, required: bool) -> Arg {
    Arg {
        name,
        rule,
        required,
    }
}

const MOE_ROUTE: OpSpec = OpSpec {
    inputs: &[
        arg("logits", Rule::Run, true),
        arg("bias", Rule::F32, false),
        arg("input_ids", Rule::I32, false),
        arg("tid2eid", Rule::I32, false),
    ],
    outputs: &[
        arg("topk_ids", Rule::I32, true),
        arg("topk_weights", Rule::F32, true),
    ],
};

const MOE_EXPERTS: OpSpec = OpSpec {
    inputs: &[
        arg("x", Rule::Run, true),
        arg("w13", Rule::RunOrF8, true),
        arg("w2", Rule::RunOrF8, true),
        arg("topk_ids", Rule::I32, true),
        arg("topk_weights", Rule::F32, true),
        arg("w13_scale", Rule::F32, false),
        arg("w2_scale", Rule::F32, false),
        arg("shared_w13", Rule::Run, false),
        arg("shared_w2", Rule::Run, false),
    ],
    outputs: &[arg("y", Rule::F32, true)],
};

const MLA_DECODE: OpSpec = OpSpec {
    inputs: &[
        arg("q", Rule::Run, true),
        arg("kv_cache", Rule::RunOrU8, true),
        arg("block_table", Rule::I32, true),
        arg("cache_seqlens", Rule::I32, true),
    ],
    outputs: &[arg("o", Rule::F32, true), arg("lse", Rule::F32, true)],
};

const MLA_KV_QUANTIZE: OpSpec = OpSpec {
    inputs: &[arg("kv", Rule::Run, true)],
    outputs: &[arg("kv_fp8", Rule::U8, true)],
};

const MLA_SPARSE_DECODE: OpSpec = OpSpec {
    inputs: &[
        arg("q", Rule::Run, true),
        arg("kv_cache", Rule::RunOrU8, true),
        arg("indices", Rule::I32, true),
        arg("topk_length", Rule::I32, false),
        arg("attn_sink", Rule::F32, false),
    ],
    outputs: &[arg("o", Rule::F32, true), arg("lse", Rule::F32, true)],
};

const DSA_INDEXER_TOPK: OpSpec = OpSpec {
    inputs: &[
        arg("q", Rule::Run, true),
        arg("weights", Rule::F32, true),
        arg("k_cache", Rule::Run, true),
        arg("block_table", Rule::I32, true),
        arg("cache_seqlens", Rule::I32, true),
    ],
    outputs: &[
        arg("topk_indices", Rule::I32, true),
        arg("topk_scores", Rule::F32, true),
    ],
};

/// The cache is in and out: `in.kv_cache` before the write, `out.kv_cache` after it (the
/// run dtype or U8), compared byte for byte.
const MLA_CACHE_WRITE: OpSpec = OpSpec {
    inputs: &[
        arg("kv", Rule::Run, true),
        arg("slot_mapping", Rule::I32, true),
        arg("kv_cache", Rule::RunOrU8, true),
    ],
    outputs: &[arg("kv_cache", Rule::RunOrU8, true)],
};

/// The tensor table of `op`.
pub(crate) fn spec(op: Op) -> &'static OpSpec {
    match op {
        Op::MoeRoute => &MOE_ROUTE,
        Op::MoeExperts => &MOE_EXPERTS,
        Op::MlaDecode => &MLA_DECODE,
        Op::MlaKvQuantize => &MLA_KV_QUANTIZE,
        Op::MlaSparseDecode => &MLA_SPARSE_DECODE,
        Op::DsaIndexerTopk => &DSA_INDEXER_TOPK,
        Op::MlaCacheWrite => &MLA_CACHE_WRITE,
    }
}
