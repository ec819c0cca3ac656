//! The pod workers: one task per pod, turning the pod the cache holds into sandboxes and
//! containers over the runtime.
