//! The stable plugin ABI between the Karta host and harness drivers.
//!
//! This crate is the whole contract a driver is built against, and nothing else: the payload
//! types ([`types`], [`sandbox`], [`handshake`]), the [`Driver`] trait a driver implements, and
//! [`export_driver!`], which turns a driver into a plugin library. Helpers for writing drivers
//! (process handling, the sandbox launcher, frontmatter parsing, a conformance suite) live in
//! `karta-driver-kit`, so that changing a helper never changes the ABI.
//!
//! Two layers:
//!
//! * [`ffi`]: the small `abi_stable` surface that crosses the library boundary (the
//!   [`ffi::DriverModule`] root module and three trait objects). Payloads travel as JSON, so the
//!   binary surface rarely changes.
//! * [`Driver`], [`Sink`] and the payload types: ordinary typed Rust on both sides.
//!
//! The crate's version is the ABI's version (`1.1.0`): a plugin built against any `1.x` loads on
//! a host built against any other `1.y`. `COMPATIBILITY.md` says what may change within a major
//! version and how; `docs/write-a-driver.md` goes from `cargo new` to a running turn.
#![deny(missing_docs)]

pub mod driver;
pub mod ffi;
pub mod handshake;
pub mod sandbox;
pub mod types;

pub use abi_stable;
pub use driver::{into_ffi, Driver, DriverFactory, HostDriver, HostTurn, Sink, Turn};
pub use handshake::{Capabilities, DriverInfo, HostContext, HostInfo};
pub use types::*;

/// The ABI version this crate defines (its own crate version).
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ABI's major version. A plugin and a host of the same major work together; the root
/// module reports it so a mismatch is refused before anything else is called.
pub const ABI_MAJOR: u32 = 1;

/// Version of the JSON payloads (turn requests, events, decisions). Every payload carries it as
/// `v`; it changes only with [`ABI_MAJOR`]. Readers accept any `v` of their major and ignore
/// fields they do not know.
pub const PAYLOAD_VERSION: u32 = 1;

/// Exports a driver from a `cdylib` so the Karta host can load it.
///
/// `$driver` is a type implementing [`Driver`]. The host first calls [`Driver::describe`] (to
/// validate the settings a user gave against [`DriverInfo::settings_schema`]), then
/// [`Driver::new`] with the host context and those settings.
///
/// ```ignore
/// karta_driver_api::export_driver!(MyDriver);
/// ```
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        #[$crate::abi_stable::export_root_module]
        pub fn karta_driver_root_module() -> $crate::ffi::DriverModuleRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn abi_major() -> u32 {
                $crate::ABI_MAJOR
            }
            // Expanded in the plugin's crate: `CARGO_PKG_VERSION` is the driver's own version.
            extern "C" fn describe(
                host_info_json: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<
                $crate::abi_stable::std_types::RString,
                $crate::abi_stable::std_types::RString,
            > {
                $crate::driver::ffi_describe::<$driver>(
                    host_info_json.as_str(),
                    env!("CARGO_PKG_VERSION"),
                )
            }
            extern "C" fn new_driver(
                context_json: $crate::abi_stable::std_types::RStr<'_>,
                settings_json: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<
                $crate::ffi::HarnessDriverBox,
                $crate::abi_stable::std_types::RString,
            > {
                $crate::driver::ffi_construct::<$driver>(
                    context_json.as_str(),
                    settings_json.as_str(),
                )
            }
            $crate::ffi::DriverModule {
                abi_major,
                describe,
                new_driver,
            }
            .leak_into_prefix()
        }
    };
}
