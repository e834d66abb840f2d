//! The OpenCode driver as a drop-in plugin library.
//!
//! The plugin root symbol lives here, in a crate of its own, and not in the driver crate: the host
//! links the driver's rlib, and a root symbol there would collide with the other linked-in drivers'
//! when the release binary is linked.

karta_driver_api::export_driver!(karta_driver_opencode::OpenCodeDriver);
