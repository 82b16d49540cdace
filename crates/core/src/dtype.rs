//! Element types of tensors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The element type of a tensor.
///
/// Float ops compute in f32 whatever the storage type; `F16` and `BF16` are storage formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// IEEE-754 binary16.
    F16,
    /// bfloat16 (the upper 16 bits of an f32).
    BF16,
    /// Signed 32-bit integer (ids, block tables, sequence lengths).
    I32,
    /// FP8 e4m3fn (OCP; max 448, no infinities, 0x80 = -0.0): block-scaled expert weights
    /// (contract v2). Conversions: [`crate::fp8`].
    F8E4M3,
    /// Unsigned bytes: packed rows such as the 656-byte FP8 latent cache (contract v2).
    U8,
}

impl DType {
    /// The float types every op runs in (the run dtypes).
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::U8 => 1,
        }
    }

    /// Whether this is one of the float types ops compute with (F32, F16, BF16).
    pub fn is_float(self) -> bool {
        Self::FLOATS.contains(&self)
    }

    /// The canonical upper-case name ("F32", "BF16", ...), as safetensors spells it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::F8E4M3 => "F8_E4M3",
            DType::U8 => "U8",
        }
    }

    /// Parses a name as written by [`DType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I32,
            DType::F8E4M3,
            DType::U8,
        ]
        .into_iter()
        .find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
