//! Device-side index errors (kernels/README.md, "Error flags"): a flag is one u64, all ones
//! while clean; a kernel lowers it to `(position << 32) | (u32)value` for a bad index, so
//! it ends up naming the first bad position and the value found there.
//!
//! [`FlagArena`] is the per-backend flag buffer: every op with index inputs reserves its
//! flags there and records what they check; the next synchronize reads them all at once,
//! reports the first error in enqueue order, and resets them.

use crate::device::{GpuBuffer, GpuDevice};
use moemla_core::{Error, Op, Result, Shape};

/// Flags per arena chunk (4 KiB).
pub const CHUNK_FLAGS: usize = 512;

/// Bytes of one flag.
const FLAG_BYTES: usize = 8;

/// A clean flag.
pub const CLEAN: u64 = u64::MAX;

/// Decodes a flag: `None` when clean, else the first bad position (row-major, linear) and
/// the value found there.
pub fn decode(flag: u64) -> Option<(usize, i64)> {
    if flag == CLEAN {
        return None;
    }
    let position = usize::try_from(flag >> 32).ok()?;
    let value = i64::from((flag & 0xffff_ffff) as u32 as i32);
    Some((position, value))
}

/// How a flag word is reported.
#[derive(Clone, Debug, PartialEq)]
pub enum FlagKind {
    /// A flag as the kernels' rule has it: the first bad position and its value.
    Range,
    /// A word the kernels use for themselves (e.g. a raw flag another kernel resolves);
    /// never reported.
    Scratch,
    /// A non-finite input value (`kv` of `mla_kv_quantize`, of `mla_cache_write` into an
    /// FP8 cache): the flag's value is the f32 bits of the first one; reported as
    /// `Error::Input` naming its row, with the check's `valid` as what was expected.
    NonFinite,
    /// A flag over rows whose entries must also be distinct (hash routing's `tid2eid`):
    /// the next word holds the first column of the row repeating the value (position 0,
    /// value = the column), clean when the value is not a repeat. A repeat is reported
    /// with `valid` = `"{distinct}, distinct within the row (already at column c)"`.
    DistinctRow {
        /// The range part of a repeat's `valid` ("[0, 64)").
        distinct: String,
    },
}

/// What one flag checks: an index argument, its shape, and its valid range in words.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagCheck {
    /// The index tensor's name (`topk_ids`, `cache_seqlens`, `block_table`).
    pub arg: &'static str,
    /// Its shape (for the position per dimension).
    pub shape: Shape,
    /// The valid range, as `moemla_core::indices` words it ("[-1, 64)").
    pub valid: String,
    /// How the word is reported.
    pub kind: FlagKind,
}

impl FlagCheck {
    /// The contract's error for the words `words` (this check's flag first, then the
    /// following ones of the same op), `None` when clean or [`FlagKind::Scratch`].
    pub fn error_in(&self, backend: &str, op: Op, words: &[u64]) -> Option<Error> {
        let flag = *words.first()?;
        match &self.kind {
            FlagKind::Range => self.error(backend, op, flag),
            FlagKind::Scratch => None,
            FlagKind::NonFinite => match self.error(backend, op, flag)? {
                Error::IndexOutOfRange {
                    op,
                    arg,
                    index,
                    value,
                    ..
                } => Some(Error::Input {
                    op,
                    arg,
                    expected: self.valid.clone(),
                    got: format!(
                        "{} at row {} (element {index:?})",
                        f32::from_bits(value as u32),
                        index.first().copied().unwrap_or(0)
                    ),
                }),
                other => Some(other),
            },
            FlagKind::DistinctRow { distinct } => {
                let repeat = words.get(1).copied().and_then(decode);
                match (self.error(backend, op, flag), repeat) {
                    (
                        Some(Error::IndexOutOfRange {
                            op,
                            arg,
                            index,
                            value,
                            ..
                        }),
                        Some((_, column)),
                    ) => Some(Error::IndexOutOfRange {
                        op,
                        arg,
                        index,
                        value,
                        valid: format!(
                            "{distinct}, distinct within the row (already at column {column})"
                        ),
                    }),
                    (e, _) => e,
                }
            }
        }
    }

    /// The contract's error for a flag holding `flag`, `None` when clean. A position
    /// outside the tensor (a kernel bug) is a device error, never an out-of-bounds read.
    pub fn error(&self, backend: &str, op: Op, flag: u64) -> Option<Error> {
        let (position, value) = match decode(flag) {
            None if flag == CLEAN => return None,
            None => (usize::MAX, 0),
            Some(p) => p,
        };
        if position >= self.shape.elem_count() {
            return Some(Error::Device {
                backend: backend.to_string(),
                call: format!("{op} error flag"),
                message: format!(
                    "flag {flag:#x} names position {position} of `{}`, which has {} elements",
                    self.arg,
                    self.shape.elem_count()
                ),
            });
        }
        Some(Error::index_out_of_range(
            op,
            self.arg,
            &self.shape,
            position,
            value,
            self.valid.clone(),
        ))
    }
}

/// One op's flags: which chunk, its first flag, and the checks in report order.
struct Pending {
    op: Op,
    chunk: usize,
    first: usize,
    checks: Vec<FlagCheck>,
}

/// A chunk of flags and how many are in use.
struct Chunk<B> {
    buffer: B,
    used: usize,
}

/// The per-backend flag buffer: chunks of [`CHUNK_FLAGS`] flags, all clean when not in use.
pub struct FlagArena<B> {
    chunks: Vec<Chunk<B>>,
    current: usize,
    pending: Vec<Pending>,
}

impl<B: GpuBuffer> Default for FlagArena<B> {
    fn default() -> Self {
        FlagArena {
            chunks: Vec::new(),
            current: 0,
            pending: Vec::new(),
        }
    }
}

impl<B: GpuBuffer> FlagArena<B> {
    /// Reserves one clean flag per check of an `op` call and records the checks; returns
    /// the flags' device addresses, in order. Allocates (and clears, in stream order) a new
    /// chunk when the current ones are full; never waits for the device.
    pub fn reserve<D: GpuDevice<Buffer = B>>(
        &mut self,
        dev: &D,
        op: Op,
        checks: Vec<FlagCheck>,
    ) -> Result<Vec<u64>> {
        let n = checks.len();
        assert!(
            (1..=CHUNK_FLAGS).contains(&n),
            "1..={CHUNK_FLAGS} flags per op"
        );
        while self
            .chunks
            .get(self.current)
            .is_some_and(|c| c.used + n > CHUNK_FLAGS)
        {
            self.current += 1;
        }
        if self.current == self.chunks.len() {
            let bytes = CHUNK_FLAGS * FLAG_BYTES;
            let buffer = dev.alloc(bytes)?;
            dev.fill(&buffer, bytes, 0xff)?;
            self.chunks.push(Chunk { buffer, used: 0 });
        }
        let chunk = &mut self.chunks[self.current];
        let first = chunk.used;
        chunk.used += n;
        let base = chunk.buffer.address();
        self.pending.push(Pending {
            op,
            chunk: self.current,
            first,
            checks,
        });
        Ok((first..first + n)
            .map(|i| base + (i * FLAG_BYTES) as u64)
            .collect())
    }

    /// Whether any op's flags await a check.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// After the stream has drained: reads every flag in use, resets them (in stream
    /// order), and returns the first error in enqueue order (each op's checks in their
    /// report order), if any, naming the backend `backend`.
    pub fn take_error<D: GpuDevice<Buffer = B>>(
        &mut self,
        dev: &D,
        backend: &str,
    ) -> Result<Option<Error>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut words = Vec::with_capacity(self.chunks.len());
        for chunk in &self.chunks {
            let bytes = dev.download(&chunk.buffer, chunk.used * FLAG_BYTES)?;
            words.push(
                bytes
                    .chunks_exact(FLAG_BYTES)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8-byte chunks")))
                    .collect::<Vec<u64>>(),
            );
        }
        let first = self.pending.iter().find_map(|p| {
            p.checks.iter().enumerate().find_map(|(i, check)| {
                let own = &words[p.chunk][p.first + i..p.first + p.checks.len()];
                check.error_in(backend, p.op, own)
            })
        });
        for chunk in &mut self.chunks {
            if chunk.used > 0 {
                dev.fill(&chunk.buffer, chunk.used * FLAG_BYTES, 0xff)?;
                chunk.used = 0;
            }
        }
        self.current = 0;
        self.pending.clear();
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> FlagCheck {
        FlagCheck {
            arg: "topk_ids",
            shape: Shape::new(vec![3, 4]),
            valid: "[-1, 8)".into(),
            kind: FlagKind::Range,
        }
    }

    /// A repeated entry is reported with the column it repeats; an out-of-range one with
    /// the plain range; a scratch word never.
    #[test]
    fn a_distinct_row_flag_names_the_column_a_repeat_repeats() {
        let check = FlagCheck {
            arg: "tid2eid",
            shape: Shape::new(vec![9, 4]),
            valid: "[0, 48) (E)".into(),
            kind: FlagKind::DistinctRow {
                distinct: "[0, 48)".into(),
            },
        };
        let flag = (22u64 << 32) | 17;
        let want = |valid: &str| {
            Some(Error::IndexOutOfRange {
                op: Op::MoeRoute,
                arg: "tid2eid",
                index: vec![5, 2],
                value: 17,
                valid: valid.into(),
            })
        };
        assert_eq!(
            check.error_in("hip", Op::MoeRoute, &[flag, 0]),
            want("[0, 48), distinct within the row (already at column 0)")
        );
        assert_eq!(
            check.error_in("hip", Op::MoeRoute, &[flag, 1]),
            want("[0, 48), distinct within the row (already at column 1)")
        );
        assert_eq!(
            check.error_in("hip", Op::MoeRoute, &[flag, CLEAN]),
            want("[0, 48) (E)")
        );
        assert_eq!(check.error_in("hip", Op::MoeRoute, &[CLEAN, 0]), None);
        let scratch = FlagCheck {
            kind: FlagKind::Scratch,
            ..check
        };
        assert_eq!(scratch.error_in("hip", Op::MoeRoute, &[flag]), None);
    }

    /// A non-finite value is an input error naming its row and value, as the CPU words it.
    #[test]
    fn a_non_finite_flag_names_the_row_and_the_value() {
        let check = FlagCheck {
            arg: "kv",
            shape: Shape::new(vec![5, 576]),
            valid: "finite values".into(),
            kind: FlagKind::NonFinite,
        };
        let flag = ((2u64 * 576 + 300) << 32) | u64::from(f32::NEG_INFINITY.to_bits());
        assert_eq!(
            check.error_in("cuda", Op::MlaKvQuantize, &[flag]),
            Some(Error::Input {
                op: Op::MlaKvQuantize,
                arg: "kv",
                expected: "finite values".into(),
                got: "-inf at row 2 (element [2, 300])".into(),
            })
        );
        assert_eq!(check.error_in("cuda", Op::MlaKvQuantize, &[CLEAN]), None);
    }

    #[test]
    fn a_clean_flag_decodes_to_nothing() {
        assert_eq!(decode(CLEAN), None);
        assert_eq!(check().error("hip", Op::MoeExperts, CLEAN), None);
    }

    #[test]
    fn a_flag_names_the_position_and_the_value_found_there() {
        // Position 6 = [1, 2] holding -5 (0xfffffffb).
        let flag = (6u64 << 32) | u64::from(-5i32 as u32);
        assert_eq!(decode(flag), Some((6, -5)));
        assert_eq!(
            check().error("hip", Op::MoeExperts, flag),
            Some(Error::IndexOutOfRange {
                op: Op::MoeExperts,
                arg: "topk_ids",
                index: vec![1, 2],
                value: -5,
                valid: "[-1, 8)".into(),
            })
        );
        assert_eq!(decode((7u64 << 32) | 9), Some((7, 9)));
    }

    #[test]
    fn a_position_outside_the_tensor_is_a_device_error() {
        let flag = 12u64 << 32;
        match check().error("cuda", Op::MoeExperts, flag) {
            Some(Error::Device {
                backend, message, ..
            }) => {
                assert_eq!(backend, "cuda");
                assert!(
                    message.contains("position 12 of `topk_ids`, which has 12"),
                    "{message}"
                );
            }
            other => panic!("expected a device error, got {other:?}"),
        }
    }
}
