//! Run-time loading of CANN: the three libraries' symbols as declarative tables (required /
//! optional, after IREE's `dynamic_symbol_tables.h`), the search path, and the
//! `Unavailable` error that lists every path tried.
//!
//! Where CANN is looked for, first hit wins per library:
//! 1. `MOEMLA_ASCEND_LIB=<file>`: one library that provides every symbol (how the tests and
//!    CI load `libmoemla_cann_emulator.so`, the CANN C-API emulator).
//! 2. `MOEMLA_ASCEND_LIB_DIR=<dir>`: a directory holding libascendcl.so, libnnopbase.so and
//!    libopapi.so and/or libopapi_{math,nn,cv,transformer}.so — or, when it holds no
//!    libascendcl.so, the emulator `libmoemla_cann_emulator.so` (so `target/debug` works).
//! 3. `$ASCEND_HOME_PATH`, `$ASCEND_TOOLKIT_HOME`, `/usr/local/Ascend/ascend-toolkit/latest`,
//!    each in `lib64`, `{aarch64,x86_64}-linux/lib64` and the op-API directory
//!    `opp/built-in/op_impl/ai_core/tbe/op_api/lib/linux/{aarch64,x86_64}`.
//!
//! Each op symbol is looked up in every op library found (newer CANN splits libopapi.so).
//! Signatures and enum values are cited next to the tables; types are spelled in Rust:
//! `aclError`/`aclnnStatus` = i32, `aclrtStream`/`aclOpExecutor*`/`aclTensor*`/... = pointers.

use crate::tried::Tried;
use moemla_dylib::{symbol_table, with_sources, Library, SymbolTable};
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opaque CANN handle (`aclTensor*`, `aclOpExecutor*`, `aclrtStream`, ...).
pub type Handle = *mut c_void;

symbol_table! {
    /// libascendcl.so — AscendCL runtime. Signatures: AscendCL API reference
    /// (https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/ ,
    /// "System Configuration", "Device Management", "Stream Management", "Memory Management").
    /// `aclrtMemMallocPolicy`: ACL_MEM_MALLOC_HUGE_FIRST = 0. `aclrtMemcpyKind`:
    /// HOST_TO_HOST 0, HOST_TO_DEVICE 1, DEVICE_TO_HOST 2, DEVICE_TO_DEVICE 3.
    // The tables list the documented surface; not every entry is called yet.
    #[allow(dead_code)]
    pub struct AclRuntime;
    required {
        /// `aclError aclInit(const char *configPath)`
        fn aclInit(_: *const c_char) -> i32;
        /// `aclError aclFinalize()`
        fn aclFinalize() -> i32;
        /// `aclError aclrtSetDevice(int32_t deviceId)`
        fn aclrtSetDevice(_: i32) -> i32;
        /// `aclError aclrtResetDevice(int32_t deviceId)`
        fn aclrtResetDevice(_: i32) -> i32;
        /// `aclError aclrtGetDeviceCount(uint32_t *count)`
        fn aclrtGetDeviceCount(_: *mut u32) -> i32;
        /// `aclError aclrtCreateStream(aclrtStream *stream)`
        fn aclrtCreateStream(_: *mut Handle) -> i32;
        /// `aclError aclrtDestroyStream(aclrtStream stream)`
        fn aclrtDestroyStream(_: Handle) -> i32;
        /// `aclError aclrtSynchronizeStream(aclrtStream stream)`
        fn aclrtSynchronizeStream(_: Handle) -> i32;
        /// `aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)`
        fn aclrtMalloc(_: *mut Handle, _: usize, _: i32) -> i32;
        /// `aclError aclrtFree(void *devPtr)`
        fn aclrtFree(_: Handle) -> i32;
        /// `aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind)`
        fn aclrtMemcpy(_: Handle, _: usize, _: *const c_void, _: usize, _: i32) -> i32;
        /// `aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)`
        fn aclrtMemset(_: Handle, _: usize, _: i32, _: usize) -> i32;
        /// `const char *aclrtGetSocName()`
        fn aclrtGetSocName() -> *const c_char;
        /// `const char *aclGetRecentErrMsg()`
        fn aclGetRecentErrMsg() -> *const c_char;
    }
    optional {
        /// `aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total)`; attr ACL_HBM_MEM = 1.
        fn aclrtGetMemInfo(_: i32, _: *mut usize, _: *mut usize) -> i32;
    }
}

symbol_table! {
    /// libnnopbase.so — aclTensor and friends. Signatures: "aclCreateTensor" and the
    /// neighbouring base-interface pages
    /// (https://www.hiascend.com/document/detail/en/canncommercial/850/API/aolapi/operatorlist_00019.html).
    /// `aclDataType`: ACL_FLOAT 0, ACL_FLOAT16 1, ACL_INT8 2, ACL_INT32 3, ACL_INT64 9,
    /// ACL_BF16 27; `aclFormat`: ACL_FORMAT_ND 2
    /// (https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/aclcppdevg_03_1348.html).
    // The tables list the documented surface; not every entry is called yet.
    #[allow(dead_code)]
    pub struct NnopBase;
    required {
        /// `aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType dataType, const int64_t *stride, int64_t offset, aclFormat format, const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData)`
        fn aclCreateTensor(_: *const i64, _: u64, _: i32, _: *const i64, _: i64, _: i32, _: *const i64, _: u64, _: Handle) -> Handle;
        /// `aclnnStatus aclDestroyTensor(const aclTensor *tensor)`
        fn aclDestroyTensor(_: Handle) -> i32;
        /// `aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size)`
        fn aclCreateIntArray(_: *const i64, _: u64) -> Handle;
        /// `aclnnStatus aclDestroyIntArray(const aclIntArray *array)`
        fn aclDestroyIntArray(_: Handle) -> i32;
        /// `aclTensorList *aclCreateTensorList(const aclTensor *const *value, uint64_t size)`
        fn aclCreateTensorList(_: *const Handle, _: u64) -> Handle;
        /// `aclnnStatus aclDestroyTensorList(const aclTensorList *array)`; assumed to destroy the tensors it holds (to confirm on silicon, see README)
        fn aclDestroyTensorList(_: Handle) -> i32;
        /// `aclScalar *aclCreateScalar(void *value, aclDataType dataType)`
        fn aclCreateScalar(_: *const c_void, _: i32) -> Handle;
        /// `aclnnStatus aclDestroyScalar(const aclScalar *scalar)`
        fn aclDestroyScalar(_: Handle) -> i32;
    }
    optional {
    }
}

/// Second phase of every aclnn op: `aclnnStatus aclnnXxx(void *workspace, uint64_t
/// workspaceSize, aclOpExecutor *executor, aclrtStream stream)`.
pub type LaunchFn = unsafe extern "C" fn(Handle, u64, Handle, Handle) -> i32;

symbol_table! {
    /// The aclnn ops moemla uses, from libopapi.so or libopapi_{math,nn,cv,transformer}.so.
    /// All optional: an op whose symbols are missing makes only the moemla ops that need it
    /// unsupported. First-phase signatures (all end in `uint64_t *workspaceSize,
    /// aclOpExecutor **executor`), from the op pages under
    /// https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/ :
    // The tables list the documented surface; not every entry is called yet.
    #[allow(dead_code)]
    pub struct OpApi;
    required {
    }
    optional {
        /// aclnnCast.md: `(const aclTensor *self, const aclDataType dtype, aclTensor *out, ...)`
        fn aclnnCastGetWorkspaceSize(_: Handle, _: i32, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnCast second phase.
        fn aclnnCast(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnInplaceCopy.md: `(aclTensor *selfRef, const aclTensor *src, ...)`
        fn aclnnInplaceCopyGetWorkspaceSize(_: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnInplaceCopy second phase.
        fn aclnnInplaceCopy(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMuls.md: `(const aclTensor *self, const aclScalar *other, aclTensor *out, ...)`
        fn aclnnMulsGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMuls second phase.
        fn aclnnMuls(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnInplaceZero.md (hicann/ops-math `math/zero_op/docs/aclnnInplaceZero.md`): `(aclTensor *selfRef, ...)`
        fn aclnnInplaceZeroGetWorkspaceSize(_: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnInplaceZero second phase.
        fn aclnnInplaceZero(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMatmul.md: `(const aclTensor *self, const aclTensor *mat2, aclTensor *out, int8_t cubeMathType, ...)`
        fn aclnnMatmulGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: i8, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMatmul second phase.
        fn aclnnMatmul(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnLogSumExp.md: `(const aclTensor *self, const aclIntArray *dim, bool keepDim, aclTensor *out, ...)`
        fn aclnnLogSumExpGetWorkspaceSize(_: Handle, _: Handle, _: bool, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnLogSumExp second phase.
        fn aclnnLogSumExp(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMoeGatingTopK.md: `(const aclTensor *x, const aclTensor *biasOptional, int64_t k, int64_t kGroup, int64_t groupCount, int64_t groupSelectMode, int64_t renorm, int64_t normType, bool outFlag, double routedScalingFactor, double eps, const aclTensor *yOut, const aclTensor *expertIdxOut, const aclTensor *outOut, ...)`
        fn aclnnMoeGatingTopKGetWorkspaceSize(_: Handle, _: Handle, _: i64, _: i64, _: i64, _: i64, _: i64, _: i64, _: bool, _: f64, _: f64, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMoeGatingTopK second phase.
        fn aclnnMoeGatingTopK(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMoeInitRoutingV2.md: `(const aclTensor *x, const aclTensor *expertIdx, int64_t activeNum, int64_t expertCapacity, int64_t expertNum, int64_t dropPadMode, int64_t expertTokensCountOrCumsumFlag, bool expertTokensBeforeCapacityFlag, const aclTensor *expandedXOut, const aclTensor *expandedRowIdxOut, const aclTensor *expertTokensCountOrCumsumOut, const aclTensor *expertTokensBeforeCapacityOut, ...)`
        fn aclnnMoeInitRoutingV2GetWorkspaceSize(_: Handle, _: Handle, _: i64, _: i64, _: i64, _: i64, _: i64, _: bool, _: Handle, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMoeInitRoutingV2 second phase.
        fn aclnnMoeInitRoutingV2(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnGroupedMatmulV4.md: `(const aclTensorList *x, *weight, *biasOptional, *scaleOptional, *offsetOptional, *antiquantScaleOptional, *antiquantOffsetOptional, *perTokenScaleOptional, const aclTensor *groupListOptional, const aclTensorList *activationInputOptional, *activationQuantScaleOptional, *activationQuantOffsetOptional, int64_t splitItem, int64_t groupType, int64_t groupListType, int64_t actType, aclTensorList *out, *activationFeatureOutOptional, *dynQuantScaleOutOptional, ...)`
        fn aclnnGroupedMatmulV4GetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: i64, _: i64, _: i64, _: i64, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnGroupedMatmulV4 second phase.
        fn aclnnGroupedMatmulV4(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnSwiGlu.md: `(const aclTensor *x, int64_t dim, aclTensor *out, ...)`
        fn aclnnSwiGluGetWorkspaceSize(_: Handle, _: i64, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnSwiGlu second phase.
        fn aclnnSwiGlu(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMoeFinalizeRoutingV2.md: `(const aclTensor *expandedX, const aclTensor *expandedRowIdx, const aclTensor *x1Optional, const aclTensor *x2Optional, const aclTensor *biasOptional, const aclTensor *scalesOptional, const aclTensor *expertIdxOptional, int64_t dropPadMode, const aclTensor *out, ...)`
        fn aclnnMoeFinalizeRoutingV2GetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: i64, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMoeFinalizeRoutingV2 second phase.
        fn aclnnMoeFinalizeRoutingV2(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnFusedInferAttentionScoreV3.md: query, key (list), value (list), pseShift, attenMask, actualSeqLengths (int array), actualSeqLengthsKv (int array), deqScale1, quantScale1, deqScale2, quantScale2, quantOffset2, antiquantScale, antiquantOffset, blockTable, queryPaddingSize, kvPaddingSize, keyAntiquantScale, keyAntiquantOffset, valueAntiquantScale, valueAntiquantOffset, keySharedPrefix, valueSharedPrefix, actualSharedPrefixLen (int array), queryRope, keyRope, keyRopeAntiquantScale, int64 numHeads, double scaleValue, int64 preTokens, int64 nextTokens, char *inputLayout, int64 numKeyValueHeads, int64 sparseMode, int64 innerPrecise, int64 blockSize, int64 antiquantMode, bool softmaxLseFlag, int64 keyAntiquantMode, int64 valueAntiquantMode, attentionOut, softmaxLse, ...
        fn aclnnFusedInferAttentionScoreV3GetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: i64, _: f64, _: i64, _: i64, _: *const c_char, _: i64, _: i64, _: i64, _: i64, _: i64, _: bool, _: i64, _: i64, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnFusedInferAttentionScoreV3 second phase.
        fn aclnnFusedInferAttentionScoreV3(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnClamp.md: `(const aclTensor *self, const aclScalar *clipValueMin, const aclScalar *clipValueMax, aclTensor *out, ...)`; a null bound is no bound
        fn aclnnClampGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnClamp second phase.
        fn aclnnClamp(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnSoftmax.md: `(const aclTensor *self, int64_t dim, aclTensor *out, ...)`
        fn aclnnSoftmaxGetWorkspaceSize(_: Handle, _: i64, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnSoftmax second phase.
        fn aclnnSoftmax(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnRelu.md: `(const aclTensor *self, aclTensor *out, ...)`
        fn aclnnReluGetWorkspaceSize(_: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnRelu second phase.
        fn aclnnRelu(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnTopk.md: `(const aclTensor *self, int64_t k, int64_t dim, bool largest, bool sorted, aclTensor *valuesOut, aclTensor *indicesOut, ...)`
        fn aclnnTopkGetWorkspaceSize(_: Handle, _: i64, _: i64, _: bool, _: bool, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnTopk second phase.
        fn aclnnTopk(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnSoftplus.md (hicann/ops-nn `activation/softplus_v2/docs/aclnnSoftplus.md`): `(const aclTensor *self, const aclScalar *beta, const aclScalar *threshold, aclTensor *out, ...)`
        fn aclnnSoftplusGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnSoftplus second phase.
        fn aclnnSoftplus(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnSqrt.md: `(const aclTensor *self, aclTensor *out, ...)`
        fn aclnnSqrtGetWorkspaceSize(_: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnSqrt second phase.
        fn aclnnSqrt(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnMul.md: `(const aclTensor *self, const aclTensor *other, aclTensor *out, ...)`, broadcasting
        fn aclnnMulGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnMul second phase.
        fn aclnnMul(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnIndexSelect.md: `(const aclTensor *self, int64_t dim, const aclTensor *index, aclTensor *out, ...)`
        fn aclnnIndexSelectGetWorkspaceSize(_: Handle, _: i64, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnIndexSelect second phase.
        fn aclnnIndexSelect(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// aclnnScatterPaKvCache.md (hicann/ops-transformer `attention/scatter_pa_kv_cache/docs/aclnnScatterPaKvCache.md`): `(const aclTensor *key, aclTensor *keyCacheRef, const aclTensor *slotMapping, const aclTensor *value, aclTensor *valueCacheRef, const aclTensor *compressLensOptional, const aclTensor *compressSeqOffsetOptional, const aclTensor *seqLensOptional, char *cacheModeOptional, char *scatterModeOptional, const aclIntArray *stridesOptional, const aclIntArray *offsetsOptional, ...)`
        fn aclnnScatterPaKvCacheGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: *const c_char, _: *const c_char, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnScatterPaKvCache second phase.
        fn aclnnScatterPaKvCache(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// hicann/ops-transformer `attention/sparse_flash_attention/docs/aclnnSparseFlashAttention.md`: `(const aclTensor *query, *key, *value, *sparseIndices, *blockTable, *actualSeqLengthsQuery, *actualSeqLengthsKv, *queryRope, *keyRope, double scaleValue, int64_t sparseBlockSize, char *layoutQuery, char *layoutKv, int64_t sparseMode, int64_t preTokens, int64_t nextTokens, int64_t attentionMode, bool returnSoftmaxLse, const aclTensor *attentionOutOut, *softmaxMaxOut, *softmaxSumOut, ...)`
        fn aclnnSparseFlashAttentionGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: f64, _: i64, _: *const c_char, _: *const c_char, _: i64, _: i64, _: i64, _: i64, _: bool, _: Handle, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnSparseFlashAttention second phase.
        fn aclnnSparseFlashAttention(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
        /// hicann/ops-transformer `attention/lightning_indexer/docs/aclnnLightningIndexer.md`: `(const aclTensor *query, *key, *weights, *actualSeqLengthsQueryOptional, *actualSeqLengthsKeyOptional, *blockTableOptional, char *layoutQueryOptional, char *layoutKeyOptional, int64_t sparseCount, int64_t sparseMode, int64_t preTokens, int64_t nextTokens, bool returnValues, const aclTensor *sparseIndicesOut, *sparseValuesOut, ...)`
        fn aclnnLightningIndexerGetWorkspaceSize(_: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: Handle, _: *const c_char, _: *const c_char, _: i64, _: i64, _: i64, _: i64, _: bool, _: Handle, _: Handle, _: *mut u64, _: *mut Handle) -> i32;
        /// aclnnLightningIndexer second phase.
        fn aclnnLightningIndexer(_: Handle, _: u64, _: Handle, _: Handle) -> i32;
    }
}

/// The loaded CANN: its libraries (kept alive as long as the tables) and where they came from.
pub struct Cann {
    /// libascendcl.so symbols.
    pub rt: AclRuntime,
    /// libnnopbase.so symbols.
    pub nn: NnopBase,
    /// aclnn op symbols.
    pub ops: OpApi,
    /// Which files were loaded (the tables keep them open).
    pub origin: Vec<PathBuf>,
}

/// Op libraries, newest layout first.
const OP_LIBS: [&str; 5] = [
    "libopapi.so",
    "libopapi_math.so",
    "libopapi_nn.so",
    "libopapi_cv.so",
    "libopapi_transformer.so",
];

/// Directories searched under each CANN root.
fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("lib64")];
    for arch in ["aarch64", "x86_64"] {
        dirs.push(root.join(format!("{arch}-linux/lib64")));
        dirs.push(root.join(format!(
            "opp/built-in/op_impl/ai_core/tbe/op_api/lib/linux/{arch}"
        )));
    }
    dirs
}

/// The directories to search, in order, from the environment.
pub fn search_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("MOEMLA_ASCEND_LIB_DIR") {
        return vec![PathBuf::from(dir)];
    }
    let mut roots: Vec<PathBuf> = ["ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest"));
    roots.iter().flat_map(|r| dirs_under(r)).collect()
}

/// The one library that provides every symbol, if the environment names one:
/// `MOEMLA_ASCEND_LIB`, or a `MOEMLA_ASCEND_LIB_DIR` that holds the emulator
/// (`libmoemla_cann_emulator.so`) and no `libascendcl.so`.
fn single_library() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("MOEMLA_ASCEND_LIB") {
        return Some(PathBuf::from(file));
    }
    let dir = PathBuf::from(std::env::var_os("MOEMLA_ASCEND_LIB_DIR")?);
    let emulator = dir.join(EMULATOR);
    (!dir.join("libascendcl.so").exists() && emulator.exists()).then_some(emulator)
}

/// The file name of the CANN C-API emulator (`moemla-cann-emulator`).
const EMULATOR: &str = "libmoemla_cann_emulator.so";

/// Loads one file, recording the attempt.
fn try_load(path: &Path, tried: &mut Tried) -> Option<Library> {
    if !path.exists() {
        tried.not_found(path);
        return None;
    }
    // SAFETY: loading runs the library's initialisers; CANN's and the emulator's are
    // ordinary shared-library constructors.
    match unsafe { Library::new(path) } {
        Ok(lib) => Some(lib),
        Err(e) => {
            tried.failed(path, with_sources(&e));
            None
        }
    }
}

impl Cann {
    /// Finds and loads CANN; the error lists every path tried and why it failed.
    pub fn load() -> Result<Cann, String> {
        let mut tried = Tried::default();
        let mut libs: Vec<(PathBuf, Library)> = Vec::new();
        if let Some(path) = single_library() {
            if let Some(lib) = try_load(&path, &mut tried) {
                libs.push((path, lib));
            }
        } else {
            let dirs = search_dirs();
            for name in ["libascendcl.so", "libnnopbase.so"] {
                if let Some(found) = dirs.iter().find_map(|d| {
                    let p = d.join(name);
                    try_load(&p, &mut tried).map(|l| (p, l))
                }) {
                    libs.push(found);
                }
            }
            for name in OP_LIBS {
                for d in &dirs {
                    let p = d.join(name);
                    if let Some(lib) = try_load(&p, &mut tried) {
                        libs.push((p, lib));
                    }
                }
            }
        }
        if libs.is_empty() {
            return Err(format!(
                "no CANN library could be loaded; tried: [{}]. Set MOEMLA_ASCEND_LIB_DIR to the \
                 directory holding libascendcl.so, or source CANN's set_env.sh (ASCEND_HOME_PATH)",
                tried.summary()
            ));
        }
        let (origin, libs): (Vec<PathBuf>, Vec<Arc<Library>>) =
            libs.into_iter().map(|(p, l)| (p, Arc::new(l))).unzip();
        let missing = |library: &str, names: Vec<&str>| {
            let s = if names.len() == 1 { "" } else { "s" };
            format!("{library}: missing required symbol{s} {}", names.join(", "))
        };
        let tables = AclRuntime::resolve_in(&libs)
            .map_err(|names| missing("libascendcl.so", names))
            .and_then(|rt| {
                let nn = NnopBase::resolve_in(&libs)
                    .map_err(|names| missing("libnnopbase.so", names))?;
                let ops =
                    OpApi::resolve_in(&libs).map_err(|names| missing("libopapi.so", names))?;
                Ok((rt, nn, ops))
            });
        match tables {
            Ok((rt, nn, ops)) => Ok(Cann {
                rt,
                nn,
                ops,
                origin,
            }),
            Err(e) => {
                let loaded: Vec<String> = origin.iter().map(|p| p.display().to_string()).collect();
                Err(format!(
                    "CANN not found ({e}); loaded: [{}]; tried: [{}]. Set MOEMLA_ASCEND_LIB_DIR to \
                     the directory holding libascendcl.so, or source CANN's set_env.sh \
                     (ASCEND_HOME_PATH)",
                    loaded.join(", "),
                    tried.summary()
                ))
            }
        }
    }
}
