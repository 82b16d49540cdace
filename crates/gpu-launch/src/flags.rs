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

/// What one flag checks: an index argument, its shape, and its valid range in words.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagCheck {
    /// The index tensor's name (`topk_ids`, `cache_seqlens`, `block_table`).
    pub arg: &'static str,
    /// Its shape (for the position per dimension).
    pub shape: Shape,
    /// The valid range, as `moemla_core::indices` words it ("[-1, 64)").
    pub valid: String,
}

impl FlagCheck {
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
    /// report order), if any.
    pub fn take_error<D: GpuDevice<Buffer = B>>(&mut self, dev: &D) -> Result<Option<Error>> {
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
            p.checks
                .iter()
                .enumerate()
                .find_map(|(i, check)| check.error(D::NAME, p.op, words[p.chunk][p.first + i]))
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
        }
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
