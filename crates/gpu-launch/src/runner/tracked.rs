//! [`Tracked`]: the runner's device, counting host<->device copies and allocations for
//! `Backend::traffic` at the one place every op, copy and check goes through.

use crate::args::Arg;
use crate::device::GpuDevice;
use crate::module::Module;
use moemla_core::memory::TrafficCounter;
use moemla_core::{Op, Result};
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::ffi::c_void;
use std::sync::Arc;

/// A device whose uploads, reads and allocations are counted (shared by the handles
/// `with_queue` makes on other streams).
pub(super) struct Tracked<D> {
    /// The device.
    pub(super) inner: D,
    /// The counts.
    pub(super) traffic: Arc<TrafficCounter>,
}

impl<D: GpuDevice> GpuDevice for Tracked<D> {
    type Buffer = D::Buffer;
    const NAME: &'static str = D::NAME;

    fn enter(&self) -> Result<()> {
        self.inner.enter()
    }
    fn limits(&self, op: Op) -> Result<DeviceLimits> {
        self.inner.limits(op)
    }
    fn alloc(&self, bytes: usize) -> Result<D::Buffer> {
        self.traffic.count_allocation(bytes);
        self.inner.alloc(bytes)
    }
    fn fill(&self, buffer: &D::Buffer, bytes: usize, value: u8) -> Result<()> {
        self.inner.fill(buffer, bytes, value)
    }
    fn upload(&self, data: &[u8]) -> Result<D::Buffer> {
        self.traffic.count_allocation(data.len());
        self.traffic.count_upload(data.len());
        self.inner.upload(data)
    }
    fn upload_into(&self, buffer: &D::Buffer, offset: usize, data: &[u8]) -> Result<()> {
        self.traffic.count_upload(data.len());
        self.inner.upload_into(buffer, offset, data)
    }
    fn copy(
        &self,
        src: &D::Buffer,
        src_offset: usize,
        dst: &D::Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        self.inner.copy(src, src_offset, dst, dst_offset, bytes)
    }
    fn read(&self, buffer: &D::Buffer, offset: usize, out: &mut [u8]) -> Result<()> {
        self.traffic.count_download(out.len());
        self.inner.read(buffer, offset, out)
    }
    unsafe fn wrap(&self, ptr: *mut c_void, bytes: usize) -> Result<D::Buffer> {
        // SAFETY: the caller upholds `GpuDevice::wrap`'s contract.
        unsafe { self.inner.wrap(ptr, bytes) }
    }
    unsafe fn with_stream(&self, stream: *mut c_void) -> Result<Self> {
        Ok(Tracked {
            // SAFETY: the caller upholds `GpuDevice::with_stream`'s contract.
            inner: unsafe { self.inner.with_stream(stream)? },
            traffic: self.traffic.clone(),
        })
    }
    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()> {
        self.inner.launch(module, launch, args)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}
