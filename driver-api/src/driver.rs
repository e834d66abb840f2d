//! Typed driver authoring on top of [`crate::ffi`], and the host's typed view of a loaded driver.
//!
//! # Threading and ownership
//!
//! * The host may call any method from any thread, concurrently: a driver is `Send + Sync`.
//! * [`Driver::start_turn`] returns quickly; the turn's events come from threads the driver
//!   owns. The [`Sink`] may be cloned and used from any of them; the host stops listening once it
//!   has seen `done`, and the turn is over for the host when the driver drops every clone.
//! * Every turn ends with exactly one `done` event, also after a cancel or a crash.
//! * [`Turn::cancel`] and [`Turn::resolve_input`] may arrive at any time, also after `done`
//!   (then they do nothing).
//! * A panic in driver code never crosses the boundary: it becomes an error (or, inside a turn,
//!   the host ends the turn as failed when the sink is dropped without `done`).
//! * The host keeps a plugin library loaded for the life of the process, and keeps a driver
//!   object alive while any turn started on it runs (a rebuilt driver serves only new turns).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};
use serde_json::Value;

use crate::ffi::DriverModuleRef;
use crate::ffi::{
    EventSink, EventSinkBox, EventSink_TO, HarnessDriver, HarnessDriverBox, HarnessDriver_TO,
    TurnHandle, TurnHandleBox, TurnHandle_TO,
};
use crate::handshake::{DriverInfo, HostContext, HostInfo};
use crate::types::{Decision, Discovery, Event, EventKind, TurnRequest};

/// A harness driver, written as ordinary Rust. Export it with [`crate::export_driver!`], or hand
/// it to the host in-process with [`DriverFactory::linked`].
///
/// Drivers own their threads and subprocesses: `start_turn` must return quickly and produce the
/// turn's events from a thread of its own (see the module docs for the whole contract).
pub trait Driver: Send + Sync + 'static {
    /// What the driver is: name, capabilities and the JSON Schema of its settings. Called before
    /// the driver exists; must not fail or block.
    fn describe(host: &HostInfo) -> DriverInfo
    where
        Self: Sized;
    /// Builds the driver. `settings` is the `[[drivers]] settings` object, already valid against
    /// the schema [`Driver::describe`] gave; `ctx` is what the host adds (its data folder).
    fn new(ctx: &HostContext, settings: &Value) -> Result<Self, String>
    where
        Self: Sized;
    /// The name projects select it by.
    fn name(&self) -> String;
    /// How strongly this driver claims `app_dir` (0 = not at all; the highest score wins).
    fn detect(&self, app_dir: &Path) -> u32;
    /// Agents and skills found in `app_dir`; a malformed file is an `Err` naming it.
    fn discover(&self, app_dir: &Path) -> Result<Discovery, String>;
    /// Starts a turn. Every turn ends with exactly one `done` event on `sink`.
    fn start_turn(&self, request: TurnRequest, sink: Sink) -> Result<Box<dyn Turn>, String>;
    /// The session was closed: stop whatever the driver keeps for it (a warm process, ...).
    fn end_session(&self, _session_id: &str) {}
}

/// A running turn, as seen by its driver.
pub trait Turn: Send + Sync + 'static {
    /// Answers an `input_required` request.
    fn resolve_input(&self, request_id: &str, decision: Decision) -> Result<(), String>;
    /// Stops the turn; the driver still ends it with `done` (status `cancelled`).
    fn cancel(&self);
}

/// Where a driver sends a turn's events. Cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Sink(Arc<EventSinkBox>);

impl Sink {
    /// Sends one event to the host.
    pub fn emit(&self, event: &Event) {
        match serde_json::to_string(event) {
            Ok(json) => self.0.emit(RStr::from_str(&json)),
            // Our own types always serialize; a failure here is a bug worth surfacing as an event.
            Err(e) => self.emit_kind(EventKind::Error(crate::ErrorInfo {
                code: "driver_bug".into(),
                message: format!("event could not be serialized: {e}"),
                provider: None,
            })),
        }
    }

    /// Sends a payload without a raw harness event.
    pub fn emit_kind(&self, kind: EventKind) {
        self.emit(&Event::new(kind));
    }

    /// Sends an event already serialized (`{"v", "type", "data"}`), such as one of a kind newer
    /// than this API: the host forwards a type it does not know as a `custom` event.
    pub fn emit_json(&self, json: &str) {
        self.0.emit(RStr::from_str(json));
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "driver panicked".to_string()
    }
}

/// Runs driver code so that a panic becomes an error instead of unwinding across the ABI.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(format!("panic: {}", panic_message(p))))
}

struct FfiDriver<D>(D);

impl<D: Driver> HarnessDriver for FfiDriver<D> {
    fn name(&self) -> RString {
        guarded(|| Ok(self.0.name())).unwrap_or_default().into()
    }

    fn detect(&self, app_dir: RStr<'_>) -> u32 {
        guarded(|| Ok(self.0.detect(Path::new(app_dir.as_str())))).unwrap_or(0)
    }

    fn discover(&self, app_dir: RStr<'_>) -> RResult<RString, RString> {
        let r = guarded(|| {
            let d = self.0.discover(Path::new(app_dir.as_str()))?;
            serde_json::to_string(&d).map_err(|e| e.to_string())
        });
        match r {
            Ok(s) => ROk(s.into()),
            Err(e) => RErr(e.into()),
        }
    }

    fn start_turn(
        &self,
        request_json: RStr<'_>,
        sink: EventSinkBox,
    ) -> RResult<TurnHandleBox, RString> {
        let r = guarded(|| {
            let req: TurnRequest = serde_json::from_str(request_json.as_str())
                .map_err(|e| format!("invalid turn request: {e}"))?;
            crate::types::check_payload_version(req.v)?;
            let turn = self.0.start_turn(req, Sink(Arc::new(sink)))?;
            Ok(TurnHandle_TO::from_value(FfiTurn(turn), TD_Opaque))
        });
        match r {
            Ok(t) => ROk(t),
            Err(e) => RErr(e.into()),
        }
    }

    fn end_session(&self, session_id: RStr<'_>) {
        let _ = guarded(|| {
            self.0.end_session(session_id.as_str());
            Ok(())
        });
    }
}

struct FfiTurn(Box<dyn Turn>);

impl TurnHandle for FfiTurn {
    fn resolve_input(&self, request_id: RStr<'_>, decision_json: RStr<'_>) -> RResult<(), RString> {
        let r = guarded(|| {
            let d: Decision = serde_json::from_str(decision_json.as_str())
                .map_err(|e| format!("invalid decision: {e}"))?;
            crate::types::check_payload_version(d.v)?;
            self.0.resolve_input(request_id.as_str(), d)
        });
        match r {
            Ok(()) => ROk(()),
            Err(e) => RErr(e.into()),
        }
    }

    fn cancel(&self) {
        let _ = guarded(|| {
            self.0.cancel();
            Ok(())
        });
    }
}

/// Wraps a typed driver in the ABI object the host consumes (in-process or from a plugin).
pub fn into_ffi<D: Driver>(driver: D) -> HarnessDriverBox {
    HarnessDriver_TO::from_value(FfiDriver(driver), TD_Opaque)
}

fn parse_object(json: &str, what: &str) -> Result<Value, String> {
    if json.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(json).map_err(|e| format!("invalid {what}: {e}"))
}

fn to_rresult<T, U: From<T>>(r: Result<T, String>) -> RResult<U, RString> {
    match r {
        Ok(v) => ROk(v.into()),
        Err(e) => RErr(e.into()),
    }
}

/// Used by [`crate::export_driver!`]: runs [`Driver::describe`], panic-safe; an empty version
/// becomes the plugin crate's.
#[doc(hidden)]
pub fn ffi_describe<D: Driver>(
    host_info_json: &str,
    crate_version: &str,
) -> RResult<RString, RString> {
    to_rresult(guarded(|| {
        // A host newer than this API may send fields we do not know; they are ignored.
        let host: HostInfo = serde_json::from_str(host_info_json).unwrap_or_default();
        let mut info = D::describe(&host);
        if info.version.is_empty() {
            info.version = crate_version.to_string();
        }
        serde_json::to_string(&info).map_err(|e| e.to_string())
    }))
}

/// Used by [`crate::export_driver!`]: parses the context and settings and runs
/// [`Driver::new`], panic-safe.
#[doc(hidden)]
pub fn ffi_construct<D: Driver>(
    context_json: &str,
    settings_json: &str,
) -> RResult<HarnessDriverBox, RString> {
    match guarded(|| {
        let ctx: HostContext =
            serde_json::from_str(context_json).map_err(|e| format!("invalid host context: {e}"))?;
        let settings = parse_object(settings_json, "settings")?;
        D::new(&ctx, &settings).map(into_ffi)
    }) {
        Ok(d) => ROk(d),
        Err(e) => RErr(e.into()),
    }
}

/// How the host builds a driver: from a plugin's root module, or from a type linked into the
/// host. Both go through the same handshake.
#[derive(Clone, Copy)]
pub enum DriverFactory {
    /// A loaded plugin's root module (the library stays loaded).
    Module(DriverModuleRef),
    /// A driver type linked into the host.
    Linked {
        /// [`Driver::describe`] of the type.
        describe: fn(&HostInfo) -> DriverInfo,
        /// [`Driver::new`] of the type, wrapped for the host.
        build: fn(&HostContext, &Value) -> Result<HarnessDriverBox, String>,
    },
}

impl DriverFactory {
    /// A plugin's root module, refused unless it speaks this ABI's major version.
    pub fn module(m: DriverModuleRef) -> Result<Self, String> {
        let major = (m.abi_major())();
        if major != crate::ABI_MAJOR {
            return Err(format!(
                "built for plugin ABI {major}.x, this host speaks ABI {}",
                crate::ABI_VERSION
            ));
        }
        Ok(Self::Module(m))
    }

    /// A driver type linked into the host.
    pub fn linked<D: Driver>() -> Self {
        fn build<D: Driver>(
            ctx: &HostContext,
            settings: &Value,
        ) -> Result<HarnessDriverBox, String> {
            guarded(|| D::new(ctx, settings).map(into_ffi))
        }
        Self::Linked {
            describe: D::describe,
            build: build::<D>,
        }
    }

    /// The handshake's first half.
    pub fn describe(&self, host: &HostInfo) -> Result<DriverInfo, String> {
        match self {
            Self::Module(m) => {
                let json = serde_json::to_string(host).map_err(|e| e.to_string())?;
                let out: String = (m.describe())(RStr::from_str(&json)).into_result()?.into();
                serde_json::from_str(&out).map_err(|e| format!("driver returned invalid info: {e}"))
            }
            Self::Linked { describe, .. } => {
                guarded(|| Ok(describe(host))).map_err(|e| format!("describe failed: {e}"))
            }
        }
    }

    /// Builds a driver object from the host context and the user's settings.
    pub fn build(&self, ctx: &HostContext, settings: &Value) -> Result<HostDriver, String> {
        match self {
            Self::Module(m) => {
                let ctx = serde_json::to_string(ctx).map_err(|e| e.to_string())?;
                let settings = serde_json::to_string(settings).map_err(|e| e.to_string())?;
                (m.new_driver())(RStr::from_str(&ctx), RStr::from_str(&settings))
                    .into_result()
                    .map(HostDriver::new)
                    .map_err(Into::into)
            }
            Self::Linked { build, .. } => build(ctx, settings).map(HostDriver::new),
        }
    }
}

/// The host's typed handle on a driver, wherever it came from.
pub struct HostDriver(HarnessDriverBox);

impl HostDriver {
    /// Wraps an ABI driver object.
    pub fn new(inner: HarnessDriverBox) -> Self {
        Self(inner)
    }

    /// The driver's name.
    pub fn name(&self) -> String {
        self.0.name().into()
    }

    /// The driver's claim on `app_dir`.
    pub fn detect(&self, app_dir: &Path) -> u32 {
        self.0.detect(RStr::from_str(&app_dir.to_string_lossy()))
    }

    /// Agents and skills of `app_dir`.
    pub fn discover(&self, app_dir: &Path) -> Result<Discovery, String> {
        let json: String = self
            .0
            .discover(RStr::from_str(&app_dir.to_string_lossy()))
            .into_result()?
            .into();
        serde_json::from_str(&json).map_err(|e| format!("driver returned invalid discovery: {e}"))
    }

    /// Tells the driver a session is closed.
    pub fn end_session(&self, session_id: &str) {
        self.0.end_session(RStr::from_str(session_id));
    }

    /// Starts a turn; `on_event` receives each event (or a decoding error) from the driver's
    /// threads, and is dropped when the driver lets go of the sink.
    pub fn start_turn<F>(&self, request: &TurnRequest, on_event: F) -> Result<HostTurn, String>
    where
        F: Fn(Result<Event, String>) + Send + Sync + 'static,
    {
        let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
        let sink = EventSink_TO::from_value(HostSink(on_event), TD_Opaque);
        let handle = self
            .0
            .start_turn(RStr::from_str(&json), sink)
            .into_result()?;
        Ok(HostTurn(handle))
    }
}

struct HostSink<F>(F);

impl<F: Fn(Result<Event, String>) + Send + Sync + 'static> EventSink for HostSink<F> {
    fn emit(&self, event_json: RStr<'_>) {
        let parsed = crate::types::parse_event(event_json.as_str())
            .map_err(|e| format!("driver sent an invalid event: {e}"));
        (self.0)(parsed);
    }
}

/// The host's typed handle on a running turn.
pub struct HostTurn(TurnHandleBox);

impl HostTurn {
    /// Answers an approval request.
    pub fn resolve_input(&self, request_id: &str, decision: &Decision) -> Result<(), String> {
        let json = serde_json::to_string(decision).map_err(|e| e.to_string())?;
        self.0
            .resolve_input(RStr::from_str(request_id), RStr::from_str(&json))
            .into_result()
            .map_err(Into::into)
    }

    /// Asks the turn to stop.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}
