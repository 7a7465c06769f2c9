//! The [`Getter`] a start receives: a snapshot of its declared inputs, taken when the engine
//! asked for the start, that hands out the outputs of the inputs that were running then.
//!
//! Why a snapshot: the engine restarts a manifold whenever one of its inputs starts or stops,
//! so a start only needs to see one consistent picture; the next picture comes with the next
//! start. The getter expires when the start returns, because a worker that kept it would be
//! reading a picture the engine no longer vouches for.

use std::any::{type_name, Any};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::worker::WorkerError;

/// A manifold's output, type-erased: given the running worker (as `Any`), the value offered to
/// dependents, or `None` when the worker is not of the type the output was declared for.
pub(crate) type OutputFn =
    Arc<dyn Fn(&(dyn Any + Send + Sync)) -> Option<Box<dyn Any + Send>> + Send + Sync>;

/// What the snapshot holds for one running input: its worker and its manifold's output.
#[derive(Clone)]
pub(crate) struct Exposure {
    pub(crate) worker: Arc<dyn Any + Send + Sync>,
    pub(crate) output: Option<OutputFn>,
}

/// Why [`Getter::get`] or [`Getter::ensure_running`] gave nothing.
///
/// The first three kinds mean "not available now" and convert into
/// [`WorkerError::Missing`] with `?`, so a start that needs an input just writes
/// `getter.get::<T>("name")?` and the engine retries it when the input changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    /// The name is not among the manifold's declared inputs.
    #[error("{input:?} not declared")]
    NotDeclared {
        /// The name asked for.
        input: String,
    },
    /// The input is declared but had no running worker when the start was requested.
    #[error("{input:?} not running")]
    NotRunning {
        /// The name asked for.
        input: String,
    },
    /// The input is running but its manifold has no output.
    #[error("{input:?} not exposed")]
    NotExposed {
        /// The name asked for.
        input: String,
    },
    /// The input's output is not a value of the requested type.
    #[error("{input:?} does not offer a {requested}")]
    WrongType {
        /// The name asked for.
        input: String,
        /// The type asked for.
        requested: &'static str,
    },
    /// The input's output was declared for a different worker type than the one its start
    /// returned: a bug in that manifold.
    #[error("the output of {input:?} was declared for another worker type")]
    OutputMismatch {
        /// The name asked for.
        input: String,
    },
    /// The getter was used after the start it was given to had returned.
    #[error("expired getter: {input:?} asked for outside the start of {manifold:?}")]
    Expired {
        /// The manifold the getter was given to.
        manifold: String,
        /// The name asked for.
        input: String,
    },
}

impl GetError {
    /// True for the kinds that mean "not available now" (not declared, not running, not
    /// exposed).
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            Self::NotDeclared { .. } | Self::NotRunning { .. } | Self::NotExposed { .. }
        )
    }
}

impl From<GetError> for WorkerError {
    fn from(error: GetError) -> Self {
        if error.is_missing() {
            WorkerError::Missing(error.to_string())
        } else {
            WorkerError::failed(error)
        }
    }
}

/// Access to a manifold's inputs during its start.
///
/// Cheap to clone; every clone shares the snapshot and expires with it.
#[derive(Clone)]
pub struct Getter {
    snapshot: Arc<Snapshot>,
}

struct Snapshot {
    manifold: String,
    inputs: HashMap<String, Option<Exposure>>,
    expired: AtomicBool,
}

impl Getter {
    /// A snapshot for `manifold`: each declared input with its exposure if it was running.
    pub(crate) fn new(
        manifold: &str,
        inputs: impl IntoIterator<Item = (String, Option<Exposure>)>,
    ) -> Self {
        Self {
            snapshot: Arc::new(Snapshot {
                manifold: manifold.to_owned(),
                inputs: inputs.into_iter().collect(),
                expired: AtomicBool::new(false),
            }),
        }
    }

    /// Ends the getter's life: called by the engine when the start returns or is abandoned.
    pub(crate) fn expire(&self) {
        self.snapshot.expired.store(true, Ordering::Release);
    }

    /// Checks that `input` is declared and was running, without asking for its output (which
    /// it may not have): for inputs that are flags or that only order starts.
    pub fn ensure_running(&self, input: &str) -> Result<(), GetError> {
        self.running(input).map(|_| ())
    }

    /// The output of `input` as a `T`.
    ///
    /// Each call asks the input's output afresh, so it returns an owned value (a handle, a
    /// client, an `Arc`).
    pub fn get<T: 'static>(&self, input: &str) -> Result<T, GetError> {
        let exposure = self.running(input)?;
        let output = exposure
            .output
            .as_ref()
            .ok_or_else(|| GetError::NotExposed {
                input: input.to_owned(),
            })?;
        let value = output(&*exposure.worker).ok_or_else(|| GetError::OutputMismatch {
            input: input.to_owned(),
        })?;
        value
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|_| GetError::WrongType {
                input: input.to_owned(),
                requested: type_name::<T>(),
            })
    }

    fn running(&self, input: &str) -> Result<&Exposure, GetError> {
        if self.snapshot.expired.load(Ordering::Acquire) {
            return Err(GetError::Expired {
                manifold: self.snapshot.manifold.clone(),
                input: input.to_owned(),
            });
        }
        match self.snapshot.inputs.get(input) {
            None => Err(GetError::NotDeclared {
                input: input.to_owned(),
            }),
            Some(None) => Err(GetError::NotRunning {
                input: input.to_owned(),
            }),
            Some(Some(exposure)) => Ok(exposure),
        }
    }
}

impl fmt::Debug for Getter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut running: Vec<_> = self
            .snapshot
            .inputs
            .iter()
            .filter(|(_, exposure)| exposure.is_some())
            .map(|(name, _)| name.as_str())
            .collect();
        running.sort_unstable();
        f.debug_struct("Getter")
            .field("manifold", &self.snapshot.manifold)
            .field("running", &running)
            .field("expired", &self.snapshot.expired.load(Ordering::Acquire))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposing(value: u32) -> Exposure {
        let output: OutputFn = Arc::new(|worker| {
            worker
                .downcast_ref::<u32>()
                .map(|n| Box::new(*n) as Box<dyn Any + Send>)
        });
        Exposure {
            worker: Arc::new(value),
            output: Some(output),
        }
    }

    #[test]
    fn missing_kinds_become_worker_missing() {
        let getter = Getter::new("b", [("a".to_owned(), None)]);
        let error: WorkerError = getter.get::<u32>("a").unwrap_err().into();
        assert_eq!(
            error.to_string(),
            "\"a\" not running: dependency not available"
        );
        assert!(error.is_missing());
    }

    #[test]
    fn output_is_downcast_to_the_requested_type() {
        let getter = Getter::new("b", [("a".to_owned(), Some(exposing(7)))]);
        assert_eq!(getter.get::<u32>("a"), Ok(7));
        assert!(matches!(
            getter.get::<String>("a"),
            Err(GetError::WrongType { .. })
        ));
    }

    #[test]
    fn expired_getter_refuses_everything() {
        let getter = Getter::new("b", [("a".to_owned(), Some(exposing(7)))]);
        getter.expire();
        assert!(matches!(
            getter.ensure_running("a"),
            Err(GetError::Expired { .. })
        ));
    }
}
