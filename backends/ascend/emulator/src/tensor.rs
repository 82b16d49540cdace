//! aclTensor views: reading and writing the elements a view selects.
//!
//! `aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum,
//! aclDataType dataType, const int64_t *stride, int64_t offset, aclFormat format,
//! const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData)`: the view has
//! shape viewDims and per-dimension strides (elements, non-negative); element 0 sits
//! `offset` elements into the storage of shape storageDims at tensorData
//! (<https://www.hiascend.com/document/detail/en/canncommercial/850/API/aolapi/operatorlist_00019.html>).
//! aclDataType values (AscendCL "aclDataType"): ACL_FLOAT 0, ACL_FLOAT16 1, ACL_INT8 2,
//! ACL_INT32 3, ACL_UINT8 4, ACL_INT64 9, ACL_DOUBLE 11, ACL_BOOL 12, ACL_BF16 27.
//! aclFormat ACL_FORMAT_ND 2 (AscendCL "aclFormat",
//! <https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/aclcppdevg_03_1348.html>).

use crate::memory::{heap, range_mut};
use crate::status::EmuResult;
use half::{bf16, f16};

/// ACL_FLOAT.
pub const DT_F32: i32 = 0;
/// ACL_FLOAT16.
pub const DT_F16: i32 = 1;
/// ACL_INT8.
pub const DT_I8: i32 = 2;
/// ACL_INT32.
pub const DT_I32: i32 = 3;
/// ACL_UINT8.
pub const DT_U8: i32 = 4;
/// ACL_INT64.
pub const DT_I64: i32 = 9;
/// ACL_DOUBLE.
pub const DT_F64: i32 = 11;
/// ACL_BOOL.
pub const DT_BOOL: i32 = 12;
/// ACL_BF16.
pub const DT_BF16: i32 = 27;
/// ACL_FORMAT_ND.
pub const FORMAT_ND: i32 = 2;

/// Bytes per element of an aclDataType the emulator knows.
pub fn dtype_size(dtype: i32) -> Option<usize> {
    match dtype {
        DT_F32 | DT_I32 => Some(4),
        DT_F16 | DT_BF16 => Some(2),
        DT_I8 | DT_U8 | DT_BOOL => Some(1),
        DT_I64 | DT_F64 => Some(8),
        _ => None,
    }
}

/// An aclTensor: a strided view into device storage.
#[derive(Clone, Debug)]
pub struct TensorDesc {
    /// View shape.
    pub dims: Vec<usize>,
    /// Per-dimension strides, in elements.
    pub strides: Vec<usize>,
    /// Offset of element 0 in the storage, in elements.
    pub offset: usize,
    /// aclDataType.
    pub dtype: i32,
    /// aclFormat.
    pub format: i32,
    /// Storage shape.
    pub storage: Vec<usize>,
    /// Device address of the storage.
    pub data: usize,
}

impl TensorDesc {
    /// Number of view elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the view is the plain row-major layout of its dims.
    pub fn is_contiguous(&self) -> bool {
        let mut want = 1;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            if d > 1 && s != want {
                return false;
            }
            want *= d;
        }
        true
    }

    /// Storage element offsets of the view's elements, row-major.
    fn element_offsets(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.numel());
        if self.numel() == 0 {
            return out;
        }
        let mut idx = vec![0usize; self.dims.len()];
        loop {
            out.push(
                self.offset
                    + idx
                        .iter()
                        .zip(&self.strides)
                        .map(|(i, s)| i * s)
                        .sum::<usize>(),
            );
            let mut d = self.dims.len();
            loop {
                if d == 0 {
                    return out;
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < self.dims[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }

    /// The view's elements widened to f64 (integers exactly), row-major.
    pub fn load(&self) -> EmuResult<Vec<f64>> {
        let size = dtype_size(self.dtype).unwrap_or(1);
        let storage_bytes = self.storage.iter().product::<usize>() * size;
        let mut h = heap();
        let bytes = range_mut(&mut h, self.data, storage_bytes, "tensor read")?;
        Ok(self
            .element_offsets()
            .into_iter()
            .map(|e| decode(self.dtype, &bytes[e * size..(e + 1) * size]))
            .collect())
    }

    /// Writes `values` (row-major, rounded to the dtype) into the view.
    pub fn store(&self, values: &[f64]) -> EmuResult<()> {
        let size = dtype_size(self.dtype).unwrap_or(1);
        let storage_bytes = self.storage.iter().product::<usize>() * size;
        let mut h = heap();
        let bytes = range_mut(&mut h, self.data, storage_bytes, "tensor write")?;
        for (e, &v) in self.element_offsets().into_iter().zip(values) {
            encode(self.dtype, v, &mut bytes[e * size..(e + 1) * size]);
        }
        Ok(())
    }
}

/// One element of `dtype` from its little-endian bytes, widened to f64.
pub(crate) fn decode(dtype: i32, b: &[u8]) -> f64 {
    match dtype {
        DT_F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        DT_F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
        DT_BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        DT_I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        DT_I64 => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64,
        DT_F64 => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
        DT_I8 => b[0] as i8 as f64,
        _ => b[0] as f64,
    }
}

fn encode(dtype: i32, v: f64, out: &mut [u8]) {
    match dtype {
        DT_F32 => out.copy_from_slice(&(v as f32).to_le_bytes()),
        DT_F16 => out.copy_from_slice(&f16::from_f64(v).to_le_bytes()),
        DT_BF16 => out.copy_from_slice(&bf16::from_f64(v).to_le_bytes()),
        DT_I32 => out.copy_from_slice(&(v as i32).to_le_bytes()),
        DT_I64 => out.copy_from_slice(&(v as i64).to_le_bytes()),
        DT_F64 => out.copy_from_slice(&v.to_le_bytes()),
        DT_I8 => out[0] = v as i8 as u8,
        _ => out[0] = v as u8,
    }
}
