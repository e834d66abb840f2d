//! The raw `abi_stable` surface. Driver authors normally use [`crate::driver`] instead.
#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString},
    StableAbi,
};

/// Implemented by the host: receives the driver's events as versioned JSON ([`crate::Event`]).
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

/// The root module every driver plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverModuleRef)))]
#[sabi(missing_field(panic))]
pub struct DriverModule {
    /// Must return [`crate::ABI_VERSION`] of the plugin-api the plugin was built with.
    pub abi_version: extern "C" fn() -> u32,
    /// Builds the driver from its JSON settings.
    #[sabi(last_prefix_field)]
    pub new_driver: extern "C" fn(settings_json: RStr<'_>) -> RResult<HarnessDriverBox, RString>,
    /// The driver's own version (its crate's version). Added after the first release of ABI 1:
    /// a plugin built before it has none, and the host reports the version as unknown.
    #[sabi(missing_field(option))]
    pub driver_version: extern "C" fn() -> RString,
}

impl RootModule for DriverModuleRef {
    declare_root_module_statics! {DriverModuleRef}
    const BASE_NAME: &'static str = "karta_driver";
    const NAME: &'static str = "karta_driver";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
