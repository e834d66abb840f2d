//! The ACP driver as a drop-in plugin library (the root symbol lives here so the host can link
//! the driver's rlib beside the other drivers).

karta_driver_api::export_driver!(karta_driver_acp::AcpDriver);
