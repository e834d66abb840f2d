//! The plugin host: registers linked-in drivers, loads `.so` plugins, picks a driver for an app.
//!
//! Every driver goes through the same handshake, linked in or loaded: `describe` with the host's
//! info (name, version, capabilities and the JSON Schema of its settings), the settings checked
//! against that schema, then `new_driver` with the host context and the settings.
//!
//! Loading is an allowlist. A library loads when a `[[drivers]]` entry gives its `path`, or names
//! a driver (`name = "echo"`) that is not linked in and a plugin folder holds a library of that
//! name (`echo.so`, `libecho.so`, `karta_driver_echo.so` or `libkarta_driver_echo.so`), or when
//! `[plugins] trust_dirs = true` trusts every library in the plugin folders. Any other library
//! in a plugin folder is refused without being opened, and the refusal is logged.

mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use karta_driver_api::abi_stable::library::lib_header_from_path;
use karta_driver_api::ffi::{DriverModuleRef, HarnessDriverBox};
use karta_driver_api::{DriverFactory, DriverInfo, HostContext, HostDriver, HostInfo};
use serde_json::Value;

use crate::config::PlatformConfig;

pub use settings::SettingsProblem;

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
    /// The driver's version, when it reports one.
    pub version: Option<String>,
    /// What the driver said about itself in the handshake.
    pub info: DriverInfo,
    /// The driver.
    pub driver: HostDriver,
    /// The settings it was built with (a JSON object), to rebuild it when they change.
    settings: Value,
    /// How to build it again (`None`: registered from outside, never rebuilt).
    factory: Option<DriverFactory>,
}

impl AsRef<HostDriver> for LoadedDriver {
    fn as_ref(&self) -> &HostDriver {
        &self.driver
    }
}

impl LoadedDriver {
    /// The settings it was built with.
    pub fn settings(&self) -> &Value {
        &self.settings
    }
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
    /// A library in a plugin folder that configuration does not allow.
    #[error(
        "plugin {0}: not loaded: no [[drivers]] entry names it and [plugins] trust_dirs is false"
    )]
    NotAllowed(PathBuf),
    /// A driver of that name is already registered.
    #[error("a driver named `{0}` is already registered")]
    Duplicate(String),
    /// `[[drivers]] name = ...` names no linked-in driver and no library in a plugin folder.
    #[error(
        "no driver is named `{0}`: it is not linked in, and no plugin folder holds a library of \
         that name"
    )]
    Unknown(String),
    /// The settings do not match the driver's schema (also reported as a configuration error).
    #[error("driver `{name}`: {problem}")]
    Settings {
        /// The driver.
        name: String,
        /// What is wrong.
        problem: SettingsProblem,
    },
}

/// The drivers linked into the host.
fn builtins() -> Vec<(&'static str, DriverFactory)> {
    vec![
        (
            karta_driver_claude_code::DRIVER_NAME,
            DriverFactory::linked::<karta_driver_claude_code::ClaudeDriver>(),
        ),
        (
            karta_driver_opencode::DRIVER_NAME,
            DriverFactory::linked::<karta_driver_opencode::OpenCodeDriver>(),
        ),
        (
            karta_driver_acp::DRIVER_NAME,
            DriverFactory::linked::<karta_driver_acp::AcpDriver>(),
        ),
    ]
}

/// What this host tells drivers about itself.
pub fn host_info() -> HostInfo {
    HostInfo::current(env!("CARGO_PKG_VERSION"))
}

fn host_context(cfg: &PlatformConfig) -> HostContext {
    HostContext::new(host_info(), cfg.data_dir.display().to_string())
}

/// The file names a drop-in library of driver `name` may have.
fn library_names(name: &str) -> Vec<String> {
    let stem = name.replace('-', "_");
    let ext = std::env::consts::DLL_EXTENSION;
    [
        name.to_string(),
        stem.clone(),
        format!("lib{stem}"),
        format!("karta_driver_{stem}"),
        format!("libkarta_driver_{stem}"),
    ]
    .into_iter()
    .collect::<BTreeSet<_>>()
    .into_iter()
    .map(|s| format!("{s}.{ext}"))
    .collect()
}

/// A driver the configuration asks for, before it is built.
struct Candidate {
    origin: DriverOrigin,
    factory: DriverFactory,
    info: DriverInfo,
    settings: Value,
    /// Index of the `[[drivers]]` entry that gave the settings.
    entry: Option<usize>,
    /// The name the entry expects the driver to have.
    expected: Option<String>,
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
    /// Libraries opened so far (they stay loaded for the life of the process).
    modules: BTreeMap<PathBuf, DriverModuleRef>,
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&self, d: LoadedDriver) -> String {
        let name = d.name.clone();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.drivers.insert(name.clone(), Arc::new(d));
        name
    }

    /// Registers a driver object built in-process (never rebuilt).
    pub fn register(
        &self,
        driver: HarnessDriverBox,
        origin: DriverOrigin,
    ) -> Result<String, DriverLoadError> {
        let driver = HostDriver::new(driver);
        let name = driver.name();
        if self.get(&name).is_some() {
            return Err(DriverLoadError::Duplicate(name));
        }
        Ok(self.put(LoadedDriver {
            info: DriverInfo::new(name.clone()),
            name,
            origin,
            version: None,
            driver,
            settings: Value::Object(Default::default()),
            factory: None,
        }))
    }

    /// Opens a plugin library (once; it stays loaded) and checks its ABI.
    fn module(&self, path: &Path) -> Result<DriverFactory, DriverLoadError> {
        let fail = |message: String| DriverLoadError::Plugin {
            path: path.to_path_buf(),
            message,
        };
        if let Some(m) = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .modules
            .get(path)
        {
            return DriverFactory::module(*m).map_err(fail);
        }
        let header = lib_header_from_path(path).map_err(|e| fail(e.to_string()))?;
        let module = header.init_root_module::<DriverModuleRef>().map_err(|e| {
            fail(format!(
                "incompatible plugin (a plugin must be built against karta-driver-api {}.x): {e}",
                karta_driver_api::ABI_MAJOR
            ))
        })?;
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .modules
            .insert(path.to_path_buf(), module);
        DriverFactory::module(module).map_err(fail)
    }

    /// Loads a plugin library and registers its driver, outside configuration (tests, tools).
    pub fn load_plugin(
        &self,
        path: &Path,
        settings: &serde_json::Map<String, Value>,
        expected_name: Option<&str>,
    ) -> Result<String, DriverLoadError> {
        self.load_plugin_in(
            path,
            settings,
            expected_name,
            &HostContext::new(host_info(), ""),
        )
    }

    fn load_plugin_in(
        &self,
        path: &Path,
        settings: &serde_json::Map<String, Value>,
        expected_name: Option<&str>,
        ctx: &HostContext,
    ) -> Result<String, DriverLoadError> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let factory = self.module(&path)?;
        let info = factory
            .describe(&ctx.host)
            .map_err(|message| DriverLoadError::Plugin {
                path: path.clone(),
                message,
            })?;
        let c = Candidate {
            origin: DriverOrigin::Plugin(path),
            factory,
            info,
            settings: Value::Object(settings.clone()),
            entry: None,
            expected: expected_name.map(str::to_string),
        };
        if let Some(problem) = settings::check(&c.info.settings_schema, &c.settings).first() {
            return Err(DriverLoadError::Settings {
                name: c.info.name.clone(),
                problem: problem.clone(),
            });
        }
        if self.get(&c.info.name).is_some() {
            return Err(DriverLoadError::Duplicate(c.info.name));
        }
        self.build(c, ctx)
    }

    /// Resolves what the configuration asks for: linked-in drivers, `[[drivers]]` entries and
    /// the libraries of the plugin folders it allows. Opens libraries; builds nothing.
    fn resolve(&self, cfg: &PlatformConfig) -> (Vec<Candidate>, Vec<DriverLoadError>) {
        let host = host_info();
        let mut out: Vec<Candidate> = Vec::new();
        let mut errors = Vec::new();
        let settings_of = |i: usize| Value::Object(cfg.drivers[i].settings.clone());
        let describe = |path: &Path, errors: &mut Vec<DriverLoadError>| {
            let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            let r = self.module(&path).and_then(|f| {
                f.describe(&host)
                    .map(|info| (f, info))
                    .map_err(|message| DriverLoadError::Plugin {
                        path: path.clone(),
                        message,
                    })
            });
            match r {
                Ok((f, info)) => Some((path, f, info)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        // 1. Libraries named by path.
        for (i, d) in cfg.drivers.iter().enumerate() {
            if let Some(path) = &d.path {
                if let Some((path, factory, info)) = describe(path, &mut errors) {
                    out.push(Candidate {
                        origin: DriverOrigin::Plugin(path),
                        factory,
                        info,
                        settings: settings_of(i),
                        entry: Some(i),
                        expected: d.name.clone(),
                    });
                }
            }
        }
        // 2. Libraries in the plugin folders: named by a `[[drivers]] name` entry, or trusted.
        let linked: BTreeSet<&str> = builtins().iter().map(|(n, _)| *n).collect();
        let wanted: BTreeMap<String, usize> = cfg
            .drivers
            .iter()
            .enumerate()
            .filter(|(_, d)| d.path.is_none())
            .filter_map(|(i, d)| d.name.clone().map(|n| (n, i)))
            .filter(|(n, _)| !linked.contains(n.as_str()))
            .collect();
        // Any path-less entry of a name, linked-in names included: a trusted library that
        // calls itself `acp` takes that entry's settings.
        let by_name = |name: &str| {
            cfg.drivers
                .iter()
                .position(|d| d.path.is_none() && d.name.as_deref() == Some(name))
        };
        let mut found: BTreeSet<String> = BTreeSet::new();
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
                let file = lib
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let named = wanted
                    .iter()
                    .find(|(n, _)| library_names(n).contains(&file));
                if named.is_none() && !cfg.plugins.trust_dirs {
                    errors.push(DriverLoadError::NotAllowed(lib));
                    continue;
                }
                let canonical = lib.canonicalize().unwrap_or_else(|_| lib.clone());
                if out
                    .iter()
                    .any(|c| c.origin == DriverOrigin::Plugin(canonical.clone()))
                {
                    continue;
                }
                if let Some((n, _)) = named {
                    // Named and present: a failure below is reported as itself, not as
                    // "no such driver".
                    found.insert(n.clone());
                }
                let Some((path, factory, info)) = describe(&lib, &mut errors) else {
                    continue;
                };
                // Settings come from the entry that names the driver (by its own name when
                // the folder is trusted).
                let entry = named.map(|(_, i)| *i).or_else(|| by_name(&info.name));
                if let Some(i) = entry {
                    found.insert(cfg.drivers[i].name.clone().unwrap_or_default());
                }
                out.push(Candidate {
                    origin: DriverOrigin::Plugin(path),
                    factory,
                    settings: entry
                        .map(settings_of)
                        .unwrap_or_else(|| Value::Object(Default::default())),
                    expected: entry.and_then(|i| cfg.drivers[i].name.clone()),
                    entry,
                    info,
                });
            }
        }
        for name in wanted.keys() {
            if !found.contains(name) && !out.iter().any(|c| &c.info.name == name) {
                errors.push(DriverLoadError::Unknown(name.clone()));
            }
        }
        // 3. Linked-in drivers, unless a plugin of the same name was configured (the driver's
        //    own cdylib, say): the plugin wins.
        for (name, factory) in builtins() {
            if out.iter().any(|c| c.info.name == name) {
                continue;
            }
            let info = match factory.describe(&host) {
                Ok(i) => i,
                Err(message) => {
                    errors.push(DriverLoadError::Plugin {
                        path: PathBuf::from(format!("<builtin {name}>")),
                        message,
                    });
                    continue;
                }
            };
            let entry = cfg
                .drivers
                .iter()
                .position(|d| d.path.is_none() && d.name.as_deref() == Some(name));
            out.push(Candidate {
                origin: DriverOrigin::Builtin,
                factory,
                info,
                settings: entry
                    .map(settings_of)
                    .unwrap_or_else(|| Value::Object(Default::default())),
                entry,
                expected: Some(name.to_string()),
            });
        }
        (out, errors)
    }

    /// Checks every configured driver's settings against the schema the driver gave, as
    /// `(key path, message)` problems (`drivers[i].settings.<key>`), for the configuration
    /// error. Opens the plugin libraries the configuration allows; builds nothing.
    pub fn check_settings(&self, cfg: &PlatformConfig) -> Vec<(Vec<String>, String)> {
        let (candidates, _) = self.resolve(cfg);
        let mut out = Vec::new();
        for c in candidates {
            let Some(i) = c.entry else { continue };
            for p in settings::check(&c.info.settings_schema, &c.settings) {
                let mut key = vec!["drivers".to_string(), i.to_string(), "settings".into()];
                key.extend(p.path.iter().cloned());
                out.push((key, format!("driver `{}`: {}", c.info.name, p.message)));
            }
        }
        out
    }

    /// What each driver the configuration allows says about itself (name, version,
    /// capabilities, settings schema), without building any; and what was refused.
    pub fn describe_all(
        &self,
        cfg: &PlatformConfig,
    ) -> (Vec<(DriverInfo, DriverOrigin)>, Vec<String>) {
        let (candidates, errors) = self.resolve(cfg);
        (
            candidates.into_iter().map(|c| (c.info, c.origin)).collect(),
            errors.iter().map(|e| e.to_string()).collect(),
        )
    }

    fn build(&self, c: Candidate, ctx: &HostContext) -> Result<String, DriverLoadError> {
        let path = match &c.origin {
            DriverOrigin::Plugin(p) => p.clone(),
            DriverOrigin::Builtin => PathBuf::from(format!("<builtin {}>", c.info.name)),
        };
        if let Some(expected) = &c.expected {
            if expected != &c.info.name {
                return Err(DriverLoadError::Plugin {
                    path,
                    message: format!(
                        "the plugin's driver is named `{}`, the configuration expects `{expected}`",
                        c.info.name
                    ),
                });
            }
        }
        let driver = c
            .factory
            .build(ctx, &c.settings)
            .map_err(|e| DriverLoadError::Plugin {
                path: path.clone(),
                message: format!("driver refused its settings: {e}"),
            })?;
        if driver.name() != c.info.name {
            return Err(DriverLoadError::Plugin {
                path,
                message: format!(
                    "the driver calls itself `{}` but described itself as `{}`",
                    driver.name(),
                    c.info.name
                ),
            });
        }
        Ok(self.put(LoadedDriver {
            name: c.info.name.clone(),
            origin: c.origin,
            version: (!c.info.version.is_empty()).then(|| c.info.version.clone()),
            info: c.info,
            driver,
            settings: c.settings,
            factory: Some(c.factory),
        }))
    }

    /// Registers what the configuration asks for. Failures are logged and returned; the host
    /// keeps serving without them. Safe to call again on reload: a driver whose settings are
    /// unchanged is kept; one whose settings changed is rebuilt from the library already loaded
    /// (a library is opened once per process), and turns already running finish on the old
    /// object (they hold it); a plugin the configuration no longer allows is unregistered (its
    /// running turns finish, new turns of its sessions fail).
    pub fn load_from_config(&self, cfg: &PlatformConfig) -> Vec<DriverLoadError> {
        let ctx = host_context(cfg);
        let (candidates, mut errors) = self.resolve(cfg);
        let allowed: BTreeSet<String> = candidates.iter().map(|c| c.info.name.clone()).collect();
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = inner
                .drivers
                .iter()
                .filter(|(name, d)| d.factory.is_some() && !allowed.contains(*name))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                inner.drivers.remove(&name);
                tracing::info!(driver = %name, "driver unregistered: the configuration no longer allows it");
            }
        }
        for c in candidates {
            let name = c.info.name.clone();
            if let Some(problem) = settings::check(&c.info.settings_schema, &c.settings)
                .into_iter()
                .next()
            {
                errors.push(DriverLoadError::Settings { name, problem });
                continue;
            }
            if let Some(current) = self.get(&name) {
                if current.origin != c.origin && current.factory.is_none() {
                    errors.push(DriverLoadError::Duplicate(name));
                    continue;
                }
                if current.origin == c.origin && current.settings == c.settings {
                    continue;
                }
                if current.origin != c.origin {
                    // Two libraries (or a library and a linked-in driver) claim one name:
                    // the first one registered keeps it.
                    if let DriverOrigin::Plugin(p) = &c.origin {
                        if matches!(current.origin, DriverOrigin::Plugin(_)) {
                            errors.push(DriverLoadError::Plugin {
                                path: p.clone(),
                                message: format!("a driver named `{name}` is already loaded"),
                            });
                            continue;
                        }
                    }
                }
            }
            let rebuilt = self.get(&name).is_some();
            let what = match &c.origin {
                DriverOrigin::Plugin(p) => p.display().to_string(),
                DriverOrigin::Builtin => "builtin".to_string(),
            };
            match self.build(c, &ctx) {
                Ok(name) if rebuilt => tracing::info!(driver = %name, source = %what,
                    "driver settings changed; new turns use the rebuilt driver, running turns finish on the old one"),
                Ok(name) => tracing::info!(driver = %name, source = %what, "driver registered"),
                Err(e) => errors.push(e),
            }
        }
        for e in &errors {
            match e {
                DriverLoadError::NotAllowed(_) => tracing::warn!(error = %e, "plugin refused"),
                _ => {
                    tracing::error!(error = %e, "driver refused; the platform keeps serving without it")
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_in_library_may_have_the_usual_names() {
        let names = library_names("my-driver");
        for n in [
            "my-driver.so",
            "my_driver.so",
            "libmy_driver.so",
            "karta_driver_my_driver.so",
            "libkarta_driver_my_driver.so",
        ] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        assert!(!names.contains(&"libother.so".to_string()));
    }
}
