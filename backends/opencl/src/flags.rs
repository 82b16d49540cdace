//! Index errors (and non-finite inputs) found on the device, reported at the next
//! synchronize or download.
//!
//! The rule (docs/ops.md, "When index errors are reported"): an op that checks index
//! contents on the device only enqueues; its kernels record the first bad row-major position
//! of each checked argument in a flag slot of the backend's [`FlagArea`]; the next
//! `synchronize` or `download` reads the slots of every op enqueued since the last check,
//! reports the first error in enqueue order (each op's checks in the order it registered
//! them) as the contract's `IndexOutOfRange`, and resets them. Kernels never use a bad index,
//! so nothing is read out of bounds.
//!
//! A slot is two device `int`s (OpenCL C 1.2 guarantees 32-bit atomics only): word 0 is
//! `INT_MAX` while clean and takes the first bad position by `atomic_min`
//! (`flag_bad_index(flags, slot, position)` in kernels/opencl/common.cl); word 1 takes the
//! value found there, copied by `flag_capture` (kernels/opencl/flags.cl), which
//! [`IndexChecks::enqueued`] queues after the op's kernels. The queue is in order, so that is
//! the value the op read, even if the caller rewrites the tensor before the check.
//!
//! An op with index arguments:
//!
//! ```ignore
//! let program = dev.program(Module::X, dtype)?; // before the checks: builds are slow
//! let mut checks = dev.index_checks(Op::X)?;     // holds the flag area until `enqueued`
//! let ids = checks.flag("topk_ids", call.topk_ids, format!("[-1, {e})"))?;
//! dev.launch(&program, "k", &[/* .. */ Arg::Buf(ids.buffer()), Arg::I32(ids.slot())], ..)?;
//! checks.enqueued()?;                            // after the op's last launch
//! ```
//!
//! with the kernel taking `volatile __global int *flags, int flag_slot` and calling
//! `flag_bad_index(flags, flag_slot, position)` for a bad index it then does not use.
//!
//! The same slots carry an op's input error that only the device sees, a non-finite value
//! in FP8-quantized rows ([`IndexChecks::flag_non_finite`]): the kernel records the first
//! bad element's position the same way, and the op's own program captures the value there
//! (`capture_nonfinite`, as f32 bits), so the call returns without waiting and the next
//! synchronize or download reports the contract's `Input` error, naming op, argument, row
//! and element.

use crate::buffer::{ClBuffer, Read, ReadFailed, Wait};
use crate::device::{Arg, ClDevice, Module};
use moemla_core::{DType, DeviceTensor, Error, Op, Result, Shape};
use opencl3::program::Program;
use std::sync::{Arc, MutexGuard};

/// Word 0 of a clean slot (kernels `atomic_min` the first bad position into it).
pub const CLEAN: i32 = i32::MAX;

/// Bytes of one slot: the position word and the value word.
const SLOT_BYTES: usize = 8;

/// Slots per buffer of the flag area (4 KiB).
const CHUNK_SLOTS: usize = 512;

/// What a slot records.
enum Found {
    /// A bad index; the error names the valid range.
    Index {
        /// The valid range, worded as `moemla_core::indices` does.
        valid: String,
    },
    /// A non-finite value in float input (the captured word holds its f32 bits).
    NonFinite {
        /// What the contract expects (`finite values`, ...).
        expected: &'static str,
    },
}

/// One registered check: which op and argument, how to word its error, and its slot.
struct Check {
    op: Op,
    arg: &'static str,
    shape: Shape,
    found: Found,
    chunk: usize,
    slot: usize,
}

impl Check {
    /// The contract's error for a slot holding `(position, value)`, `None` when clean. A
    /// position outside the tensor (a kernel bug) is a device error, never a read.
    fn error(&self, position: i32, value: i32) -> Option<Error> {
        if position == CLEAN {
            return None;
        }
        let count = self.shape.elem_count();
        match (usize::try_from(position), &self.found) {
            (Ok(at), Found::Index { valid }) if at < count => Some(Error::index_out_of_range(
                self.op,
                self.arg,
                &self.shape,
                at,
                i64::from(value),
                valid.clone(),
            )),
            (Ok(at), Found::NonFinite { expected }) if at < count => {
                let index = self.shape.unravel(at);
                Some(Error::Input {
                    op: self.op,
                    arg: self.arg,
                    expected: expected.to_string(),
                    got: format!(
                        "{} at row {} (element {index:?})",
                        f32::from_bits(value as u32),
                        index[0]
                    ),
                })
            }
            _ => Some(Error::Device {
                backend: crate::NAME.to_string(),
                call: format!("{} error flag", self.op),
                message: format!(
                    "the flag names position {position} of `{}`, which has {count} elements",
                    self.arg
                ),
            }),
        }
    }
}

/// A buffer of slots and how many are in use.
struct Chunk {
    buffer: Arc<ClBuffer>,
    used: usize,
}

/// The backend's flag slots and the checks awaiting the next synchronize or download.
#[derive(Default)]
pub struct FlagArea {
    chunks: Vec<Chunk>,
    current: usize,
    pending: Vec<Check>,
}

/// A clean flag slot for one index argument: pass [`FlagSlot::buffer`] and
/// [`FlagSlot::slot`] to the kernels that check it.
pub struct FlagSlot {
    buffer: Arc<ClBuffer>,
    slot: i32,
}

impl FlagSlot {
    /// The flag buffer (the kernel's `volatile __global int *flags`).
    pub fn buffer(&self) -> &ClBuffer {
        &self.buffer
    }

    /// The slot in it (the kernel's `int flag_slot`).
    pub fn slot(&self) -> i32 {
        self.slot
    }
}

/// The index checks of one op call. Holds the backend's flag area from before the op's
/// first launch until [`IndexChecks::enqueued`], so a concurrent synchronize cannot read (and
/// reset) the slots while the op is half enqueued.
pub struct IndexChecks<'a> {
    dev: &'a ClDevice,
    area: MutexGuard<'a, FlagArea>,
    op: Op,
    capture: Arc<Program>,
    checks: Vec<(Check, Capture<'a>)>,
}

/// How a slot's value word is filled after the op's kernels.
enum Capture<'a> {
    /// `flag_capture` copies the index found at the position (`len` entries).
    Index { index: &'a ClBuffer, len: i32 },
    /// The op program's `capture_nonfinite` copies the f32 bits of the value there.
    Value {
        program: Arc<Program>,
        values: &'a ClBuffer,
    },
}

impl ClDevice {
    /// Starts the index checks of one `op` call (see the module docs).
    pub fn index_checks(&self, op: Op) -> Result<IndexChecks<'_>> {
        let capture = self.program(Module::Flags, DType::F32)?;
        Ok(IndexChecks {
            dev: self,
            area: self.flags.lock().unwrap_or_else(|p| p.into_inner()),
            op,
            capture,
            checks: Vec::new(),
        })
    }

    /// Waits once, for everything queued (`data` `None`, a synchronize) or for the read of
    /// `data` (a download), and reports the first index error of the ops enqueued since the
    /// last check, once: the slots are reset. The flag words of those ops are read in the
    /// same wait, enqueued before `data`, so a download with checks pending waits (and
    /// round-trips) once. The error comes before the data: `data.out` holds the bytes read
    /// but the caller's result is the error. A failed read is reported as
    /// [`ClDevice::read_all`] reports it: when [`ReadFailed::running`], `data.out` must be
    /// leaked (the flag words' buffers are, here).
    pub fn wait_checked(&self, data: Option<Read<'_>>) -> std::result::Result<(), ReadFailed> {
        let mut area = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        if area.pending.is_empty() {
            return match data {
                Some(r) => self.read(r.buf, r.offset, r.out),
                None => self.finish().map_err(ReadFailed::from),
            };
        }
        let wait = if data.is_some() {
            Wait::Reads
        } else {
            Wait::Queue
        };
        // A chunk with no slot in use reads nothing.
        let mut bytes: Vec<Vec<u8>> = area
            .chunks
            .iter()
            .map(|c| vec![0u8; c.used * SLOT_BYTES])
            .collect();
        let mut reads: Vec<Read<'_>> = area
            .chunks
            .iter()
            .zip(bytes.iter_mut())
            .map(|(chunk, out)| Read {
                buf: &chunk.buffer,
                offset: 0,
                out,
            })
            .chain(data)
            .collect();
        // After everything queued before it, so after every op's kernels and captures.
        let read = self.read_all(&mut reads, wait);
        drop(reads);
        if let Err(failed) = read {
            if failed.running() {
                // A read may still write into the flag words' buffers: never free them.
                std::mem::forget(bytes);
            }
            return Err(failed);
        }
        let words: Vec<Vec<i32>> = bytes
            .iter()
            .map(|b| {
                b.chunks_exact(4)
                    .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect()
            })
            .collect();
        let first = area.pending.iter().find_map(|c| {
            let w = &words[c.chunk];
            c.error(w[2 * c.slot], w[2 * c.slot + 1])
        });
        for chunk in &mut area.chunks {
            self.fill_words(&chunk.buffer, 0, chunk.used * SLOT_BYTES, CLEAN as u32)?;
            chunk.used = 0;
        }
        area.current = 0;
        area.pending.clear();
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}

impl<'a> IndexChecks<'a> {
    /// Reserves a clean flag slot for the index argument `arg` (the tensor `index`, an I32
    /// tensor of this backend), whose error names the valid range `valid` (worded as
    /// `moemla_core::indices` does, e.g. `[-1, 64)`). Register checks in the order their
    /// errors take precedence.
    pub fn flag(
        &mut self,
        arg: &'static str,
        index: &'a DeviceTensor,
        valid: String,
    ) -> Result<FlagSlot> {
        let buf = index.buffer::<ClBuffer>(crate::NAME, self.op.name(), arg)?;
        let len = crate::ops::int(self.op, arg, index.elem_count())?;
        let capture = Capture::Index { index: buf, len };
        self.reserve(arg, index, Found::Index { valid }, capture)
    }

    /// Reserves a clean flag slot for the float input `arg` (the tensor `values`), whose
    /// first non-finite element the op's kernels record with `flag_bad_index` (its
    /// row-major position); the error is the contract's `Input` error expecting
    /// `expected`. `program` is the op's program, built for `values`' dtype, which holds
    /// `capture_nonfinite(flags, slot, values)` (kernels/opencl/mla_kv_quantize.cl).
    pub fn flag_non_finite(
        &mut self,
        arg: &'static str,
        values: &'a DeviceTensor,
        expected: &'static str,
        program: Arc<Program>,
    ) -> Result<FlagSlot> {
        let buf = values.buffer::<ClBuffer>(crate::NAME, self.op.name(), arg)?;
        crate::ops::int(self.op, arg, values.elem_count())?;
        let capture = Capture::Value {
            program,
            values: buf,
        };
        self.reserve(arg, values, Found::NonFinite { expected }, capture)
    }

    /// A clean slot for the check of `arg` (`tensor`), filled after the op by `capture`.
    fn reserve(
        &mut self,
        arg: &'static str,
        tensor: &'a DeviceTensor,
        found: Found,
        capture: Capture<'a>,
    ) -> Result<FlagSlot> {
        let area = &mut *self.area;
        while area
            .chunks
            .get(area.current)
            .is_some_and(|c| c.used == CHUNK_SLOTS)
        {
            area.current += 1;
        }
        if area.current == area.chunks.len() {
            let buffer = self.dev.tensor_filled(
                "index error flags",
                CHUNK_SLOTS * SLOT_BYTES,
                CLEAN as u32,
            )?;
            area.chunks.push(Chunk {
                buffer: Arc::new(buffer),
                used: 0,
            });
        }
        let chunk = &mut area.chunks[area.current];
        let slot = chunk.used;
        chunk.used += 1;
        let flag = FlagSlot {
            buffer: chunk.buffer.clone(),
            slot: slot as i32, // < CHUNK_SLOTS
        };
        let check = Check {
            op: self.op,
            arg,
            shape: tensor.shape().clone(),
            found,
            chunk: area.current,
            slot,
        };
        self.checks.push((check, capture));
        Ok(flag)
    }

    /// After the op's last launch: queues the value capture of every flagged slot and
    /// records the checks for the next synchronize or download. Never waits. (An op that
    /// fails before this leaves its slots unreported; they are reset with the others.)
    pub fn enqueued(mut self) -> Result<()> {
        for (check, capture) in std::mem::take(&mut self.checks) {
            let flags = self.area.chunks[check.chunk].buffer.clone();
            let slot = Arg::I32(check.slot as i32);
            match capture {
                Capture::Index { index, len } => {
                    let args = [Arg::Buf(&flags), slot, Arg::Buf(index), Arg::I32(len)];
                    let capture = &self.capture;
                    self.dev
                        .launch(capture, "flag_capture", &args, &[1], &[1])?;
                }
                Capture::Value { program, values } => {
                    let args = [Arg::Buf(&flags), slot, Arg::Buf(values)];
                    let name = "capture_nonfinite";
                    self.dev.launch(&program, name, &args, &[1], &[1])?;
                }
            }
            self.area.pending.push(check);
        }
        Ok(())
    }
}

/// The lock the crate's unit tests take around the one shared backend: a synchronize or
/// download takes every pending index error, so the tests that raise errors on purpose run
/// alone (write) and every other test that uses the shared backend beside the others (read).
#[cfg(test)]
pub(crate) mod test_lock {
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    static SHARED_BACKEND: RwLock<()> = RwLock::new(());

    /// For a test that raises index errors on purpose.
    pub(crate) fn alone() -> RwLockWriteGuard<'static, ()> {
        SHARED_BACKEND.write().unwrap_or_else(|p| p.into_inner())
    }

    /// For a test that uses the shared backend and must not see another test's errors.
    pub(crate) fn beside_others() -> RwLockReadGuard<'static, ()> {
        SHARED_BACKEND.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::host_waits;
    use moemla_core::{ops, Backend, ExpertsParams, HostTensor, MlaDecodeParams};

    fn check() -> Check {
        Check {
            op: Op::MoeExperts,
            arg: "topk_ids",
            shape: Shape::new(vec![3, 4]),
            found: Found::Index {
                valid: "[-1, 8)".into(),
            },
            chunk: 0,
            slot: 0,
        }
    }

    #[test]
    fn a_slot_names_the_position_and_the_value_found_there() {
        assert_eq!(check().error(CLEAN, 123), None);
        assert_eq!(
            check().error(6, -5),
            Some(Error::IndexOutOfRange {
                op: Op::MoeExperts,
                arg: "topk_ids",
                index: vec![1, 2],
                value: -5,
                valid: "[-1, 8)".into(),
            })
        );
    }

    #[test]
    fn a_position_outside_the_tensor_is_a_device_error() {
        for position in [12, -1, i32::MAX - 1] {
            match check().error(position, 0) {
                Some(Error::Device {
                    backend, message, ..
                }) => {
                    assert_eq!(backend, "opencl");
                    assert!(
                        message
                            .contains(&format!("position {position} of `topk_ids`, which has 12")),
                        "{message}"
                    );
                }
                other => panic!("expected a device error, got {other:?}"),
            }
        }
    }

    fn up_f32(be: &dyn Backend, dims: &[usize], v: &[f32]) -> DeviceTensor {
        be.upload(&HostTensor::from_slice(dims, v).unwrap())
            .unwrap()
    }

    fn up_i32(be: &dyn Backend, dims: &[usize], v: &[i32]) -> DeviceTensor {
        be.upload(&HostTensor::from_slice(dims, v).unwrap())
            .unwrap()
    }

    fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
        super::test_lock::alone()
    }

    /// Ops with bad indices return `Ok` without waiting for the queue or reading back; the
    /// first error in enqueue order comes with the next download, with the value the op
    /// read (the caller rewrote the tensor since), once.
    #[test]
    fn ops_only_enqueue_and_the_next_download_reports_the_first_index_error() {
        let _alone = alone();
        let Ok(backend) = crate::shared() else { return };
        let be: &dyn Backend = &*backend;
        let (t, h, i, e, k) = (2, 4, 2, 4, 2);
        let x = up_f32(be, &[t, h], &[0.5; 8]);
        let w13 = up_f32(be, &[e, 2 * i, h], &[0.25; 64]);
        let w2 = up_f32(be, &[e, h, i], &[0.25; 32]);
        let w = up_f32(be, &[t, k], &[1.0; 4]);
        let ids = up_i32(be, &[t, k], &[0, 1, 9, -3]);
        let p = ExpertsParams::default();
        // mla_decode with a seqlen above the capacity (2 blocks of 4).
        let q = up_f32(be, &[1, 1, 1, 8], &[0.1; 8]);
        let kv = up_f32(be, &[2, 4, 1, 8], &[0.2; 64]);
        let table = up_i32(be, &[1, 2], &[1, 0]);
        let lens = up_i32(be, &[1], &[9]);
        let mp = MlaDecodeParams {
            softmax_scale: 0.5,
            causal: false,
            head_dim_v: 4,
            kv_format: Default::default(),
        };
        // Build the programs first (a build is no wait, but keep the count to the ops).
        ops::moe_experts(be, &x, &w13, &w2, &up_i32(be, &[t, k], &[0; 4]), &w, &p).unwrap();
        be.synchronize().unwrap();

        let before = host_waits();
        let y = ops::moe_experts(be, &x, &w13, &w2, &ids, &w, &p).unwrap();
        let out = ops::mla_decode(be, &q, &kv, &table, &lens, &mp).unwrap();
        be.upload_into(&HostTensor::from_slice([2], &[0i32, 0]).unwrap(), &ids, 2)
            .unwrap();
        assert_eq!(
            host_waits(),
            before,
            "an op or upload_into waited for the queue"
        );

        let want = Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: vec![1, 0],
            value: 9,
            valid: "[-1, 4)".into(),
        };
        assert_eq!(be.download(&out.o).map(|_| ()), Err(want));
        assert!(host_waits() > before);
        // Reported once: the decode's error went with it, and y is readable now.
        be.synchronize().unwrap();
        assert_eq!(be.download(&y).unwrap().dims(), &[t, h]);

        // The decode alone reports its own error at the next synchronize.
        ops::mla_decode(be, &q, &kv, &table, &lens, &mp).unwrap();
        let err = be.synchronize().unwrap_err();
        assert!(
            matches!(
                err,
                Error::IndexOutOfRange {
                    op: Op::MlaDecode,
                    arg: "cache_seqlens",
                    value: 9,
                    ..
                }
            ),
            "{err}"
        );
        be.synchronize().unwrap();
    }

    /// With checks pending, a download reads the flag words and its data in one wait, and a
    /// synchronize reads the flags and waits for the queue in one: clean, the data comes
    /// back; flagged, the error (once), as a lone synchronize reports it.
    #[test]
    fn pending_flags_are_read_in_the_same_wait_as_the_download() {
        let _alone = alone();
        let Ok(backend) = crate::shared() else { return };
        let be: &dyn Backend = &*backend;
        let dev = backend.device();
        let values = [10, 11, 12, 13, 14, 15];
        let ids = up_i32(be, &[2, 3], &values);
        be.synchronize().unwrap();
        // One check of `ids` pending, raised at `position` when given (as a kernel's
        // `atomic_min` would leave it).
        let pending = |position: Option<u32>| {
            let mut checks = dev.index_checks(Op::MoeExperts).unwrap();
            let slot = checks.flag("topk_ids", &ids, "[-1, 4)".into()).unwrap();
            if let Some(p) = position {
                let at = 2 * slot.slot() as usize * 4;
                dev.fill_words(slot.buffer(), at, 4, p).unwrap();
            }
            checks.enqueued().unwrap();
        };
        let want = Err(Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: vec![0, 2],
            value: 12,
            valid: "[-1, 4)".into(),
        });
        // Waits and device-to-host reads (count, bytes) of `f`.
        let measure = |f: &mut dyn FnMut()| {
            let (waits, traffic) = (host_waits(), be.traffic().unwrap());
            f();
            let t = be.traffic().unwrap().since(&traffic);
            (host_waits() - waits, t.downloads, t.download_bytes)
        };

        // Clean: the data, one wait, the slot's 8 bytes read beside the 24 of the data.
        pending(None);
        let got = measure(&mut || {
            let host = be.download(&ids).unwrap();
            assert_eq!(host.to_i32_vec().unwrap(), values);
        });
        assert_eq!(got, (1, 2, 8 + 24));
        // Nothing pending now: the data alone.
        let got = measure(&mut || assert!(be.download(&ids).is_ok()));
        assert_eq!(got, (1, 1, 24));

        // Raised: the download reports it, once; download_into likewise.
        pending(Some(2));
        assert_eq!(
            measure(&mut || assert_eq!(be.download(&ids).map(|_| ()), want)).0,
            1
        );
        be.synchronize().unwrap();
        pending(Some(2));
        let mut dst = HostTensor::zeros([3], DType::I32).unwrap();
        let got = measure(&mut || {
            assert_eq!(be.download_into(&ids, 3, &mut dst), want);
        });
        assert_eq!(got, (1, 2, 8 + 12));
        be.download_into(&ids, 3, &mut dst).unwrap();
        assert_eq!(dst.to_i32_vec().unwrap(), [13, 14, 15]);

        // A synchronize: one wait for the queue and the flags, clean or raised.
        pending(None);
        assert_eq!(measure(&mut || be.synchronize().unwrap()), (1, 1, 8));
        pending(Some(2));
        assert_eq!(measure(&mut || assert_eq!(be.synchronize(), want)).0, 1);
        assert_eq!(measure(&mut || be.synchronize().unwrap()), (1, 0, 0));
    }

    /// More checks than one flag buffer holds: slots continue in a new buffer, the first
    /// raised slot in registration order is reported (as a kernel's `atomic_min` would leave
    /// it, written here directly), and every slot is clean again afterwards.
    #[test]
    fn slots_span_buffers_and_the_first_raised_one_is_reported_once() {
        let _alone = alone();
        let Ok(backend) = crate::shared() else { return };
        let be: &dyn Backend = &*backend;
        let dev = backend.device();
        be.synchronize().unwrap();
        let ids = up_i32(be, &[2, 3], &[10, 11, 12, 13, 14, 15]);
        let mut checks = dev.index_checks(Op::MoeExperts).unwrap();
        let slots: Vec<FlagSlot> = (0..CHUNK_SLOTS + 100)
            .map(|_| checks.flag("topk_ids", &ids, "[-1, 4)".into()).unwrap())
            .collect();
        assert!(!std::ptr::eq(
            slots[0].buffer(),
            slots[CHUNK_SLOTS].buffer()
        ));
        assert_eq!(slots[CHUNK_SLOTS + 50].slot(), 50);
        let raise = |s: &FlagSlot, position: u32| {
            let at = 2 * s.slot() as usize * 4;
            dev.fill_words(s.buffer(), at, 4, position).unwrap();
        };
        raise(&slots[CHUNK_SLOTS + 80], 1);
        raise(&slots[CHUNK_SLOTS + 50], 4);
        checks.enqueued().unwrap();
        assert_eq!(
            be.synchronize(),
            Err(Error::IndexOutOfRange {
                op: Op::MoeExperts,
                arg: "topk_ids",
                index: vec![1, 1],
                value: 14,
                valid: "[-1, 4)".into(),
            })
        );
        be.synchronize().unwrap();
        // Reset: the same slots, reserved again, are clean.
        let mut checks = dev.index_checks(Op::MoeExperts).unwrap();
        for _ in 0..CHUNK_SLOTS + 100 {
            checks.flag("topk_ids", &ids, "[-1, 4)".into()).unwrap();
        }
        checks.enqueued().unwrap();
        be.synchronize().unwrap();
    }
}
