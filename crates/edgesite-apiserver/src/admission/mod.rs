//! Admission as one chain, as kube-apiserver runs it: every plugin's mutating phase in order,
//! then every plugin's validating phase, on each create, update and delete the generic write
//! path makes. A plugin is a file here and one line in [`AdmissionChain::standard`].
//!
//! Plugins may reserve something while mutating (the Service allocator takes IPs and ports);
//! they record it in [`Reservations`], which the chain hands back to them to release when the
//! write fails or is refused ([`AdmissionChain::rollback`]), and they hear about writes that
//! were stored ([`AdmissionChain::committed`]) to release what the old object held.

mod defaulting;
mod namespace_lifecycle;
mod service_allocation;
mod validation;

use std::sync::Arc;

use async_trait::async_trait;
use edgesite_api::registry::ResourceInfo;
use edgesite_api::status::ApiError;
use edgesite_store::Store;
use serde_json::Value;

use crate::allocator::{Claims, ServiceAllocator};

pub use defaulting::Defaulting;
pub use namespace_lifecycle::NamespaceLifecycle;
pub use service_allocation::ServiceAllocation;
pub use validation::Validation;

/// What a request does to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A replacement (update, patch, apply) of the main resource.
    Update,
    /// A replacement through the `status` subresource: only `status` changes.
    UpdateStatus,
    /// A deletion.
    Delete,
}

/// The request an admission plugin looks at (upstream's `admission.Attributes`).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The resource.
    pub r: &'static ResourceInfo,
    /// The namespace of the object, for namespaced resources.
    pub namespace: Option<&'a str>,
    /// The object's name (empty for a create with `generateName`, before it is named).
    pub name: &'a str,
    /// What the request does.
    pub operation: Operation,
    /// The stored object, for updates and deletes.
    pub old: Option<&'a Value>,
    /// `dryRun=All`: decide, but keep nothing.
    pub dry_run: bool,
    /// Who asks; `None` for the server's own writes (seeding, bootstrap policy).
    pub user: Option<&'a crate::authn::Identity>,
}

/// What plugins took while admitting one write attempt, released if the write fails.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Service IP and node port keys created for this attempt.
    service_keys: Option<Claims>,
}

/// A write the store accepted, as plugins hear of it.
#[derive(Debug, Clone, Copy)]
pub enum Committed<'a> {
    /// `new` replaced `old`.
    Updated {
        /// The object before.
        old: &'a Value,
        /// The object stored.
        new: &'a Value,
    },
    /// `old` was removed.
    Deleted {
        /// The removed object.
        old: &'a Value,
    },
}

/// One admission plugin. Every method has a default that admits and does nothing, so a
/// plugin implements only the phases it takes part in.
#[async_trait]
pub trait AdmissionPlugin: Send + Sync + std::fmt::Debug {
    /// The plugin's name, as upstream's `--enable-admission-plugins` spells it.
    fn name(&self) -> &'static str;

    /// The mutating phase: may change `obj` and reserve things in `reserved`.
    async fn admit(
        &self,
        _a: &Attributes<'_>,
        _obj: &mut Value,
        _reserved: &mut Reservations,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// The validating phase: `obj` is final (`None` for deletes).
    async fn validate(&self, _a: &Attributes<'_>, _obj: Option<&Value>) -> Result<(), ApiError> {
        Ok(())
    }

    /// Releases what this plugin reserved for a write that did not happen.
    async fn rollback(&self, _reserved: &mut Reservations) {}

    /// Hears of a write the store accepted (for resource `r`).
    async fn committed(&self, _r: &ResourceInfo, _write: Committed<'_>) {}
}

/// The plugins in the order they run.
#[derive(Debug, Default)]
pub struct AdmissionChain {
    plugins: Vec<Box<dyn AdmissionPlugin>>,
}

impl AdmissionChain {
    /// A chain of `plugins`, run in this order.
    pub fn new(plugins: Vec<Box<dyn AdmissionPlugin>>) -> Self {
        Self { plugins }
    }

    /// The server's chain, in upstream's order; the RBAC escalation check (upstream's RBAC
    /// registry, which runs before admission there) comes last, on the final object.
    pub fn standard(
        store: Arc<dyn Store>,
        services: Arc<ServiceAllocator>,
        rbac: Arc<crate::rbac::RbacAuthorizer>,
        authorizer: Arc<dyn crate::authz::Authorizer>,
    ) -> Self {
        Self::new(vec![
            Box::new(NamespaceLifecycle::new(store)),
            Box::new(Defaulting),
            Box::new(ServiceAllocation::new(services)),
            Box::new(Validation),
            Box::new(crate::rbac::RbacEscalation::new(rbac, authorizer)),
        ])
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Runs the mutating phase of every plugin over `obj`. On failure what was reserved is
    /// released before the error is returned.
    pub async fn admit(
        &self,
        a: &Attributes<'_>,
        obj: &mut Value,
    ) -> Result<Reservations, ApiError> {
        let mut reserved = Reservations::default();
        for p in &self.plugins {
            if let Err(e) = p.admit(a, obj, &mut reserved).await {
                self.rollback(reserved).await;
                return Err(e);
            }
        }
        Ok(reserved)
    }

    /// Runs the validating phase of every plugin; on failure releases `reserved` (what the
    /// mutating phase took for this write) before returning the error.
    pub async fn validate(
        &self,
        a: &Attributes<'_>,
        obj: Option<&Value>,
        reserved: Reservations,
    ) -> Result<Reservations, ApiError> {
        for p in &self.plugins {
            if let Err(e) = p.validate(a, obj).await {
                self.rollback(reserved).await;
                return Err(e);
            }
        }
        Ok(reserved)
    }

    /// Releases what the plugins reserved for a write that did not happen.
    pub async fn rollback(&self, mut reserved: Reservations) {
        for p in &self.plugins {
            p.rollback(&mut reserved).await;
        }
    }

    /// Tells every plugin of a write the store accepted.
    pub async fn committed(&self, r: &ResourceInfo, write: Committed<'_>) {
        for p in &self.plugins {
            p.committed(r, write).await;
        }
    }
}

#[cfg(test)]
mod tests;
