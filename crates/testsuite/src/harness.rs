//! The per-backend harness: the backend instance shared by all tests of one instantiation,
//! skipping when it is unavailable (or, if allowed, when an op is unsupported), and helpers
//! to move data in and out.

use crate::unsupported::{quiet_panics_after_unsupported, Recording};
use moemla_core::{Backend, BackendInfo, DType, DeviceTensor, Error, HostTensor, Op, Result};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

/// Held shared by every test body and exclusively by those that leave an index error
/// pending on the device ([`Suite::run_alone`]).
static DEVICE_ERRORS: RwLock<()> = RwLock::new(());

/// Settings of one instantiation of the suite.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// Cases per proptest property (env `PROPTEST_CASES` overrides it). Slow backends
    /// (e.g. OpenCL on PoCL) may want fewer.
    pub proptest_cases: u32,
    /// Whether `Error::Unsupported` from the backend skips instead of failing: a test that
    /// fails after any call returned `Unsupported` prints `skipped: unsupported: <error>`
    /// and passes, and a property case that met one is rejected (another input is drawn;
    /// the property is skipped only if proptest gives up). For backends whose vendor ops
    /// cannot do some parameter combinations (Ascend's aclnn); default false (strict).
    pub allow_unsupported: bool,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            proptest_cases: 64,
            allow_unsupported: false,
        }
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
    /// fails the test. See [`SuiteConfig::allow_unsupported`] for `Error::Unsupported`.
    pub fn run(&self, body: impl FnOnce(&Ctx<'_>)) {
        let _shared = DEVICE_ERRORS.read().unwrap_or_else(|p| p.into_inner());
        self.run_body(body);
    }

    /// [`Suite::run`] with no other test of this process running meanwhile: for tests that
    /// make an op meet a bad index. Where ops only enqueue, the index error belongs to the
    /// backend until the next synchronize or download, whichever test calls it; running
    /// alone keeps each error with the test that caused it.
    pub fn run_alone(&self, body: impl FnOnce(&Ctx<'_>)) {
        let _alone = DEVICE_ERRORS.write().unwrap_or_else(|p| p.into_inner());
        self.run_body(body);
    }

    fn run_body(&self, body: impl FnOnce(&Ctx<'_>)) {
        match &self.backend {
            Ok((backend, info)) if self.config.allow_unsupported => {
                quiet_panics_after_unsupported();
                let recording = Recording::new(backend.as_ref());
                recording.take(); // clears this thread's flag from an earlier test
                let ctx = Ctx {
                    backend: &recording,
                    info,
                    config: &self.config,
                    recording: Some(&recording),
                };
                let outcome = catch_unwind(AssertUnwindSafe(|| body(&ctx)));
                match (outcome, recording.take()) {
                    (Ok(()), _) => {}
                    (Err(_), Some(reason)) => println!("skipped: unsupported: {reason}"),
                    (Err(panic), None) => resume_unwind(panic),
                }
            }
            Ok((backend, info)) => body(&Ctx {
                backend: backend.as_ref(),
                info,
                config: &self.config,
                recording: None,
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
    /// With `allow_unsupported`: the wrapper `backend` is, to tell unsupported cases apart.
    recording: Option<&'a Recording<'a>>,
}

impl Ctx<'_> {
    /// Whether the backend lists (op, dtype); prints a skip line when it does not.
    pub fn supports(&self, op: Op, dtype: DType) -> bool {
        let yes = self.info.supports(op, dtype);
        if !yes {
            println!(
                "skipped: unsupported: backend `{}` does not list {op} {dtype}",
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
    /// Panics with proptest's minimal failing input. With `allow_unsupported`, a case in
    /// which the backend returned `Unsupported` is rejected; if proptest gives up for too
    /// many rejects the property prints `skipped: unsupported: ..` and passes.
    pub fn check_property<S: proptest::strategy::Strategy>(
        &self,
        name: &str,
        strategy: S,
        test: impl Fn(S::Value) -> std::result::Result<(), String>,
    ) {
        use proptest::test_runner::{TestCaseError, TestError, TestRunner};
        let (passed, rejected, reason) = (Cell::new(0u32), Cell::new(0u32), RefCell::new(None));
        let mut runner = TestRunner::new(self.proptest_config());
        let result = runner.run(&strategy, |value| {
            // Some properties panic (through the case helpers) rather than return Err.
            let outcome = catch_unwind(AssertUnwindSafe(|| test(value)));
            if let Some(why) = self.recording.and_then(Recording::take) {
                rejected.set(rejected.get() + 1);
                return Err(TestCaseError::reject(
                    reason.borrow_mut().insert(why).clone(),
                ));
            }
            let result = outcome.unwrap_or_else(|panic| resume_unwind(panic));
            passed.set(passed.get() + u32::from(result.is_ok()));
            result.map_err(TestCaseError::fail)
        });
        if rejected.get() > 0 {
            let (passed, rejected) = (passed.get(), rejected.get());
            let why = reason.borrow().clone().unwrap_or_default();
            if let Err(TestError::Abort(_)) = result {
                println!(
                    "skipped: unsupported: {why} ({rejected} cases rejected, {passed} passed)"
                );
                return;
            }
            println!("note: {rejected} cases rejected as unsupported ({why}), {passed} passed");
        }
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
