//! The one read-modify-write of the handlers (upstream's `GuaranteedUpdate`): read the
//! object, let the caller decide what to write, write guarded by the read's revision, and
//! start again when someone else wrote in between. What admission reserved for an attempt
//! that is not stored is released; stored writes are announced to the admission chain.

use async_trait::async_trait;
use edgesite_api::registry::ResourceInfo;
use edgesite_api::status::{ApiError, OPTIMISTIC_LOCK_MESSAGE};
use edgesite_store::{Error as StoreError, Revision};
use serde_json::Value;

use super::ApiState;
use crate::admission::{Committed, Reservations};
use crate::storage::{self, decode, encode};

/// How many times a write is tried against concurrent writers before the 409.
const ATTEMPTS: usize = 16;

/// What one attempt decides for the current object.
#[derive(Debug)]
pub enum Step {
    /// Write nothing (no change, a dry run, a refusal the caller answers itself); the answer
    /// is this object.
    Answer(Value),
    /// Replace the object.
    Update(Value),
    /// Remove the object; the answer is this object.
    Delete(Value),
}

/// A [`Step`] with what admission reserved for it.
#[derive(Debug)]
pub struct Attempt {
    /// The decision.
    pub step: Step,
    /// Released when the step is not stored.
    pub reserved: Reservations,
}

impl From<Step> for Attempt {
    fn from(step: Step) -> Self {
        Self {
            step,
            reserved: Reservations::default(),
        }
    }
}

/// The outcome of a [`guaranteed_update`].
#[derive(Debug)]
pub struct Outcome {
    /// The object written, removed or answered.
    pub object: Value,
    /// The revision of the write; `None` when nothing was written.
    pub revision: Option<Revision>,
    /// Whether the object was removed.
    pub removed: bool,
}

/// Decides, for the current object and its revision, what one attempt writes.
#[async_trait]
pub trait TryUpdate: Send {
    /// The decision for `current`, read at `revision`.
    async fn attempt(&mut self, current: &Value, revision: Revision) -> Result<Attempt, ApiError>;
}

/// A decision that needs no awaiting (no admission): a plain closure.
pub struct Decide<F>(pub F);

#[async_trait]
impl<F> TryUpdate for Decide<F>
where
    F: FnMut(&Value, Revision) -> Result<Step, ApiError> + Send,
{
    async fn attempt(&mut self, current: &Value, revision: Revision) -> Result<Attempt, ApiError> {
        (self.0)(current, revision).map(Attempt::from)
    }
}

/// The object at `key` (`name` of `r`), read, passed with its revision to `decide`, and
/// written as it decides, until no concurrent write gets in between. Not found: 404.
pub async fn guaranteed_update(
    state: &ApiState,
    r: &'static ResourceInfo,
    name: &str,
    key: &str,
    decide: &mut dyn TryUpdate,
) -> Result<Outcome, ApiError> {
    for _ in 0..ATTEMPTS {
        let kv = state
            .storage
            .store
            .get(key.as_bytes())
            .await
            .map_err(storage::store_error)?
            .ok_or_else(|| ApiError::not_found(r, name))?;
        let current = decode(&kv, kv.mod_revision)?;
        let Attempt { step, reserved } = decide.attempt(&current, kv.mod_revision).await?;
        match write(state, r, key, &current, kv.mod_revision, step, reserved).await {
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(ApiError::not_found(r, name)),
            Err(e) => return Err(storage::store_error(e)),
            Ok(outcome) => return Ok(outcome),
        }
    }
    Err(ApiError::conflict_with(r, name, OPTIMISTIC_LOCK_MESSAGE))
}

/// Stores `step` over `current` (read at `revision`); releases `reserved` unless an update
/// is stored.
async fn write(
    state: &ApiState,
    r: &'static ResourceInfo,
    key: &str,
    current: &Value,
    revision: Revision,
    step: Step,
    reserved: Reservations,
) -> Result<Outcome, StoreError> {
    let store = &state.storage.store;
    let admission = &state.admission;
    match step {
        Step::Answer(object) => {
            admission.rollback(reserved).await;
            Ok(Outcome {
                object,
                revision: None,
                removed: false,
            })
        }
        Step::Delete(object) => {
            // Nothing a removed object took stays taken.
            admission.rollback(reserved).await;
            let (_, rev) = store.delete(key.as_bytes(), Some(revision)).await?;
            let write = Committed::Deleted { old: current };
            admission.committed(r, write).await;
            Ok(Outcome {
                object,
                revision: Some(rev),
                removed: true,
            })
        }
        Step::Update(object) => {
            let written = store
                .update(key.as_bytes(), encode(&object), revision, 0)
                .await;
            let rev = match written {
                Ok(rev) => rev,
                Err(e) => {
                    admission.rollback(reserved).await;
                    return Err(e);
                }
            };
            let write = Committed::Updated {
                old: current,
                new: &object,
            };
            admission.committed(r, write).await;
            Ok(Outcome {
                object,
                revision: Some(rev),
                removed: false,
            })
        }
    }
}
