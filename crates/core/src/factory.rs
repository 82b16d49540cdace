//! How a backend crate (or a loaded plugin) announces itself to moemla's registry.

use crate::{Backend, Result, Verification};
use std::fmt;
use std::sync::Arc;

/// The function that opens a backend: `Err(Error::Unavailable)` says why it cannot run here.
pub type OpenFn = dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync;

/// One backend as the registry sees it: its name, how to open it, and how its maker claims
/// it has been verified (known even where it cannot run here).
///
/// Every backend crate exports one (`moemla_cpu::factory()`, ...); a vendor's own crate does
/// the same, and the `moemla` command line takes a list of them, so a new backend never
/// needs an edit to moemla's crates.
#[derive(Clone)]
pub struct BackendFactory {
    name: String,
    claimed: Verification,
    open: Arc<OpenFn>,
}

impl BackendFactory {
    /// A factory named `name` (the backend's [`Backend::name`]) with its claimed
    /// verification and the function that opens it.
    pub fn new(
        name: impl Into<String>,
        claimed: Verification,
        open: impl Fn() -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory {
            name: name.into(),
            claimed,
            open: Arc::new(open),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the backend's maker says it has been verified: a claim, not a measurement.
    pub fn claimed_verification(&self) -> &Verification {
        &self.claimed
    }

    /// Opens the backend (probing its SDK, driver and device). Never panics.
    pub fn open(&self) -> Result<Arc<dyn Backend>> {
        (self.open)()
    }
}

impl fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendFactory")
            .field("name", &self.name)
            .field("claimed", &self.claimed)
            .finish_non_exhaustive()
    }
}
