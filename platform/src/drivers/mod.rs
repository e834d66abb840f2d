//! The plugin host: registers linked-in drivers, loads `.so` plugins, picks a driver for an app.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use karta_plugin_api::abi_stable::library::lib_header_from_path;
use karta_plugin_api::abi_stable::std_types::RStr;
use karta_plugin_api::ffi::{DriverModuleRef, HarnessDriverBox};
use karta_plugin_api::{HostDriver, ABI_VERSION};

use crate::config::PlatformConfig;

/// Where a driver came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverOrigin {
    /// Linked into the host.
    Builtin,
    /// Loaded from a plugin library.
    Plugin(PathBuf),
}

/// A registered driver.
pub struct LoadedDriver {
    /// Its name.
    pub name: String,
    /// Where it came from.
    pub origin: DriverOrigin,
    /// The driver's version, when it reports one (a plugin built before versions were
    /// reported does not).
    pub version: Option<String>,
    /// The driver.
    pub driver: HostDriver,
    /// The settings it was built with (JSON), to rebuild it when they change.
    settings: String,
    /// How to build it again.
    build: Build,
}

impl LoadedDriver {
    /// The settings it was built with, as JSON.
    pub fn settings_json(&self) -> &str {
        &self.settings
    }
}

/// How a driver object is made.
#[derive(Clone, Copy)]
enum Build {
    /// From a loaded plugin's root module (the library stays loaded).
    Plugin(DriverModuleRef),
    /// A linked-in constructor.
    Builtin(BuiltinCtor),
    /// Registered from outside; never rebuilt.
    Fixed,
}

/// Why a driver could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum DriverLoadError {
    /// The library is not a compatible Karta plugin.
    #[error("plugin {path}: {message}")]
    Plugin {
        /// The library.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A driver of that name is already registered.
    #[error("a driver named `{0}` is already registered")]
    Duplicate(String),
    /// `[[drivers]] name = ...` names no first-party driver.
    #[error("no first-party driver is named `{0}`")]
    UnknownBuiltin(String),
}

/// First-party drivers linked into the host: (name, constructor from settings JSON).
type BuiltinCtor = fn(&str) -> Result<HarnessDriverBox, String>;

fn claude_code(settings: &str) -> Result<HarnessDriverBox, String> {
    let v: serde_json::Value = serde_json::from_str(settings).map_err(|e| e.to_string())?;
    karta_driver_claude_code::ClaudeDriver::from_settings(&v).map(karta_plugin_api::into_ffi)
}

fn opencode(settings: &str) -> Result<HarnessDriverBox, String> {
    let v: serde_json::Value = serde_json::from_str(settings).map_err(|e| e.to_string())?;
    karta_driver_opencode::OpenCodeDriver::from_settings(&v).map(karta_plugin_api::into_ffi)
}

fn builtins() -> Vec<(&'static str, BuiltinCtor)> {
    vec![("claude-code", claude_code), ("opencode", opencode)]
}

/// A driver's settings plus what the host tells every driver (`data_dir`).
fn with_host_settings(
    settings: &serde_json::Map<String, serde_json::Value>,
    cfg: &PlatformConfig,
) -> serde_json::Map<String, serde_json::Value> {
    let mut s = settings.clone();
    s.entry("data_dir")
        .or_insert_with(|| cfg.data_dir.display().to_string().into());
    s
}

/// All registered drivers.
#[derive(Default)]
pub struct DriverRegistry {
    inner: RwLock<Inner>,
    /// What the last load from configuration refused (for the operator API and `/readyz`).
    last_errors: RwLock<Vec<String>>,
}

#[derive(Default)]
struct Inner {
    drivers: BTreeMap<String, Arc<LoadedDriver>>,
    loaded_paths: BTreeSet<PathBuf>,
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, d: LoadedDriver) -> Result<String, DriverLoadError> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.drivers.contains_key(&d.name) {
            return Err(DriverLoadError::Duplicate(d.name));
        }
        if let DriverOrigin::Plugin(p) = &d.origin {
            inner.loaded_paths.insert(p.clone());
        }
        let name = d.name.clone();
        inner.drivers.insert(name.clone(), Arc::new(d));
        Ok(name)
    }

    /// Registers a driver object built in-process.
    pub fn register(
        &self,
        driver: HarnessDriverBox,
        origin: DriverOrigin,
    ) -> Result<String, DriverLoadError> {
        let driver = HostDriver::new(driver);
        self.insert(LoadedDriver {
            name: driver.name(),
            origin,
            version: None,
            driver,
            settings: String::new(),
            build: Build::Fixed,
        })
    }

    /// Replaces a registered driver with one built from `settings` when they changed. Turns
    /// already running keep the old object (they hold it); new turns get the new one.
    fn rebuild_if_changed(
        &self,
        current: &LoadedDriver,
        settings: String,
    ) -> Option<Result<String, DriverLoadError>> {
        if current.settings == settings {
            return None;
        }
        let built = match current.build {
            Build::Plugin(module) => (module.new_driver())(RStr::from_str(&settings))
                .into_result()
                .map_err(|e| e.to_string()),
            Build::Builtin(ctor) => ctor(&settings),
            Build::Fixed => return None,
        };
        let path = match &current.origin {
            DriverOrigin::Plugin(p) => p.clone(),
            DriverOrigin::Builtin => PathBuf::from(format!("<builtin {}>", current.name)),
        };
        Some(match built {
            Ok(d) => {
                let d = LoadedDriver {
                    name: current.name.clone(),
                    origin: current.origin.clone(),
                    version: current.version.clone(),
                    driver: HostDriver::new(d),
                    settings,
                    build: current.build,
                };
                let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
                inner.drivers.insert(d.name.clone(), Arc::new(d));
                tracing::info!(driver = %current.name, "driver settings changed; new turns use the rebuilt driver");
                Ok(current.name.clone())
            }
            // The old driver keeps serving.
            Err(message) => Err(DriverLoadError::Plugin {
                path,
                message: format!("driver refused its new settings: {message}"),
            }),
        })
    }

    /// The driver loaded from `path`, if any.
    fn by_path(&self, path: &Path) -> Option<Arc<LoadedDriver>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .drivers
            .values()
            .find(|d| d.origin == DriverOrigin::Plugin(path.to_path_buf()))
            .cloned()
    }

    fn is_loaded(&self, path: &Path) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.loaded_paths.contains(path)
    }

    /// Loads a plugin library and registers its driver. The library stays loaded for the life of
    /// the process (unloading code that may still run on a driver thread is unsafe).
    pub fn load_plugin(
        &self,
        path: &Path,
        settings: &serde_json::Map<String, serde_json::Value>,
        expected_name: Option<&str>,
    ) -> Result<String, DriverLoadError> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let fail = |message: String| DriverLoadError::Plugin {
            path: path.clone(),
            message,
        };
        let header = lib_header_from_path(&path).map_err(|e| fail(e.to_string()))?;
        let module = header
            .init_root_module::<DriverModuleRef>()
            .map_err(|e| fail(format!("incompatible plugin: {e}")))?;
        let abi = (module.abi_version())();
        if abi != ABI_VERSION {
            return Err(fail(format!(
                "built for plugin ABI {abi}, this host speaks ABI {ABI_VERSION}"
            )));
        }
        let json = serde_json::Value::Object(settings.clone()).to_string();
        let driver = (module.new_driver())(RStr::from_str(&json))
            .into_result()
            .map_err(|e| fail(format!("driver refused its settings: {e}")))?;
        let driver = HostDriver::new(driver);
        let name = driver.name();
        if let Some(expected) = expected_name {
            if expected != name {
                return Err(fail(format!(
                    "the plugin's driver is named `{name}`, the configuration expects `{expected}`"
                )));
            }
        }
        let version = module.driver_version().map(|f| f().into_string());
        self.insert(LoadedDriver {
            name,
            origin: DriverOrigin::Plugin(path.clone()),
            version,
            driver,
            settings: json,
            build: Build::Plugin(module),
        })
    }

    /// Registers the first-party drivers, the `[[drivers]]` plugins and every plugin found in the
    /// plugin folders. Failures are logged and returned; the host keeps serving without them.
    /// Safe to call again on reload: what is already loaded is kept, and rebuilt from the same
    /// library when its settings changed.
    pub fn load_from_config(&self, cfg: &PlatformConfig) -> Vec<DriverLoadError> {
        let mut errors = Vec::new();
        let mut report = |r: Result<String, DriverLoadError>, what: &str| match r {
            Ok(name) => tracing::info!(driver = %name, source = %what, "driver registered"),
            Err(e) => {
                tracing::error!(error = %e, "driver refused; the platform keeps serving without it");
                errors.push(e);
            }
        };
        for d in &cfg.drivers {
            match (&d.path, &d.name) {
                (Some(path), _) => {
                    let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                    if self.is_loaded(&canonical) {
                        if let Some(current) = self.by_path(&canonical) {
                            let settings =
                                serde_json::Value::Object(with_host_settings(&d.settings, cfg))
                                    .to_string();
                            if let Some(r) = self.rebuild_if_changed(&current, settings) {
                                report(r, &path.display().to_string());
                            }
                        }
                        continue;
                    }
                    report(
                        self.load_plugin(
                            path,
                            &with_host_settings(&d.settings, cfg),
                            d.name.as_deref(),
                        ),
                        &path.display().to_string(),
                    );
                }
                (None, Some(name)) => {
                    if !builtins().iter().any(|(n, _)| n == name) {
                        report(Err(DriverLoadError::UnknownBuiltin(name.clone())), "config");
                    }
                }
                (None, None) => {}
            }
        }
        // First-party drivers are linked in; a configured plugin of the same name (e.g. the
        // driver's own cdylib) takes precedence.
        for (name, ctor) in builtins() {
            let settings = cfg
                .drivers
                .iter()
                .find(|d| d.path.is_none() && d.name.as_deref() == Some(name))
                .map(|d| with_host_settings(&d.settings, cfg))
                .unwrap_or_else(|| with_host_settings(&Default::default(), cfg));
            let settings = serde_json::Value::Object(settings).to_string();
            if let Some(current) = self.get(name) {
                // A configured plugin of that name wins; a builtin is rebuilt when its
                // settings changed.
                if current.origin == DriverOrigin::Builtin {
                    if let Some(r) = self.rebuild_if_changed(&current, settings) {
                        report(r, "builtin");
                    }
                }
                continue;
            }
            let r = ctor(&settings)
                .map_err(|message| DriverLoadError::Plugin {
                    path: PathBuf::from(format!("<builtin {name}>")),
                    message,
                })
                .and_then(|d| {
                    let driver = HostDriver::new(d);
                    self.insert(LoadedDriver {
                        name: driver.name(),
                        origin: DriverOrigin::Builtin,
                        // First-party drivers are versioned with the workspace.
                        version: Some(env!("CARGO_PKG_VERSION").to_string()),
                        driver,
                        settings: settings.clone(),
                        build: Build::Builtin(ctor),
                    })
                });
            report(r, "builtin");
        }
        for dir in cfg.plugin_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut libs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
                })
                .collect();
            libs.sort();
            for lib in libs {
                let canonical = lib.canonicalize().unwrap_or_else(|_| lib.clone());
                if self.is_loaded(&canonical) {
                    continue;
                }
                report(
                    self.load_plugin(&lib, &serde_json::Map::new(), None),
                    &lib.display().to_string(),
                );
            }
        }
        *self.last_errors.write().unwrap_or_else(|p| p.into_inner()) =
            errors.iter().map(|e| e.to_string()).collect();
        errors
    }

    /// What the last load from configuration refused.
    pub fn load_errors(&self) -> Vec<String> {
        self.last_errors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A driver by name.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedDriver>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.drivers.get(name).cloned()
    }

    /// The driver with the highest non-zero `detect` score for `app_dir`.
    pub fn detect(&self, app_dir: &Path) -> Option<Arc<LoadedDriver>> {
        let drivers: Vec<Arc<LoadedDriver>> = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            inner.drivers.values().cloned().collect()
        };
        drivers
            .into_iter()
            .map(|d| (d.driver.detect(app_dir), d))
            .filter(|(score, _)| *score > 0)
            .max_by_key(|(score, _)| *score)
            .map(|(_, d)| d)
    }

    /// Names and origins of all registered drivers.
    pub fn list(&self) -> Vec<(String, DriverOrigin)> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .drivers
            .values()
            .map(|d| (d.name.clone(), d.origin.clone()))
            .collect()
    }
}
