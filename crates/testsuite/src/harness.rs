//! The per-backend harness: the backend instance shared by all tests of one instantiation,
//! skipping when it is unavailable, and helpers to move data in and out.

use moemla_core::{Backend, BackendInfo, DType, DeviceTensor, Error, HostTensor, Op, Result};
use std::sync::Arc;

/// Settings of one instantiation of the suite.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// Cases per proptest property (env `PROPTEST_CASES` overrides it). Slow backends
    /// (e.g. OpenCL on PoCL) may want fewer.
    pub proptest_cases: u32,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig { proptest_cases: 64 }
    }
}

/// One backend under test: created once per test binary by [`crate::backend_tests!`].
pub struct Suite {
    name: &'static str,
    backend: Result<(Arc<dyn Backend>, BackendInfo)>,
    config: SuiteConfig,
}

impl Suite {
    /// Calls the factory once. `name` is the instantiation's name, matched against
    /// `MOEMLA_REQUIRE`.
    pub fn new(
        name: &'static str,
        factory: impl FnOnce() -> Result<Arc<dyn Backend>>,
        config: SuiteConfig,
    ) -> Suite {
        let backend = factory().map(|b| {
            let info = b.info();
            (b, info)
        });
        Suite {
            name,
            backend,
            config,
        }
    }

    /// Runs one test body against the backend. If the factory failed with
    /// [`Error::Unavailable`], prints `skipped: <reason>` and passes, unless env
    /// `MOEMLA_REQUIRE` (a comma list of names) names this backend; any other factory error
    /// fails the test.
    pub fn run(&self, body: impl FnOnce(&Ctx<'_>)) {
        match &self.backend {
            Ok((backend, info)) => body(&Ctx {
                backend: backend.as_ref(),
                info,
                config: &self.config,
            }),
            Err(e @ Error::Unavailable { backend, .. }) => {
                if required(self.name) || required(backend) {
                    panic!("backend `{}` is required by MOEMLA_REQUIRE: {e}", self.name);
                }
                println!("skipped: {e}");
            }
            Err(e) => panic!("creating backend `{}` failed: {e}", self.name),
        }
    }
}

/// Whether env `MOEMLA_REQUIRE` lists `name`.
fn required(name: &str) -> bool {
    std::env::var("MOEMLA_REQUIRE")
        .map(|v| v.split(',').any(|n| n.trim() == name))
        .unwrap_or(false)
}

/// What a test body gets: the backend, its info, the suite settings and data helpers.
/// The helpers panic with a message naming the failed call (they are for tests).
pub struct Ctx<'a> {
    /// The backend under test.
    pub backend: &'a dyn Backend,
    /// Its self-description.
    pub info: &'a BackendInfo,
    /// The instantiation's settings.
    pub config: &'a SuiteConfig,
}

impl Ctx<'_> {
    /// Whether the backend lists (op, dtype); prints a skip line when it does not.
    pub fn supports(&self, op: Op, dtype: DType) -> bool {
        let yes = self.info.supports(op, dtype);
        if !yes {
            println!(
                "skipped: backend `{}` does not list {op} {dtype}",
                self.info.name
            );
        }
        yes
    }

    /// Uploads `values` rounded to `dtype`; returns the tensor and the exact values it
    /// holds, widened to f64 (what the reference must use).
    pub fn upload_as(
        &self,
        dims: &[usize],
        values: &[f32],
        dtype: DType,
    ) -> (DeviceTensor, Vec<f64>) {
        let host = HostTensor::from_f32_as(dims, values, dtype).expect("host tensor");
        let exact = host.to_f32_vec().expect("float tensor");
        (
            self.upload(&host),
            exact.into_iter().map(f64::from).collect(),
        )
    }

    /// Uploads an I32 tensor.
    pub fn upload_i32(&self, dims: &[usize], values: &[i32]) -> DeviceTensor {
        self.upload(&HostTensor::from_slice(dims, values).expect("host tensor"))
    }

    /// Uploads a host tensor.
    pub fn upload(&self, host: &HostTensor) -> DeviceTensor {
        self.backend
            .upload(host)
            .unwrap_or_else(|e| panic!("upload of {:?} {}: {e}", host.dtype(), host.shape()))
    }

    /// Downloads a float tensor, widened to f32.
    pub fn download_f32(&self, t: &DeviceTensor) -> Vec<f32> {
        self.download(t).to_f32_vec().expect("float tensor")
    }

    /// Downloads an I32 tensor.
    pub fn download_i32(&self, t: &DeviceTensor) -> Vec<i32> {
        self.download(t).to_i32_vec().expect("I32 tensor")
    }

    fn download(&self, t: &DeviceTensor) -> HostTensor {
        self.backend
            .download(t)
            .unwrap_or_else(|e| panic!("download of {t:?}: {e}"))
    }

    /// The proptest configuration: `PROPTEST_CASES` if set, else the suite's case count;
    /// no failure files are written (the failing input is printed instead).
    pub fn proptest_config(&self) -> proptest::test_runner::Config {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.proptest_cases);
        proptest::test_runner::Config {
            cases,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        }
    }
}

impl Ctx<'_> {
    /// Runs a proptest property over `strategy`; `test` returns `Err(why)` on failure.
    /// Panics with proptest's minimal failing input.
    pub fn check_property<S: proptest::strategy::Strategy>(
        &self,
        name: &str,
        strategy: S,
        test: impl Fn(S::Value) -> std::result::Result<(), String>,
    ) {
        let mut runner = proptest::test_runner::TestRunner::new(self.proptest_config());
        let result = runner.run(&strategy, |value| {
            test(value).map_err(proptest::test_runner::TestCaseError::fail)
        });
        if let Err(e) = result {
            panic!(
                "property `{name}` failed on backend `{}`: {e}",
                self.info.name
            );
        }
    }

    /// The float run dtypes the backend lists for `op` (for property strategies).
    pub fn float_dtypes(&self, op: Op) -> Vec<DType> {
        DType::FLOATS
            .into_iter()
            .filter(|&d| self.info.supports(op, d))
            .collect()
    }
}
