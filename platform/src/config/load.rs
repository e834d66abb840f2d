//! Reads, layers and validates the platform configuration.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;

use super::error::{ConfigError, ConfigIssue};
use super::locate::{line_of, locate, SourceFile};
use super::{validate, PlatformConfig};

/// Where to read the configuration from.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The main file (`karta.platform.toml`).
    pub config_path: PathBuf,
    /// Whether the main file must exist (true when the user named it).
    pub explicit: bool,
    /// Command-line flags: the last layer.
    pub overrides: Overrides,
}

/// Values set by command-line flags.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--admin-listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// `--database-url`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

/// Top-level keys that `KARTA_...` variables may set; other `KARTA_` variables (such as
/// `KARTA_ADMIN_TOKEN` or `KARTA_ENV`) are not configuration layers.
const ENV_SECTIONS: &[&str] = &[
    "server",
    "database",
    "data_dir",
    "plugins",
    "providers",
    "runtime",
    "sandbox",
    "gateway",
];

/// A JSONC (json5) layer file as a figment provider that remembers its path.
struct JsoncFile {
    path: PathBuf,
    value: serde_json::Value,
}

impl Provider for JsoncFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("JSONC file", figment::Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(&self.value).data()
    }
}

fn layer_files(opts: &LoadOptions, base: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    if opts.config_path.is_file() {
        files.push(opts.config_path.clone());
    } else if opts.explicit {
        return Err(ConfigError::file(
            &opts.config_path,
            "configuration file not found",
        ));
    }
    let dropins = base.join("karta.platform.d");
    if dropins.is_dir() {
        let mut extra: Vec<PathBuf> = std::fs::read_dir(&dropins)
            .map_err(|e| ConfigError::file(&dropins, format!("cannot list folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("toml") | Some("jsonc")
                )
            })
            .collect();
        extra.sort();
        files.extend(extra);
    }
    if let Ok(env) = std::env::var("KARTA_ENV") {
        if !env.is_empty() {
            let overlay = base.join(format!("karta.platform.{env}.toml"));
            if !overlay.is_file() {
                return Err(ConfigError::file(
                    overlay,
                    format!("KARTA_ENV={env} names an overlay file that does not exist"),
                ));
            }
            files.push(overlay);
        }
    }
    Ok(files)
}

fn parse_source(path: &Path) -> Result<(SourceFile, Option<serde_json::Value>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
    let is_jsonc = path.extension().and_then(|e| e.to_str()) == Some("jsonc");
    if is_jsonc {
        let value: serde_json::Value = json5::from_str(&text).map_err(|e| {
            let (line, message) = match &e {
                json5::Error::Message { msg, location } => {
                    (location.as_ref().map(|l| l.line), msg.clone())
                }
            };
            ConfigError::single(ConfigIssue {
                file: Some(path.to_path_buf()),
                line,
                key: None,
                message: format!("syntax error: {message}"),
            })
        })?;
        if !value.is_object() {
            return Err(ConfigError::file(path, "the top level must be an object"));
        }
        let src = SourceFile {
            path: path.to_path_buf(),
            text,
            toml: None,
        };
        Ok((src, Some(value)))
    } else {
        let doc = toml_edit::ImDocument::parse(text.clone()).map_err(|e| {
            ConfigError::single(ConfigIssue {
                file: Some(path.to_path_buf()),
                line: e.span().map(|s| line_of(&text, s.start)),
                key: None,
                message: format!("syntax error: {}", e.message()),
            })
        })?;
        let src = SourceFile {
            path: path.to_path_buf(),
            text,
            toml: Some(doc),
        };
        Ok((src, None))
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Loads every layer, then validates. The error lists each problem with file, line and key.
pub fn load(opts: &LoadOptions) -> Result<PlatformConfig, ConfigError> {
    let (figment, sources, base) = layers(opts)?;
    extract(&figment, &sources, &base)
}

/// Problems found after loading (`(key path, message)`, e.g. driver settings that miss the
/// driver's schema) as a configuration error with the file and line of each key. Re-reads every
/// layer, so it is for error paths only.
pub fn located(opts: &LoadOptions, problems: Vec<(Vec<String>, String)>) -> ConfigError {
    let layers = layers(opts).ok();
    ConfigError {
        issues: problems
            .into_iter()
            .map(|(segs, message)| {
                let (file, line) = match &layers {
                    Some((figment, sources, _)) => locate(figment, sources, &segs),
                    None => (None, None),
                };
                ConfigIssue {
                    file,
                    line,
                    key: Some(display_key(&segs)),
                    message,
                }
            })
            .collect(),
    }
}

/// Where a tenant (or one of its projects) is declared: the file and, for TOML, the line.
/// Re-reads every layer, so it is for error paths only.
pub fn declared_at(
    opts: &LoadOptions,
    tenant: &str,
    project: Option<&str>,
) -> Option<(PathBuf, Option<usize>)> {
    let (figment, sources, _) = layers(opts).ok()?;
    let cfg: PlatformConfig = figment.extract().ok()?;
    let (kind, i) = match project {
        None => (
            "tenants",
            cfg.tenants.iter().position(|t| t.slug == tenant)?,
        ),
        Some(p) => (
            "projects",
            cfg.projects
                .iter()
                .position(|x| x.tenant == tenant && x.slug == p)?,
        ),
    };
    let (file, line) = locate(
        &figment,
        &sources,
        &[kind.to_string(), i.to_string(), "slug".to_string()],
    );
    Some((file?, line))
}

/// The file that declares each tenant (by slug) and project (by `tenant/slug`), in one pass.
pub fn resource_sources(
    opts: &LoadOptions,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let (figment, _, _) = layers(opts)?;
    let mut out = std::collections::BTreeMap::new();
    let Ok(root) = figment.find_value("") else {
        return Ok(out);
    };
    let file_of = |v: &figment::value::Value| {
        figment
            .get_metadata(v.tag())
            .and_then(|m| m.source.as_ref())
            .map(|s| s.to_string())
    };
    let field = |v: &figment::value::Value, k: &str| {
        v.as_dict()
            .and_then(|d| d.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    for (kind, key) in [("tenants", false), ("projects", true)] {
        let Some(items) = root
            .as_dict()
            .and_then(|d| d.get(kind))
            .and_then(|v| v.as_array())
        else {
            continue;
        };
        for item in items {
            let Some(slug) = field(item, "slug") else {
                continue;
            };
            let name = if key {
                format!(
                    "{kind}/{}/{slug}",
                    field(item, "tenant").unwrap_or_default()
                )
            } else {
                format!("{kind}/{slug}")
            };
            if let Some(f) = file_of(item) {
                out.insert(name, f);
            }
        }
    }
    Ok(out)
}

/// Every layer merged (not yet extracted), the parsed files, and the main file's folder.
fn layers(opts: &LoadOptions) -> Result<(Figment, Vec<SourceFile>, PathBuf), ConfigError> {
    let main = absolute(&opts.config_path);
    let base = main
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let opts = LoadOptions {
        config_path: main,
        ..opts.clone()
    };
    let files = layer_files(&opts, &base)?;

    let mut figment = Figment::from(Serialized::defaults(PlatformConfig {
        data_dir: PathBuf::from(".karta"),
        ..PlatformConfig::default()
    }));
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for f in &files {
        match parse_source(f) {
            Ok((src, Some(value))) => {
                figment = figment.admerge(JsoncFile {
                    path: f.clone(),
                    value,
                });
                sources.push(src);
            }
            Ok((src, None)) => {
                figment = figment.admerge(Toml::file(f));
                sources.push(src);
            }
            Err(e) => problems.extend(e.issues),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { issues: problems });
    }
    let env = Env::prefixed("KARTA_")
        .filter(|k| {
            let first = k.as_str().split("__").next().unwrap_or("");
            ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
        })
        .split("__");
    figment = figment.merge(env);
    let o = &opts.overrides;
    if let Some(v) = &o.listen {
        figment = figment.merge(("server.listen", v));
    }
    if let Some(v) = &o.admin_listen {
        figment = figment.merge(("server.admin_listen", v));
    }
    if let Some(v) = &o.database_url {
        figment = figment.merge(("database.url", v));
    }
    Ok((figment, sources, base))
}

/// The configuration out of the merged layers, with paths resolved and everything validated.
fn extract(
    figment: &Figment,
    sources: &[SourceFile],
    base: &Path,
) -> Result<PlatformConfig, ConfigError> {
    let mut config: PlatformConfig = figment.extract().map_err(|err| ConfigError {
        issues: err
            .into_iter()
            .map(|e| {
                let mut segs = e.path.clone();
                if let figment::error::Kind::UnknownField(f, _) = &e.kind {
                    segs.push(f.clone());
                }
                let (file, line) = locate(figment, sources, &segs);
                ConfigIssue {
                    file: file.or_else(|| {
                        e.metadata.as_ref().and_then(|m| match &m.source {
                            Some(figment::Source::File(p)) => Some(p.clone()),
                            _ => None,
                        })
                    }),
                    line,
                    key: (!segs.is_empty()).then(|| display_key(&segs)),
                    message: e.kind.to_string(),
                }
            })
            .collect(),
    })?;
    resolve_paths(&mut config, base);
    validate::validate(&config).map_err(|issues| ConfigError {
        issues: issues
            .into_iter()
            .map(|(segs, message)| {
                let (file, line) = locate(figment, sources, &segs);
                ConfigIssue {
                    file,
                    line,
                    key: Some(display_key(&segs)),
                    message,
                }
            })
            .collect(),
    })?;
    Ok(config)
}

/// `["projects", "1", "slug"]` -> `projects[1].slug`
pub(crate) fn display_key(segs: &[String]) -> String {
    let mut out = String::new();
    for s in segs {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

fn resolve_paths(c: &mut PlatformConfig, base: &Path) {
    // An empty path stays empty (unset: a `releases_only` project has none).
    let rebase = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    rebase(&mut c.data_dir);
    c.plugins.dirs.iter_mut().for_each(rebase);
    for d in &mut c.drivers {
        if let Some(p) = &mut d.path {
            rebase(p);
        }
    }
    for p in &mut c.projects {
        rebase(&mut p.path);
    }
    for prov in c.providers.values_mut() {
        if let Some(s) = &mut prov.api_key {
            s.rebase(base);
        }
    }
    if let Some(url) = &c.database.url {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let p = Path::new(rest);
            if p.is_relative() {
                c.database.url = Some(format!("sqlite://{}", base.join(p).display()));
            }
        }
    }
}
