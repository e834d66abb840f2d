//! The stable plugin boundary between the Karta host and harness drivers.
//!
//! Two layers live here:
//!
//! * [`ffi`]: the tiny `abi_stable` surface that actually crosses a dynamic-library boundary
//!   (`DriverModule` root module, `HarnessDriver`, `TurnHandle`, `EventSink`). Payloads travel as
//!   versioned JSON strings so the ABI stays small and rarely changes.
//! * [`types`] and [`driver`]: ordinary typed Rust for driver authors. Implement [`Driver`],
//!   export it with [`export_driver!`], and emit typed [`Event`]s through a [`Sink`]. The host uses
//!   the same types on its side.

pub mod cli;
pub mod driver;
pub mod ffi;
pub mod markdown;
pub mod process;
pub mod sandbox;
pub mod types;

pub use abi_stable;
pub use driver::{into_ffi, Driver, HostDriver, HostTurn, Sink, Turn};
pub use types::*;

/// Version of the plugin ABI. The host refuses a plugin that reports another value.
pub const ABI_VERSION: u32 = 1;

/// Version of the JSON payloads (turn requests, events, decisions) exchanged over the ABI.
pub const PAYLOAD_VERSION: u32 = 1;

/// Exports a driver from a `cdylib` so the Karta host can load it.
///
/// `$ctor` is a `fn(&serde_json::Value) -> Result<D, String>` where `D: Driver`; it receives the
/// `settings` table of the matching `[[drivers]]` entry (an empty object when there is none).
///
/// ```ignore
/// karta_plugin_api::export_driver!(MyDriver::from_settings);
/// ```
#[macro_export]
macro_rules! export_driver {
    ($ctor:path) => {
        #[$crate::abi_stable::export_root_module]
        pub fn karta_driver_root_module() -> $crate::ffi::DriverModuleRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn abi_version() -> u32 {
                $crate::ABI_VERSION
            }
            extern "C" fn new_driver(
                settings_json: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<
                $crate::ffi::HarnessDriverBox,
                $crate::abi_stable::std_types::RString,
            > {
                $crate::driver::construct(settings_json.as_str(), $ctor)
            }
            // Expanded in the plugin's crate: its own version.
            extern "C" fn driver_version() -> $crate::abi_stable::std_types::RString {
                env!("CARGO_PKG_VERSION").into()
            }
            $crate::ffi::DriverModule {
                abi_version,
                new_driver,
                driver_version,
            }
            .leak_into_prefix()
        }
    };
}
