//! Kernel sources and the program cache: each (module, storage dtype) program is built once
//! per process, from `kernels/opencl/common.cl` followed by the module's file.

use crate::error::{cl, ClCallError};
use moemla_core::{DType, Result};
use opencl3::context::Context;
use opencl3::program::Program;
use std::collections::HashMap;
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

/// The programs built so far, one per (module, dtype); a failed build is kept too, so it
/// is reported again without rebuilding.
#[derive(Default)]
pub struct Programs {
    cells: Mutex<HashMap<(Module, DType), ProgramCell>>,
    builds: AtomicUsize,
}

impl Programs {
    /// The program of `module` for storage type `dtype` in `context`, built on first use
    /// (concurrent first uses wait for one build).
    pub fn get(&self, context: &Context, module: Module, dtype: DType) -> Result<Arc<Program>> {
        let cell = {
            let mut map = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            map.entry((module, dtype)).or_default().clone()
        };
        cell.get_or_init(|| {
            self.builds.fetch_add(1, Ordering::SeqCst);
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
        .clone()
    }

    /// How many programs have been built so far (each (module, dtype) at most once).
    pub fn built(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
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
