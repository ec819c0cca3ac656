//! The Service ClusterIP and NodePort allocator as an admission plugin: on create and on
//! update of a Service it drops what the new type no longer needs and takes the IP and ports
//! the Service asks for or needs (one store key each, see [`crate::allocator`]). Keys taken
//! for a write that fails are released ([`AdmissionPlugin::rollback`]); once a write is
//! stored, what the old object held and the new one does not is released. Dry runs take
//! nothing.

use std::sync::Arc;

use async_trait::async_trait;
use edgesite_api::registry::ResourceInfo;
use edgesite_api::status::ApiError;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Committed, Operation, Reservations};
use crate::allocator::ServiceAllocator;

/// Allocates Service IPs and node ports.
#[derive(Debug)]
pub struct ServiceAllocation {
    services: Arc<ServiceAllocator>,
}

impl ServiceAllocation {
    /// The plugin over `services`.
    pub fn new(services: Arc<ServiceAllocator>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl AdmissionPlugin for ServiceAllocation {
    fn name(&self) -> &'static str {
        "ServiceAllocation"
    }

    async fn admit(
        &self,
        a: &Attributes<'_>,
        obj: &mut Value,
        reserved: &mut Reservations,
    ) -> Result<(), ApiError> {
        let claims = match (a.operation, a.old) {
            (Operation::Create, _) => self.services.admit_create(a.r, obj, a.dry_run).await?,
            (Operation::Update, Some(old)) => {
                ServiceAllocator::drop_type_dependent_fields(a.r, old, obj);
                self.services.admit_update(a.r, old, obj, a.dry_run).await?
            }
            _ => return Ok(()),
        };
        if let Some(earlier) = reserved.service_keys.replace(claims) {
            // One allocation per attempt; should a second come, neither is lost.
            self.services.rollback(earlier).await;
        }
        Ok(())
    }

    async fn rollback(&self, reserved: &mut Reservations) {
        if let Some(claims) = reserved.service_keys.take() {
            self.services.rollback(claims).await;
        }
    }

    async fn committed(&self, r: &ResourceInfo, write: Committed<'_>) {
        match write {
            Committed::Updated { old, new } => self.services.release_replaced(r, old, new).await,
            Committed::Deleted { old } => self.services.release(r, old).await,
        }
    }
}
