//! The runner on a fake device: host memory, a stream whose work runs only when it is
//! synchronized (so a result read before a synchronize would be stale), a call log, and
//! the two index-checking kernels modelled from kernels/README.md's flag rule.

use super::GpuRunner;
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::MlaDecodeOutput;
use moemla_core::{
    ops, Backend, BackendInfo, DType, DeviceBuffer, DeviceTensor, Error, ExpertsParams, HostTensor,
    MlaDecodeParams, Op, Result, RouteParams, Shape, Verification, VerificationKind,
};
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Device memory and the stream of the fake device.
#[derive(Default)]
struct State {
    /// Allocations by base address.
    memory: BTreeMap<u64, Vec<u8>>,
    next: u64,
    /// Enqueued work, run at synchronize.
    queue: Vec<Work>,
    /// Frees deferred to the next synchronize (stream order).
    freed: Vec<u64>,
    /// Every call, in order.
    log: Vec<String>,
}

enum Work {
    Fill(u64, usize, u8),
    /// Bytes written at an address (an upload, staged when enqueued).
    Write(u64, Vec<u8>),
    /// A device copy (from, to, bytes).
    Copy(u64, u64, usize),
    Launch(String, Vec<Arg>, [u32; 3]),
}

impl State {
    fn slice(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let (&base, buf) = self.memory.range_mut(..=addr).next_back().expect("mapped");
        let off = (addr - base) as usize;
        &mut buf[off..off + len]
    }
    fn i32_at(&mut self, addr: u64, i: usize) -> i32 {
        let b = self.slice(addr + 4 * i as u64, 4);
        i32::from_le_bytes(b.try_into().unwrap())
    }
    fn f32_at(&mut self, addr: u64, i: usize) -> f32 {
        let b = self.slice(addr + 4 * i as u64, 4);
        f32::from_le_bytes(b.try_into().unwrap())
    }
    /// `moemla_flag_index`: atomicMin of (position << 32) | (u32)value.
    fn flag(&mut self, addr: u64, position: usize, value: i32) {
        let word = ((position as u64) << 32) | u64::from(value as u32);
        let b = self.slice(addr, 8);
        let old = u64::from_le_bytes(b.try_into().unwrap());
        b.copy_from_slice(&old.min(word).to_le_bytes());
    }
    /// The modelled `mla_cache_write` kernels: `width` bytes per cache row (for FP8,
    /// `nonfinite` is the flag of non-finite f32 inputs, rows of 576 f32 values).
    #[allow(clippy::too_many_arguments)]
    fn cache_write(
        &mut self,
        kv: u64,
        slots: u64,
        cache: u64,
        rows: i32,
        nslots: i32,
        err: u64,
        width: usize,
        nonfinite: Option<u64>,
    ) {
        for r in 0..rows as usize {
            let s = self.i32_at(slots, r);
            if s == -1 {
                continue;
            }
            let src = match nonfinite {
                None => kv + (r * width) as u64,
                Some(flag) => {
                    let bad = (0..576).find(|&c| !self.f32_at(kv, r * 576 + c).is_finite());
                    if let Some(c) = bad {
                        let bits = self.f32_at(kv, r * 576 + c).to_bits();
                        self.flag(flag, r * 576 + c, bits as i32);
                    }
                    if bad.is_some() && (0..nslots).contains(&s) {
                        continue;
                    }
                    kv + (r * 576 * 4) as u64
                }
            };
            if !(0..nslots).contains(&s) {
                self.flag(err, r, s);
                continue;
            }
            let row = self.slice(src, width).to_vec();
            self.slice(cache + (s as usize * width) as u64, width)
                .copy_from_slice(&row);
        }
    }

    fn run(&mut self, work: Work) {
        match work {
            Work::Fill(addr, len, v) => self.slice(addr, len).fill(v),
            Work::Write(addr, data) => self.slice(addr, data.len()).copy_from_slice(&data),
            Work::Copy(from, to, len) => {
                let data = self.slice(from, len).to_vec();
                self.slice(to, len).copy_from_slice(&data);
            }
            Work::Launch(kernel, a, grid) => {
                let p = |i: usize| match a[i] {
                    Arg::Ptr(p) => p,
                    _ => panic!("{kernel}: parameter {i} is not a pointer"),
                };
                let n = |i: usize| match a[i] {
                    Arg::I32(v) => v,
                    _ => panic!("{kernel}: parameter {i} is not an int"),
                };
                match kernel.as_str() {
                    // Hash routing's checks (moe_route.cu): input_ids into err[0], the
                    // table in token order into err[1]; the resolve kernel then writes the
                    // table position into err[2] and a repeat's first column into err[3].
                    k if k.starts_with("moemla_moe_route_")
                        && k != "moemla_moe_route_hash_resolve" =>
                    {
                        let (input_ids, tid2eid, vocab, experts, top_k, err) =
                            (p(3), p(4), n(5), n(8), n(9) as usize, p(16));
                        for t in 0..grid[0] as usize {
                            if vocab == 0 {
                                break;
                            }
                            let id = self.i32_at(input_ids, t);
                            if id < 0 || id >= vocab {
                                self.flag(err, t, id);
                                continue;
                            }
                            let row: Vec<i32> = (0..top_k)
                                .map(|j| self.i32_at(tid2eid, id as usize * top_k + j))
                                .collect();
                            for (j, &v) in row.iter().enumerate() {
                                if !(0..experts).contains(&v) || row[..j].contains(&v) {
                                    self.flag(err + 8, t * top_k + j, v);
                                }
                            }
                        }
                    }
                    "moemla_moe_route_hash_resolve" => {
                        let (input_ids, tid2eid, top_k, err) = (p(0), p(1), n(2) as usize, p(3));
                        let raw = u64::from_le_bytes(self.slice(err + 8, 8).try_into().unwrap());
                        if raw != u64::MAX {
                            let (order, v) = ((raw >> 32) as usize, raw as u32 as i32);
                            let at = self.i32_at(input_ids, order / top_k) as usize * top_k;
                            let j = order % top_k;
                            self.flag(err + 16, at + j, v);
                            if let Some(c) = (0..j).find(|&c| self.i32_at(tid2eid, at + c) == v) {
                                self.flag(err + 24, 0, c as i32);
                            }
                        }
                    }
                    k if k.starts_with("moemla_mla_kv_quantize_") => {
                        // f32 input only here: the first non-finite element, its bits.
                        let (kv, err) = (p(0), p(2));
                        for i in 0..grid[0] as usize * 576 {
                            let v = self.f32_at(kv, i);
                            if !v.is_finite() {
                                self.flag(err, i, v.to_bits() as i32);
                                break;
                            }
                        }
                    }
                    // mla_cache_write: rows applied in row order (so the later row wins),
                    // bad slots flagged and skipped; the fp8 model flags non-finite f32
                    // values of rows to write in err[0] and copies a row's first 656 bytes
                    // of f32 input unquantized (the quantization runs on the emulator).
                    "moemla_mla_cache_write_dense" => {
                        let (kv, slots, cache, rows, width, nslots, err) =
                            (p(0), p(1), p(2), n(3), n(4) as usize, n(5), p(6));
                        self.cache_write(kv, slots, cache, rows, nslots, err, width, None);
                    }
                    k if k.starts_with("moemla_mla_cache_write_fp8_") => {
                        let (kv, slots, cache, rows, nslots, err) =
                            (p(0), p(1), p(2), n(3), n(4), p(5));
                        self.cache_write(kv, slots, cache, rows, nslots, err + 8, 656, Some(err));
                    }
                    "moemla_moe_align" => {
                        let (ids, weights, slots, experts, err) = (p(0), p(1), n(2), n(3), p(9));
                        for s in 0..slots as usize {
                            let id = self.i32_at(ids, s);
                            let _ = self.f32_at(weights, s);
                            if id < -1 || id >= experts {
                                self.flag(err, s, id);
                            }
                        }
                    }
                    "moemla_mla_check" => {
                        let (table, lens, batch, max_blocks, block_size, num_blocks, err) =
                            (p(0), p(1), n(2), n(3), n(4), n(5), p(6));
                        let cap = i64::from(max_blocks) * i64::from(block_size);
                        for idx in 0..(batch * max_blocks) as usize {
                            let (b, j) = (idx / max_blocks as usize, idx % max_blocks as usize);
                            let len = self.i32_at(lens, b);
                            if len < 0 || i64::from(len) > cap {
                                if j == 0 {
                                    self.flag(err, b, len);
                                }
                                continue;
                            }
                            if (j as i64)
                                < (i64::from(len) + i64::from(block_size) - 1)
                                    / i64::from(block_size)
                            {
                                let blk = self.i32_at(table, idx);
                                if blk < 0 || blk >= num_blocks {
                                    self.flag(err + 8, idx, blk);
                                }
                            }
                        }
                    }
                    "moemla_mla_sparse_check" => {
                        let (indices, lens, batch, s_q, topk, slots, err) =
                            (p(0), p(1), n(2), n(3), n(4), n(5), p(6));
                        for r in 0..(batch * s_q) as usize {
                            let b = r / s_q as usize;
                            let len = if lens == 0 {
                                topk
                            } else {
                                self.i32_at(lens, b)
                            };
                            if len < 0 || len > topk {
                                if r % s_q as usize == 0 {
                                    self.flag(err, b, len);
                                }
                                continue;
                            }
                            for j in 0..len as usize {
                                let at = r * topk as usize + j;
                                let s = self.i32_at(indices, at);
                                if s != -1 && !(0..slots).contains(&s) {
                                    self.flag(err + 8, at, s);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The fake device and its stream: 0 the backend's own, else a caller's stream handle
/// (`with_stream`), named in its launches' log lines.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>, usize);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn log(&self, line: String) {
        self.state().log.push(line);
    }
    /// The calls since the last take.
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.state().log)
    }
}

#[derive(Debug)]
struct FakeBuffer {
    addr: u64,
    bytes: usize,
    dev: Arc<Mutex<State>>,
    /// Freed on drop (false: caller memory, `wrap`).
    owned: bool,
}

impl DeviceBuffer for FakeBuffer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl GpuBuffer for FakeBuffer {
    fn address(&self) -> u64 {
        self.addr
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for FakeBuffer {
    fn drop(&mut self) {
        if self.owned {
            let mut s = self.dev.lock().unwrap_or_else(|p| p.into_inner());
            s.freed.push(self.addr);
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fake device")
    }
}

impl GpuDevice for Fake {
    type Buffer = FakeBuffer;
    const NAME: &'static str = "fake";

    fn enter(&self) -> Result<()> {
        self.log("enter".into());
        Ok(())
    }
    fn limits(&self, _op: Op) -> Result<DeviceLimits> {
        Ok(DeviceLimits::hip(4, 64, 64 * 1024))
    }
    fn alloc(&self, bytes: usize) -> Result<FakeBuffer> {
        let mut s = self.state();
        s.log.push(format!("alloc {bytes}"));
        let addr = 0x1000 + s.next;
        s.next += (bytes as u64).max(1).next_multiple_of(256);
        // Fresh memory holds garbage (0xa5), never zeros.
        s.memory.insert(addr, vec![0xa5; bytes.max(1)]);
        Ok(FakeBuffer {
            addr,
            bytes,
            dev: self.0.clone(),
            owned: true,
        })
    }
    fn fill(&self, buffer: &FakeBuffer, bytes: usize, value: u8) -> Result<()> {
        let mut s = self.state();
        s.log.push(format!("fill {bytes} {value:#x}"));
        s.queue.push(Work::Fill(buffer.addr, bytes, value));
        Ok(())
    }
    fn upload(&self, data: &[u8]) -> Result<FakeBuffer> {
        let buffer = self.alloc(data.len())?;
        let mut s = self.state();
        s.log.push(format!("upload {}", data.len()));
        s.slice(buffer.addr, data.len()).copy_from_slice(data);
        Ok(buffer)
    }
    fn upload_into(&self, buffer: &FakeBuffer, offset: usize, data: &[u8]) -> Result<()> {
        assert!(offset + data.len() <= buffer.bytes);
        let mut s = self.state();
        s.log.push(format!("upload_into {}", data.len()));
        // Staged now, written in stream order.
        s.queue
            .push(Work::Write(buffer.addr + offset as u64, data.to_vec()));
        Ok(())
    }
    fn copy(
        &self,
        src: &FakeBuffer,
        src_offset: usize,
        dst: &FakeBuffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        assert!(src_offset + bytes <= src.bytes && dst_offset + bytes <= dst.bytes);
        let (a, b) = (src.addr + src_offset as u64, dst.addr + dst_offset as u64);
        assert!(
            a + bytes as u64 <= b || b + bytes as u64 <= a,
            "overlapping device copy"
        );
        let mut s = self.state();
        s.log.push(format!("copy {bytes}"));
        s.queue.push(Work::Copy(a, b, bytes));
        Ok(())
    }
    fn read(&self, buffer: &FakeBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let mut s = self.state();
        s.log.push(format!("download {}", out.len()));
        // A copy after the stream's pending work, waited for.
        for work in std::mem::take(&mut s.queue) {
            s.run(work);
        }
        assert!(offset + out.len() <= buffer.bytes);
        out.copy_from_slice(s.slice(buffer.addr + offset as u64, out.len()));
        Ok(())
    }
    unsafe fn wrap(&self, ptr: *mut std::ffi::c_void, bytes: usize) -> Result<FakeBuffer> {
        self.log(format!("wrap {bytes}"));
        Ok(FakeBuffer {
            addr: ptr as u64,
            bytes,
            dev: self.0.clone(),
            owned: false,
        })
    }
    unsafe fn with_stream(&self, stream: *mut std::ffi::c_void) -> Result<Fake> {
        Ok(Fake(self.0.clone(), stream as usize))
    }
    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()> {
        assert!(module.entry_points().contains(&launch.kernel.as_str()));
        assert!(
            !launch.grid.contains(&0),
            "{} with an empty grid",
            launch.kernel
        );
        let mut s = self.state();
        match self.1 {
            0 => s.log.push(format!("launch {}", launch.kernel)),
            stream => s.log.push(format!("launch@{stream:#x} {}", launch.kernel)),
        }
        s.queue.push(Work::Launch(
            launch.kernel.clone(),
            args.to_vec(),
            launch.grid,
        ));
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        let mut s = self.state();
        s.log.push("sync".into());
        for work in std::mem::take(&mut s.queue) {
            s.run(work);
        }
        for addr in std::mem::take(&mut s.freed) {
            s.memory.remove(&addr);
        }
        Ok(())
    }
}

/// A backend on the fake device, so that calls go through core's validation.
struct FakeBackend {
    runner: GpuRunner<Fake>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &str {
        "fake"
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "fake".into(),
            vendor: "test".into(),
            device: "fake".into(),
            device_kind: moemla_core::DeviceKind::Emulator,
            memory_bytes: None,
            supported: super::supported(),
            verification: Verification {
                kind: VerificationKind::Unverified,
                detail: String::new(),
            },
            notes: vec![],
        }
    }
    crate::runner_backend_methods!(runner);
}

fn backend() -> (FakeBackend, Fake) {
    let fake = Fake::default();
    (
        FakeBackend {
            runner: GpuRunner::new(fake.clone(), "fake"),
        },
        fake,
    )
}

fn f32s(b: &FakeBackend, dims: &[usize]) -> DeviceTensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
    b.upload(&HostTensor::from_slice(dims, &v).unwrap())
        .unwrap()
}

fn i32s(b: &FakeBackend, dims: &[usize], v: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, v).unwrap()).unwrap()
}

/// An experts call: T = 3, k = 2, E = 4, H = 64, I = 32.
fn experts(b: &FakeBackend, ids: &[i32]) -> Result<DeviceTensor> {
    let x = f32s(b, &[3, 64]);
    let w13 = f32s(b, &[4, 64, 64]);
    let w2 = f32s(b, &[4, 64, 32]);
    let ids = i32s(b, &[3, 2], ids);
    let w = f32s(b, &[3, 2]);
    ops::moe_experts(b, &x, &w13, &w2, &ids, &w, &ExpertsParams::default())
}

/// An MLA call: B = 2, Sq = 1, Hq = 4, Dqk = 24, Dv = 16, 4 blocks of 8, 2 per sequence.
fn mla(b: &FakeBackend, table: &[i32], seqlens: &[i32]) -> Result<MlaDecodeOutput> {
    let q = f32s(b, &[2, 1, 4, 24]);
    let kv = f32s(b, &[4, 8, 1, 24]);
    let table = i32s(b, &[2, 2], table);
    let seqlens = i32s(b, &[2], seqlens);
    let mut p = MlaDecodeParams::deepseek_v3();
    p.softmax_scale = 0.2;
    p.causal = false;
    p.head_dim_v = 16;
    ops::mla_decode(b, &q, &kv, &table, &seqlens, &p)
}

fn has(log: &[String], prefix: &str) -> bool {
    log.iter().any(|l| l.starts_with(prefix))
}

mod dsa_indexer_topk;

#[test]
fn ops_enqueue_and_return_without_waiting_or_reading_back() {
    let (b, fake) = backend();
    let logits = f32s(&b, &[5, 64]);
    fake.take_log();
    let out = ops::moe_route(&b, &logits, None, &RouteParams::deepseek_v2()).unwrap();
    assert_eq!(
        fake.take_log(),
        [
            "enter",
            "alloc 120",
            "alloc 120",
            "launch moemla_moe_route_f32"
        ]
    );
    assert_eq!(out.topk_ids.dims(), [5, 6]);
    experts(&b, &[0, 3, -1, 2, 1, 1]).unwrap();
    mla(&b, &[0, 1, 2, 3], &[16, 9]).unwrap();
    let log = fake.take_log();
    assert!(!has(&log, "sync") && !has(&log, "download"), "{log:?}");
    // Outputs are not zero-filled: the only fills clear the error flags.
    assert!(
        log.iter()
            .filter(|l| l.starts_with("fill"))
            .all(|l| l.ends_with("0xff")),
        "{log:?}"
    );
    b.synchronize().unwrap();
    // One read of the three flags in use, one reset.
    assert_eq!(
        fake.take_log(),
        ["enter", "sync", "download 24", "fill 24 0xff"]
    );
}

#[test]
fn an_index_error_surfaces_at_the_next_synchronize_naming_op_arg_and_position() {
    let (b, fake) = backend();
    // Slot 3 = [1, 1] holds 4 = E; slot 5 holds -5 (a later bad one).
    experts(&b, &[0, 3, -1, 4, 1, -5]).expect("enqueued; not yet checked");
    assert!(!has(&fake.take_log(), "sync"));
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: vec![1, 1],
            value: 4,
            valid: "[-1, 4)".into(),
        })
    );
    // Reported once, and the backend goes on.
    b.synchronize().unwrap();
    let y = experts(&b, &[0, 3, -1, 2, 1, 1]).unwrap();
    assert_eq!(b.download(&y).unwrap().dims(), [3, 64]);
}

#[test]
fn the_first_error_in_enqueue_order_is_reported_by_download_too() {
    let (b, _fake) = backend();
    // Sequence 1's length 17 > 2 * 8; sequence 0's table entry 1 = 4 >= num_blocks.
    mla(&b, &[0, 4, 2, 3], &[16, 17]).unwrap();
    let y = experts(&b, &[0, 9, -1, 2, 1, 1]).unwrap();
    let err = b.download(&y).unwrap_err();
    // The MLA call came first, and its seqlens are checked before its table.
    assert_eq!(
        err,
        Error::IndexOutOfRange {
            op: Op::MlaDecode,
            arg: "cache_seqlens",
            index: vec![1],
            value: 17,
            valid: "[0, 16] (max_blocks * block_size)".into(),
        }
    );
    b.download(&y).unwrap();
    mla(&b, &[0, 4, 2, 3], &[16, 9]).unwrap();
    match b.synchronize() {
        Err(Error::IndexOutOfRange {
            arg, index, value, ..
        }) => {
            assert_eq!((arg, value), ("block_table", 4));
            assert_eq!(index, vec![0, 1]);
        }
        other => panic!("expected a block_table error, got {other:?}"),
    }
}

#[test]
fn the_workspace_and_flags_are_reused_and_a_repeated_op_only_allocates_its_output() {
    let (b, fake) = backend();
    let x = f32s(&b, &[3, 64]);
    let w13 = f32s(&b, &[4, 64, 64]);
    let w2 = f32s(&b, &[4, 64, 32]);
    let ids = i32s(&b, &[3, 2], &[0, 3, -1, 2, 1, 1]);
    let w = f32s(&b, &[3, 2]);
    let run = || ops::moe_experts(&b, &x, &w13, &w2, &ids, &w, &ExpertsParams::default()).unwrap();
    fake.take_log();
    run();
    let first = fake.take_log();
    assert_eq!(
        first.iter().filter(|l| l.starts_with("alloc")).count(),
        3,
        "{first:?}"
    );
    run();
    assert_eq!(
        fake.take_log(),
        [
            "enter",
            "alloc 768", // y: 3 x 64 f32
            "launch moemla_moe_align",
            "launch moemla_moe_gate_up_f32",
            "launch moemla_moe_down_f32",
            "launch moemla_moe_combine_f32",
        ]
    );
}

#[test]
fn the_argument_lists_follow_the_kernels_parameters() {
    let (b, fake) = backend();
    let logits = f32s(&b, &[5, 64]);
    let bias = f32s(&b, &[64]);
    let (logits_at, bias_at) = (
        b.runner.buffer(&logits, "t", "t").unwrap().addr,
        b.runner.buffer(&bias, "t", "t").unwrap().addr,
    );
    ops::moe_route(&b, &logits, Some(&bias), &RouteParams::deepseek_v3()).unwrap();
    let s = fake.state();
    let Some(Work::Launch(kernel, args, _)) = s.queue.last() else {
        panic!("no launch");
    };
    assert_eq!(kernel, "moemla_moe_route_f32");
    let v3 = RouteParams::deepseek_v3();
    assert_eq!(args.len(), 17);
    assert_eq!(
        args[..6],
        [
            Arg::Ptr(logits_at),
            Arg::Ptr(bias_at),
            Arg::I32(1),
            // No hash routing: vocab 0, the tables and the flag any valid pointer.
            Arg::Ptr(logits_at),
            Arg::Ptr(logits_at),
            Arg::I32(0),
        ]
    );
    // topk_ids and topk_weights: two fresh, distinct allocations.
    assert!(matches!((args[6], args[7]), (Arg::Ptr(i), Arg::Ptr(w)) if i != w && i > bias_at));
    assert_eq!(args[16], Arg::Ptr(logits_at));
    assert_eq!(
        args[8..16],
        [
            Arg::I32(64),
            Arg::I32(v3.top_k as i32),
            Arg::I32(v3.n_group as i32),
            Arg::I32(v3.topk_group as i32),
            Arg::I32(0), // sigmoid
            Arg::I32(1), // top2_sum
            Arg::I32(1), // renormalize
            Arg::F32(v3.routed_scaling_factor as f32),
        ]
    );
}

#[test]
fn a_grid_with_a_zero_dimension_launches_nothing() {
    let (b, fake) = backend();
    let launch = Launch {
        kernel: "moemla_moe_route_f32".into(),
        grid: [0, 1, 1],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    b.runner.launch(Module::MoeRoute, &launch, &[]).unwrap();
    assert!(fake.take_log().is_empty());
}

#[test]
fn flags_beyond_one_chunk_are_read_and_reset_together() {
    let (b, _fake) = backend();
    // 300 MLA calls hold 600 flags: two chunks; the bad one is the 290th.
    for i in 0..300 {
        let table = if i == 289 { [0, 1, 2, 7] } else { [0, 1, 2, 3] };
        mla(&b, &table, &[16, 9]).unwrap();
    }
    match b.synchronize() {
        Err(Error::IndexOutOfRange {
            arg, index, value, ..
        }) => {
            assert_eq!((arg, value), ("block_table", 7));
            assert_eq!(index, vec![1, 1]);
        }
        other => panic!("expected the 290th call's error, got {other:?}"),
    }
    b.synchronize().unwrap();
    mla(&b, &[0, 1, 2, 3], &[16, 9]).unwrap();
    b.synchronize().unwrap();
}

#[test]
fn alloc_zeroed_is_zero_and_upload_round_trips() {
    let (b, _fake) = backend();
    let z = b
        .alloc_zeroed(&Shape::new(vec![3, 5]), DType::BF16)
        .unwrap();
    assert_eq!(b.download(&z).unwrap().as_bytes(), &[0u8; 30]);
    let host = HostTensor::from_slice([2, 2], &[1i32, -2, 3, i32::MIN]).unwrap();
    assert_eq!(b.download(&b.upload(&host).unwrap()).unwrap(), host);
}

#[test]
fn a_runner_carries_its_given_name_and_refuses_another_devices_tensors() {
    let zero = GpuRunner::new(Fake::default(), "fake");
    let one = GpuRunner::new(Fake::default(), "fake:1");
    assert_eq!((zero.name(), one.name()), ("fake", "fake:1"));
    let host = HostTensor::from_slice([2], &[7i32, -7]).unwrap();
    let on_one = one.upload(&host).unwrap();
    assert_eq!(one.download(&on_one).unwrap(), host);
    assert_eq!(
        zero.download(&on_one).unwrap_err(),
        Error::WrongBackend {
            op: "download",
            arg: "tensor",
            expected: "fake".into(),
            got: "fake:1".into(),
        }
    );
    let on_zero = zero.upload(&host).unwrap();
    assert_eq!(
        one.download(&on_zero).unwrap_err(),
        Error::WrongBackend {
            op: "download",
            arg: "tensor",
            expected: "fake:1".into(),
            got: "fake".into(),
        }
    );
}

#[test]
fn sqrt_softplus_is_score_function_2() {
    let (b, fake) = backend();
    let logits = f32s(&b, &[5, 64]);
    let mut p = RouteParams::deepseek_v2();
    p.score_func = moemla_core::ScoreFunc::Sqrtsoftplus;
    ops::moe_route(&b, &logits, None, &p).unwrap();
    let s = fake.state();
    let Some(Work::Launch(kernel, args, _)) = s.queue.last() else {
        panic!("no launch");
    };
    assert_eq!(
        (kernel.as_str(), args[12]),
        ("moemla_moe_route_f32", Arg::I32(2))
    );
}

/// A hash-routed call: T = 3, E = 8, top_k = 2, a 4-row table.
fn hash_route(b: &FakeBackend, input_ids: &[i32], table: &[i32]) -> Result<()> {
    let logits = f32s(b, &[3, 8]);
    let ids = i32s(b, &[3], input_ids);
    let table = i32s(b, &[4, 2], table);
    let p = RouteParams {
        score_func: moemla_core::ScoreFunc::Sqrtsoftplus,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        group_select: moemla_core::GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    };
    let mut inputs = ops::RouteInputs::new(&logits);
    inputs.input_ids = Some(&ids);
    inputs.tid2eid = Some(&table);
    ops::moe_route_with(b, inputs, &p).map(|_| ())
}

#[test]
fn hash_routing_enqueues_the_route_and_its_resolve_and_flags_bad_tables_in_token_order() {
    let (b, fake) = backend();
    let good = [0, 1, 2, 3, 4, 5, 6, 7];
    fake.take_log();
    hash_route(&b, &[2, 0, 3], &good).unwrap();
    let log = fake.take_log();
    let launches: Vec<&String> = log.iter().filter(|l| l.starts_with("launch")).collect();
    assert_eq!(
        launches,
        [
            "launch moemla_moe_route_f32",
            "launch moemla_moe_route_hash_resolve"
        ]
    );
    assert!(!has(&log, "sync") && !has(&log, "download"), "{log:?}");
    b.synchronize().unwrap();

    // A bad token id is reported first, at its position in input_ids.
    hash_route(&b, &[2, 4, -1], &good).unwrap();
    let err = b.synchronize().unwrap_err();
    assert_eq!(
        err,
        Error::IndexOutOfRange {
            op: Op::MoeRoute,
            arg: "input_ids",
            index: vec![1],
            value: 4,
            valid: "[0, 4) (rows of tid2eid)".into(),
        }
    );
    // Token 0 reads row 3 (a repeat at column 1), token 1 row 1 (8 = E, an earlier table
    // position but a later token): token order wins, and the repeat names its column.
    let mut bad = good;
    bad[7] = 6;
    bad[2] = 8;
    hash_route(&b, &[3, 1, 0], &bad).unwrap();
    assert_eq!(
        b.synchronize().unwrap_err(),
        Error::IndexOutOfRange {
            op: Op::MoeRoute,
            arg: "tid2eid",
            index: vec![3, 1],
            value: 6,
            valid: "[0, 8), distinct within the row (already at column 0)".into(),
        }
    );
    hash_route(&b, &[1, 1, 0], &bad).unwrap();
    assert_eq!(
        b.synchronize().unwrap_err(),
        Error::IndexOutOfRange {
            op: Op::MoeRoute,
            arg: "tid2eid",
            index: vec![1, 0],
            value: 8,
            valid: "[0, 8) (E)".into(),
        }
    );
    b.synchronize().unwrap();
}

/// An FP8 experts call: T = 3, k = 2, E = 4, H = 200, I = 136 (partial 128-blocks).
fn fp8_experts(b: &FakeBackend, params: &ExpertsParams) -> Result<DeviceTensor> {
    let x = f32s(b, &[3, 200]);
    let codes = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        let bytes: Vec<u8> = (0..n).map(|i| (i % 0x7e) as u8).collect();
        b.upload(&HostTensor::from_bytes(Shape::new(dims.to_vec()), DType::F8E4M3, bytes).unwrap())
            .unwrap()
    };
    let (w13, w2) = (codes(&[4, 272, 200]), codes(&[4, 200, 136]));
    let (s13, s2) = (f32s(b, &[4, 3, 2]), f32s(b, &[4, 2, 2]));
    let ids = i32s(b, &[3, 2], &[0, 3, -1, 2, 1, 1]);
    let w = f32s(b, &[3, 2]);
    let inputs = ops::ExpertsInputs::new(&x, &w13, &w2, &ids, &w).with_scales(&s13, &s2);
    ops::moe_experts_with(b, inputs, params)
}

/// The launches in the queue, with their arguments.
fn queued(fake: &Fake) -> Vec<(String, Vec<Arg>)> {
    fake.state()
        .queue
        .iter()
        .filter_map(|w| match w {
            Work::Launch(k, a, _) => Some((k.clone(), a.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn fp8_experts_launch_their_variants_with_the_scales_and_only_enqueue() {
    let (b, fake) = backend();
    b.synchronize().unwrap();
    // w8a16 with a clamp: four launches, the weights' scales after the weights.
    let mut p = ExpertsParams {
        swiglu_limit: Some(10.0),
        ..ExpertsParams::default()
    };
    fake.take_log();
    fp8_experts(&b, &p).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_moe_align",
            "moemla_moe_gate_up_w8a16_f32",
            "moemla_moe_down_w8a16_f32",
            "moemla_moe_combine_f32"
        ]
    );
    // (x, w13, w13_scale, sorted_rows, tile_expert, meta, act, H, I, k, swiglu_limit)
    let gate_up = &l[1].1;
    assert_eq!(gate_up.len(), 11);
    assert_eq!(
        gate_up[7..],
        [Arg::I32(200), Arg::I32(136), Arg::I32(2), Arg::F32(10.0)]
    );
    // (act, w2, w2_scale, sorted_rows, tile_expert, meta, yslot, H, I)
    assert_eq!(l[2].1.len(), 9);
    b.synchronize().unwrap();

    // w8a8 with UE8M0 scales: x quantized before gate/up, act (f32) before down.
    p.swiglu_limit = None;
    p.activation_quant = moemla_core::ActivationQuant::Fp8Block128;
    p.activation_scale = moemla_core::ActivationScale::Ue8m0;
    fp8_experts(&b, &p).unwrap();
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_moe_align",
            "moemla_moe_quant_f32",
            "moemla_moe_gate_up_w8a8_f32",
            "moemla_moe_quant_f32",
            "moemla_moe_down_w8a8_f32",
            "moemla_moe_combine_f32"
        ]
    );
    // quant (src, cols, meta, use_meta, codes, scales, ue8m0): x [T, H], then act.
    let (qx, qa) = (&l[1].1, &l[3].1);
    assert_eq!(
        (qx[1], qx[3], qx[6]),
        (Arg::I32(200), Arg::I32(0), Arg::I32(1))
    );
    assert_eq!(
        (qa[1], qa[3], qa[6]),
        (Arg::I32(136), Arg::I32(1), Arg::I32(1))
    );
    // gate/up reads x's codes and scales; its act is what the act quantization reads, and
    // down reads that quantization's codes and scales. No clamp: +inf.
    let (gu, down) = (&l[2].1, &l[4].1);
    assert_eq!(gu.len(), 12);
    assert_eq!((gu[0], gu[1]), (qx[4], qx[5]));
    assert_eq!(gu[7], qa[0]);
    assert_eq!(gu[11], Arg::F32(f32::INFINITY));
    assert_eq!(down.len(), 10);
    assert_eq!((down[0], down[1]), (qa[4], qa[5]));
    b.synchronize().unwrap();
}

#[test]
fn kv_quantize_enqueues_one_launch_and_a_non_finite_value_surfaces_at_the_next_synchronize() {
    let (b, fake) = backend();
    let mut v: Vec<f32> = (0..3 * 576).map(|i| (i % 9) as f32 - 4.0).collect();
    let kv = b
        .upload(&HostTensor::from_slice([3, 576], &v).unwrap())
        .unwrap();
    let params = moemla_core::KvQuantizeParams {
        kv_format: moemla_core::KvFormat::Fp8DsV32,
    };
    fake.take_log();
    let out = ops::mla_kv_quantize(&b, &kv, &params).unwrap();
    let log = fake.take_log();
    assert!(!has(&log, "sync") && !has(&log, "download"), "{log:?}");
    assert!(
        log.contains(&"launch moemla_mla_kv_quantize_f32".to_string()),
        "{log:?}"
    );
    assert_eq!((out.dims(), out.dtype()), (&[3, 656][..], DType::U8));
    b.synchronize().unwrap();
    v[576 + 17] = f32::NAN;
    v[2 * 576] = f32::INFINITY;
    let kv = b
        .upload(&HostTensor::from_slice([3, 576], &v).unwrap())
        .unwrap();
    ops::mla_kv_quantize(&b, &kv, &params).unwrap();
    assert_eq!(
        b.synchronize().unwrap_err(),
        Error::Input {
            op: Op::MlaKvQuantize,
            arg: "kv",
            expected: "finite values".into(),
            got: "NaN at row 1 (element [1, 17])".into(),
        }
    );
}

#[test]
fn mla_decode_over_the_fp8_cache_launches_the_fp8_kernel_with_the_dense_arguments() {
    let (b, fake) = backend();
    let q = b
        .upload(
            &HostTensor::from_f32_as([2, 1, 16, 576], &vec![0.5; 2 * 16 * 576], DType::BF16)
                .unwrap(),
        )
        .unwrap();
    let cache = b
        .upload(
            &HostTensor::from_bytes(
                Shape::new(vec![4, 16, 1, 656]),
                DType::U8,
                vec![0; 4 * 16 * 656],
            )
            .unwrap(),
        )
        .unwrap();
    let table = i32s(&b, &[2, 2], &[0, 1, 2, 3]);
    let seqlens = i32s(&b, &[2], &[20, 32]);
    let mut p = MlaDecodeParams::deepseek_v3();
    p.kv_format = moemla_core::KvFormat::Fp8DsV32;
    fake.take_log();
    let out = ops::mla_decode(&b, &q, &cache, &table, &seqlens, &p).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_mla_check",
            "moemla_mla_decode_fp8_bf16",
            "moemla_mla_combine_bf16"
        ]
    );
    // (q, kv_cache, block_table, cache_seqlens, o_part, lse_part, B, Sq, Hq, Hkv, Dqk, Dv, ...)
    assert_eq!(l[1].1.len(), 20);
    assert_eq!(l[1].1[9..12], [Arg::I32(1), Arg::I32(576), Arg::I32(512)]);
    assert_eq!(out.o.dims(), [2, 1, 16, 512]);
    b.synchronize().unwrap();
}

/// A sparse call: B = 2, Sq = 2, Hq = 4, Dqk = 24, Dv = 16, 4 blocks of 8 (32 slots),
/// topk = 3; with a per-batch length and a sink.
fn sparse(b: &FakeBackend, indices: &[i32], lens: &[i32]) -> Result<MlaDecodeOutput> {
    let q = f32s(b, &[2, 2, 4, 24]);
    let kv = f32s(b, &[4, 8, 1, 24]);
    let indices = i32s(b, &[2, 2, 3], indices);
    let lens = i32s(b, &[2], lens);
    let sink = f32s(b, &[4]);
    let p = moemla_core::SparseDecodeParams {
        softmax_scale: 0.2,
        head_dim_v: 16,
        kv_format: moemla_core::KvFormat::Dense,
    };
    let mut inputs = moemla_core::ops::SparseDecodeInputs::new(&q, &kv, &indices);
    inputs.topk_length = Some(&lens);
    inputs.attn_sink = Some(&sink);
    ops::mla_sparse_decode(b, inputs, &p)
}

#[test]
fn sparse_decode_enqueues_its_three_launches_with_the_optional_tensors() {
    let (b, fake) = backend();
    fake.take_log();
    let out = sparse(&b, &[0, -1, 31, 5, 5, 6, 7, 8, 99, 1, 2, -9], &[3, 2]).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_mla_sparse_check",
            "moemla_mla_sparse_decode_f32",
            "moemla_mla_sparse_combine_f32"
        ]
    );
    // check: (indices, topk_length, B, Sq, topk, slots, err)
    assert_eq!(
        l[0].1[2..6],
        [Arg::I32(2), Arg::I32(2), Arg::I32(3), Arg::I32(32)]
    );
    // decode: (q, kv, indices, topk_length, o_part, lse_part, B, Sq, Hq, Dqk, Dv,
    // num_blocks, block_size, topk, scale, splits, block_q, block_n)
    assert_eq!(l[1].1.len(), 18);
    assert_eq!(l[1].1[2..4], l[0].1[0..2]);
    assert_eq!(
        l[1].1[6..15],
        [
            Arg::I32(2),
            Arg::I32(2),
            Arg::I32(4),
            Arg::I32(24),
            Arg::I32(16),
            Arg::I32(4),
            Arg::I32(8),
            Arg::I32(3),
            Arg::F32(0.2)
        ]
    );
    // combine: (o_part, lse_part, attn_sink, o, lse, B, Sq, Hq, Dv, splits)
    assert_eq!(l[2].1.len(), 10);
    assert!(matches!(l[2].1[2], Arg::Ptr(p) if p != 0));
    assert_eq!(
        (out.o.dims(), out.lse.dims()),
        (&[2, 2, 4, 16][..], &[2, 4, 2][..])
    );
    // Entries past a length (99 at [1, 0, 2], -9 at [1, 1, 2]) are never checked.
    b.synchronize().unwrap();
}

#[test]
fn sparse_index_errors_surface_at_the_next_synchronize_lengths_first() {
    let (b, _fake) = backend();
    // topk_length[1] = 4 > topk, and a bad index in batch 0: the length is reported.
    sparse(&b, &[0, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[3, 4]).unwrap();
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::MlaSparseDecode,
            arg: "topk_length",
            index: vec![1],
            value: 4,
            valid: "[0, 3] (topk)".into(),
        })
    );
    // The first bad counted entry: [0, 1, 0] = -2 (before [1, 0, 1] = 32).
    sparse(&b, &[0, 1, 2, -2, 3, 4, 5, 32, 7, 8, 9, 10], &[3, 3]).unwrap();
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::MlaSparseDecode,
            arg: "indices",
            index: vec![0, 1, 0],
            value: -2,
            valid: "-1 or [0, 32) (num_blocks * block_size)".into(),
        })
    );
    b.synchronize().unwrap();
}

#[test]
fn supported_lists_sparse_decode_dense_in_every_dtype_and_fp8_for_16_bit() {
    use moemla_core::{Format, OpSupport};
    let all = super::supported();
    for dtype in DType::FLOATS {
        assert!(all.contains(&OpSupport::new(Op::MlaSparseDecode, dtype)));
        let fp8 = OpSupport::with_format(Op::MlaSparseDecode, dtype, Format::Fp8DsV32);
        assert_eq!(all.contains(&fp8), dtype != DType::F32, "{dtype:?}");
    }
}

mod cache_write;
mod into;
mod memory;
mod shared_experts;
