//! The raw `abi_stable` surface. Driver authors use [`crate::Driver`] and
//! [`crate::export_driver!`] instead; the host uses [`crate::DriverFactory`].
//!
//! Growth rules (see `COMPATIBILITY.md`): a root-module field or trait method added after 1.0
//! goes after the `last_prefix_field`, and the root module reads missing fields as `None`
//! (`missing_field(option)`), so an older plugin still loads on a newer host.
#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString},
    StableAbi,
};

/// Implemented by the host: receives the driver's events as JSON ([`crate::Event`]).
#[sabi_trait]
pub trait EventSink: Send + Sync {
    /// Delivers one event. Never blocks for long; safe to call from any thread.
    #[sabi(last_prefix_field)]
    fn emit(&self, event_json: RStr<'_>);
}

/// An owned, type-erased [`EventSink`].
pub type EventSinkBox = EventSink_TO<'static, RBox<()>>;

/// Implemented by the driver: one running turn.
#[sabi_trait]
pub trait TurnHandle: Send + Sync {
    /// Answers an `input_required` request with a JSON [`crate::Decision`].
    fn resolve_input(&self, request_id: RStr<'_>, decision_json: RStr<'_>) -> RResult<(), RString>;
    /// Asks the turn to stop; the driver still ends it with `done` (status `cancelled`).
    #[sabi(last_prefix_field)]
    fn cancel(&self);
}

/// An owned, type-erased [`TurnHandle`].
pub type TurnHandleBox = TurnHandle_TO<'static, RBox<()>>;

/// Implemented by the driver: one harness kind (Claude Code, OpenCode, ...).
#[sabi_trait]
pub trait HarnessDriver: Send + Sync {
    /// The name projects select it by (`harness = "..."`).
    fn name(&self) -> RString;
    /// How strongly this driver claims the harness-app folder (0 = not at all).
    fn detect(&self, app_dir: RStr<'_>) -> u32;
    /// Agents and skills of the app, as JSON [`crate::Discovery`].
    fn discover(&self, app_dir: RStr<'_>) -> RResult<RString, RString>;
    /// Starts a turn from a JSON [`crate::TurnRequest`]; events go to `sink`.
    fn start_turn(
        &self,
        request_json: RStr<'_>,
        sink: EventSinkBox,
    ) -> RResult<TurnHandleBox, RString>;
    /// The session is closed: stop its harness process and free what it holds.
    #[sabi(last_prefix_field)]
    fn end_session(&self, session_id: RStr<'_>);
}

/// An owned, type-erased [`HarnessDriver`].
pub type HarnessDriverBox = HarnessDriver_TO<'static, RBox<()>>;

/// The root module every driver plugin exports (through [`crate::export_driver!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverModuleRef)))]
#[sabi(missing_field(option))]
pub struct DriverModule {
    /// The plugin's [`crate::ABI_MAJOR`]; the host refuses another before calling anything else.
    pub abi_major: extern "C" fn() -> u32,
    /// The handshake's first half: host info ([`crate::HostInfo`] JSON) in, driver info
    /// ([`crate::DriverInfo`] JSON) out. Called before the driver exists, to validate settings.
    pub describe: extern "C" fn(host_info_json: RStr<'_>) -> RResult<RString, RString>,
    /// Builds the driver from the host context ([`crate::HostContext`] JSON) and the user's
    /// settings (a JSON object, already checked against the driver's schema).
    #[sabi(last_prefix_field)]
    pub new_driver: extern "C" fn(
        context_json: RStr<'_>,
        settings_json: RStr<'_>,
    ) -> RResult<HarnessDriverBox, RString>,
}

impl RootModule for DriverModuleRef {
    declare_root_module_statics! {DriverModuleRef}
    const BASE_NAME: &'static str = "karta_driver";
    const NAME: &'static str = "karta_driver";
    // This crate's version, which is the ABI's (not the product's).
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
