//! aclnn's argument objects: aclTensor views of device memory, aclIntArray, aclScalar and
//! aclTensorList handles, each destroyed on drop; the dtype and format codes they take.

use crate::buffer::DevMem;
use crate::device::Device;
use crate::loader::Handle;
use moemla_core::{DType, Result};
use std::ffi::c_void;

/// aclDataType values (AscendCL "aclDataType"): ACL_FLOAT 0, ACL_FLOAT16 1, ACL_INT8 2,
/// ACL_INT32 3, ACL_UINT8 4, ACL_BF16 27.
pub fn acl_dtype(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => ACL_FLOAT,
        DType::F16 => 1,
        DType::BF16 => 27,
        DType::I32 => 3,
        DType::F8E4M3 => -1,
        DType::U8 => ACL_UINT8,
    }
}
/// ACL_FLOAT.
pub const ACL_FLOAT: i32 = 0;
/// ACL_INT8.
pub const ACL_INT8: i32 = 2;
/// ACL_UINT8.
pub const ACL_UINT8: i32 = 4;
/// ACL_FORMAT_ND (AscendCL "aclFormat").
const ACL_FORMAT_ND: i32 = 2;

impl Device {
    /// An aclTensor viewing `mem`: `dims` with `strides` (row-major if `None`) from element
    /// `offset`; the storage is all of `mem` as a 1-D array of `dtype`.
    pub fn tensor(
        &self,
        mem: &DevMem,
        dims: &[usize],
        strides: Option<&[usize]>,
        offset: usize,
        dtype: i32,
    ) -> Result<AclTensor<'_>> {
        // Element sizes: ACL_FLOAT16 1 / ACL_BF16 27: 2 bytes; ACL_INT8, ACL_UINT8: 1; ACL_INT64 9: 8.
        let size = match dtype {
            1 | 27 => 2,
            ACL_INT8 | ACL_UINT8 => 1,
            9 => 8,
            _ => 4,
        };
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let strides: Vec<i64> = match strides {
            Some(s) => s.iter().map(|&d| d as i64).collect(),
            None => {
                let mut s = vec![1i64; dims.len()];
                for i in (0..dims.len().saturating_sub(1)).rev() {
                    s[i] = s[i + 1] * dims[i + 1];
                }
                s
            }
        };
        let storage = [(mem.bytes() / size) as i64];
        // SAFETY: arrays are valid for their lengths during the call; CANN copies them.
        let ptr = unsafe {
            (self.cann.nn.aclCreateTensor)(
                dims.as_ptr(),
                dims.len() as u64,
                dtype,
                strides.as_ptr(),
                offset as i64,
                ACL_FORMAT_ND,
                storage.as_ptr(),
                1,
                mem.ptr(),
            )
        };
        if ptr.is_null() {
            self.check(crate::error::ACLNN_NULL_RESULT, "aclCreateTensor")?;
        }
        Ok(AclTensor { ptr, dev: self })
    }

    /// An aclIntArray of `values`.
    pub fn int_array(&self, values: &[i64]) -> Result<AclObject<'_>> {
        // SAFETY: `values` valid for its length; CANN copies it.
        let ptr = unsafe { (self.cann.nn.aclCreateIntArray)(values.as_ptr(), values.len() as u64) };
        self.object(ptr, "aclCreateIntArray", self.cann.nn.aclDestroyIntArray)
    }

    /// An aclScalar holding the f32 `value`.
    pub fn scalar_f32(&self, value: f32) -> Result<AclObject<'_>> {
        // SAFETY: points at one f32 for the duration of the call; CANN copies it.
        let ptr = unsafe {
            (self.cann.nn.aclCreateScalar)(&value as *const f32 as *const c_void, ACL_FLOAT)
        };
        self.object(ptr, "aclCreateScalar", self.cann.nn.aclDestroyScalar)
    }

    /// An aclTensorList taking over `tensors` (destroyed with the list).
    pub fn tensor_list(&self, tensors: Vec<AclTensor<'_>>) -> Result<AclObject<'_>> {
        let raw: Vec<Handle> = tensors.into_iter().map(AclTensor::into_raw).collect();
        // SAFETY: `raw` valid for its length; the list owns the tensors from here on.
        let ptr = unsafe { (self.cann.nn.aclCreateTensorList)(raw.as_ptr(), raw.len() as u64) };
        self.object(
            ptr,
            "aclCreateTensorList",
            self.cann.nn.aclDestroyTensorList,
        )
    }

    fn object(
        &self,
        ptr: Handle,
        call: &str,
        destroy: unsafe extern "C" fn(Handle) -> i32,
    ) -> Result<AclObject<'_>> {
        if ptr.is_null() {
            self.check(crate::error::ACLNN_NULL_RESULT, call)?;
        }
        Ok(AclObject {
            ptr,
            destroy,
            _dev: self,
        })
    }
}

/// An aclTensor, destroyed on drop.
pub struct AclTensor<'a> {
    ptr: Handle,
    dev: &'a Device,
}

impl AclTensor<'_> {
    /// The handle, for passing to CANN.
    pub fn raw(&self) -> Handle {
        self.ptr
    }

    /// Gives up ownership (to an aclTensorList).
    fn into_raw(self) -> Handle {
        let ptr = self.ptr;
        std::mem::forget(self);
        ptr
    }
}

impl Drop for AclTensor<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateTensor and not owned by a list.
        let _ = unsafe { (self.dev.cann.nn.aclDestroyTensor)(self.ptr) };
    }
}

/// An aclIntArray, aclScalar or aclTensorList, destroyed on drop.
pub struct AclObject<'a> {
    ptr: Handle,
    destroy: unsafe extern "C" fn(Handle) -> i32,
    _dev: &'a Device,
}

impl AclObject<'_> {
    /// The handle, for passing to CANN.
    pub fn raw(&self) -> Handle {
        self.ptr
    }
}

impl Drop for AclObject<'_> {
    fn drop(&mut self) {
        // SAFETY: created by the matching aclCreate* function, destroyed once.
        let _ = unsafe { (self.destroy)(self.ptr) };
    }
}
