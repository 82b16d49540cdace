//! Kernel sources and the program and kernel cache of a context: each (module, storage
//! dtype) program is built once per process, from `kernels/opencl/common.cl` followed by
//! the module's file (the contract-v2 programs of `programs_v2.rs` are cached here too), and
//! kernel objects are reused across launches.

use crate::error::{cl, ClCallError};
use crate::programs_v2::Kernels;
use moemla_core::{DType, Result};
use opencl3::context::Context;
use opencl3::kernel::Kernel;
use opencl3::program::Program;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const COMMON_SRC: &str = include_str!("../../../kernels/opencl/common.cl");

/// A kernel source file under `kernels/opencl/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `moe_route.cl`
    MoeRoute,
    /// `moe_experts.cl`
    MoeExperts,
    /// `mla_decode.cl`
    MlaDecode,
    /// `ceilings.cl` (the benchmark GEMM)
    Ceilings,
    /// `flags.cl` (the index-error flags' value capture; built for F32 only)
    Flags,
}

impl Module {
    fn source(self) -> &'static str {
        match self {
            Module::MoeRoute => include_str!("../../../kernels/opencl/moe_route.cl"),
            Module::MoeExperts => include_str!("../../../kernels/opencl/moe_experts.cl"),
            Module::MlaDecode => include_str!("../../../kernels/opencl/mla_decode.cl"),
            Module::Ceilings => include_str!("../../../kernels/opencl/ceilings.cl"),
            Module::Flags => include_str!("../../../kernels/opencl/flags.cl"),
        }
    }
}

/// Build options selecting the storage type of a program.
fn build_options(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "-cl-std=CL1.2 -DDTYPE_F16",
        DType::BF16 => "-cl-std=CL1.2 -DDTYPE_BF16",
        _ => "-cl-std=CL1.2 -DDTYPE_F32",
    }
}

type ProgramCell = Arc<OnceLock<Result<Arc<Program>>>>;

/// Which program: a v1 module or a contract-v2 program (`programs_v2.rs`), and its
/// storage dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    V1(Module, DType),
    V2(Kernels, DType),
}

/// The programs and kernel objects of one context: each program is built once per process
/// (a failed build is kept too, so it is reported again without rebuilding), and each
/// kernel object is made once per concurrent use ([`Programs::kernel`]).
#[derive(Default)]
pub struct Programs {
    cells: Mutex<HashMap<Key, ProgramCell>>,
    builds: AtomicUsize,
    /// Idle kernel objects by program (`cl_program` address) and kernel name. A kernel's
    /// arguments are its state, so a launch takes one out for itself and gives it back
    /// after the enqueue (which captures the arguments).
    kernels: Mutex<HashMap<usize, HashMap<String, Vec<Kernel>>>>,
    kernels_made: AtomicUsize,
}

impl Programs {
    /// The program of `module` for storage type `dtype` in `context`, built on first use
    /// (concurrent first uses wait for one build).
    pub fn get(&self, context: &Context, module: Module, dtype: DType) -> Result<Arc<Program>> {
        self.cached(Key::V1(module, dtype), || {
            // One string: opencl3's multi-source constructor passes `&str`s where C wants
            // `char*`s, so the helpers are prepended here.
            let source = format!("{COMMON_SRC}\n{}", module.source());
            build_source(
                context,
                &source,
                build_options(dtype),
                &format!("{module:?} {dtype}"),
            )
        })
    }

    /// The contract-v2 program `kernels` for storage type `dtype`, made by `build` on first
    /// use.
    pub fn get_v2(
        &self,
        kernels: Kernels,
        dtype: DType,
        build: impl FnOnce() -> Result<Arc<Program>>,
    ) -> Result<Arc<Program>> {
        self.cached(Key::V2(kernels, dtype), build)
    }

    /// The program under `key`, made by `build` on first use.
    fn cached(
        &self,
        key: Key,
        build: impl FnOnce() -> Result<Arc<Program>>,
    ) -> Result<Arc<Program>> {
        let cell = {
            let mut map = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_default().clone()
        };
        cell.get_or_init(|| {
            self.builds.fetch_add(1, Ordering::SeqCst);
            build()
        })
        .clone()
    }

    /// How many programs have been built so far (each (module, dtype) at most once).
    pub fn built(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
    }

    /// How many kernel objects have been made so far (one per kernel and concurrent use).
    pub fn kernels_made(&self) -> usize {
        self.kernels_made.load(Ordering::SeqCst)
    }

    /// Kernel `name` of `program` for one launch: an idle kernel object, or a new one
    /// (`clCreateKernel`) when none is idle. Given back when the result is dropped.
    pub fn kernel<'a>(&'a self, program: &Program, name: &str) -> Result<PooledKernel<'a>> {
        let key = program.get() as usize;
        let idle = {
            let mut map = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
            map.get_mut(&key)
                .and_then(|by_name| by_name.get_mut(name))
                .and_then(Vec::pop)
        };
        let kernel = match idle {
            Some(k) => k,
            None => {
                self.kernels_made.fetch_add(1, Ordering::SeqCst);
                Kernel::create(program, name).map_err(cl("clCreateKernel"))?
            }
        };
        Ok(PooledKernel {
            kernel: ManuallyDrop::new(kernel),
            key,
            name: name.to_string(),
            programs: self,
        })
    }
}

/// A kernel object lent to one launch by [`Programs::kernel`] (the kernel retains its
/// program, so the program's address stays its key while the kernel is kept).
pub struct PooledKernel<'a> {
    kernel: ManuallyDrop<Kernel>,
    key: usize,
    name: String,
    programs: &'a Programs,
}

impl Deref for PooledKernel<'_> {
    type Target = Kernel;

    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}

impl Drop for PooledKernel<'_> {
    fn drop(&mut self) {
        // SAFETY: `kernel` is taken once, here, and never used again.
        let kernel = unsafe { ManuallyDrop::take(&mut self.kernel) };
        let mut map = (self.programs.kernels.lock()).unwrap_or_else(|p| p.into_inner());
        let by_name = map.entry(self.key).or_default();
        by_name
            .entry(std::mem::take(&mut self.name))
            .or_default()
            .push(kernel);
    }
}

/// Builds `source` in `context`; a failure carries the status and the build log.
pub fn build_source(
    context: &Context,
    source: &str,
    options: &str,
    what: &str,
) -> Result<Arc<Program>> {
    let mut program =
        Program::create_from_source(context, source).map_err(cl("clCreateProgramWithSource"))?;
    if let Err(e) = program.build(context.devices(), options) {
        let log = program
            .get_build_log(context.default_device())
            .unwrap_or_else(|_| "(no build log)".to_string());
        return Err(ClCallError {
            call: "clBuildProgram",
            status: e.0,
            detail: Some(format!("{what}: {}", log.trim())),
        }
        .into());
    }
    Ok(Arc::new(program))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::Error;

    #[test]
    fn a_failed_build_reports_status_and_log() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let src = "__kernel void broken(__global int *p) { p[0] = not_declared; }";
        match build_source(&backend.device().context, src, "-cl-std=CL1.2", "test") {
            Err(Error::Device { call, message, .. }) => {
                assert_eq!(call, "clBuildProgram");
                assert!(
                    message.starts_with("CL_BUILD_PROGRAM_FAILURE (-11): test: "),
                    "{message}"
                );
                assert!(message.contains("not_declared"), "{message}");
            }
            other => panic!("expected a build failure, got {:?}", other.map(|_| ())),
        }
    }
}
