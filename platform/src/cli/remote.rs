//! Commands that talk to a running Karta over its HTTP API with an org API key: `login`,
//! `deploy`, `releases`, `rollback`, `logs`.
//!
//! The server is `--server`, else `KARTA_SERVER`, else the one `karta login` saved, else
//! `http://127.0.0.1:8000`; the key is `KARTA_API_KEY`, else the one `karta login` saved (in
//! `$XDG_CONFIG_HOME/karta/credentials.json`, or `~/.config/...`; `KARTA_CREDENTIALS` overrides
//! the path), readable by its owner only.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the server is.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// The Karta server (default: `KARTA_SERVER`, the one `karta login` saved, or
    /// http://127.0.0.1:8000).
    #[arg(long, global = true)]
    pub server: Option<String>,
}

/// Commands that use a server.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Save an API key (from `KARTA_API_KEY`, or read from stdin) for the commands below.
    Login,
    /// Pack a harness-app folder (honouring .gitignore), upload it as a new release and make it
    /// live (or a preview); prints the version and URL.
    Deploy {
        /// The app folder.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The project (slug or id).
        #[arg(long)]
        project: String,
        /// Publish a preview: served under `<project>@v<N>` until it expires.
        #[arg(long)]
        preview: bool,
        /// The commit the folder is at (default: the archive's digest).
        #[arg(long)]
        commit: Option<String>,
        /// What changed.
        #[arg(long, short)]
        message: Option<String>,
        /// Publish without making it live (roll forward to it later).
        #[arg(long)]
        no_activate: bool,
    },
    /// A project's releases, newest first.
    Releases {
        /// The project.
        project: String,
    },
    /// Make an earlier (or later) release live at once.
    Rollback {
        /// The project.
        project: String,
        /// The version: `v3` or `3`.
        #[arg(long)]
        to: String,
    },
    /// The project's runtime log: turns, harness starts and stops, errors.
    Logs {
        /// The project.
        project: String,
        /// Keep printing new lines as they come.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct Credentials {
    server: String,
    api_key: String,
}

fn credentials_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KARTA_CREDENTIALS") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("karta/credentials.json"))
}

fn saved() -> Option<Credentials> {
    let text = std::fs::read_to_string(credentials_path()?).ok()?;
    serde_json::from_str(&text).ok()
}

fn server(args: &ServerArgs) -> String {
    args.server
        .clone()
        .or_else(|| std::env::var("KARTA_SERVER").ok())
        .or_else(|| saved().map(|c| c.server))
        .unwrap_or_else(|| "http://127.0.0.1:8000".into())
        .trim_end_matches('/')
        .to_string()
}

/// The key for `server`: `KARTA_API_KEY`, else the saved one when it was saved for that server
/// (a saved key is never sent to another).
fn api_key(server: &str) -> anyhow::Result<String> {
    if let Ok(k) = std::env::var("KARTA_API_KEY") {
        if !k.trim().is_empty() {
            return Ok(k.trim().to_string());
        }
    }
    match saved() {
        Some(c) if c.server == server => Ok(c.api_key),
        Some(c) => bail!(
            "the saved key is for {}, not {server}: set KARTA_API_KEY or run `karta login --server {server}`",
            c.server
        ),
        None => bail!("no API key: set KARTA_API_KEY or run `karta login`"),
    }
}

/// A client of one server.
struct Remote {
    server: String,
    key: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// The message of an error answer.
fn problem(status: reqwest::StatusCode, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let msg = v["detail"][0]["msg"]
        .as_str()
        .or_else(|| v["detail"].as_str())
        .or_else(|| v["reason"].as_str())
        .unwrap_or(body);
    format!("the server answered {status}: {msg}")
}

impl Remote {
    fn new(args: &ServerArgs, key: String) -> anyhow::Result<Self> {
        Ok(Self {
            server: server(args),
            key,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// Sends and reads a JSON answer; an error status becomes the server's message.
    fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        self.rt.block_on(async {
            let r = req
                .bearer_auth(&self.key)
                .send()
                .await
                .with_context(|| format!("cannot reach {}", self.server))?;
            let status = r.status();
            let text = r.text().await?;
            if !status.is_success() {
                bail!(problem(status, &text));
            }
            Ok(serde_json::from_str(&text)?)
        })
    }
}

/// Runs a command.
pub fn run(args: &ServerArgs, cmd: RemoteCommand) -> anyhow::Result<()> {
    if let RemoteCommand::Login = cmd {
        return login(args);
    }
    let r = Remote::new(args, api_key(&server(args))?)?;
    match cmd {
        RemoteCommand::Login => Ok(()),
        RemoteCommand::Deploy {
            path,
            project,
            preview,
            commit,
            message,
            no_activate,
        } => deploy(&r, &path, &project, preview, commit, message, !no_activate),
        RemoteCommand::Releases { project } => {
            let v = r.json(
                r.http
                    .get(r.url(&format!("/v1/projects/{project}/releases"))),
            )?;
            println!(
                "{:<8} {:<11} {:<11} {:<10} {:<14} CREATED",
                "VERSION", "STATUS", "KIND", "BUILD", "COMMIT"
            );
            for rel in v["releases"].as_array().into_iter().flatten() {
                let commit: String = rel["commit_sha"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(12)
                    .collect();
                println!(
                    "{:<8} {:<11} {:<11} {:<10} {:<14} {}",
                    rel["name"].as_str().unwrap_or_default(),
                    rel["status"].as_str().unwrap_or_default(),
                    rel["kind"].as_str().unwrap_or_default(),
                    rel["build_kind"].as_str().unwrap_or_default(),
                    commit,
                    rel["created_at"].as_str().unwrap_or_default(),
                );
            }
            Ok(())
        }
        RemoteCommand::Rollback { project, to } => {
            let v = r.json(
                r.http
                    .post(r.url(&format!("/v1/projects/{project}/rollback")))
                    .json(&serde_json::json!({ "to": to })),
            )?;
            let now = v["current_release"]["name"].as_str().unwrap_or("?");
            match v["previous_release"]["name"].as_str() {
                Some(was) => println!("{project}: {now} is live (was {was})"),
                None => println!("{project}: {now} is live"),
            }
            Ok(())
        }
        RemoteCommand::Logs { project, follow } => logs(&r, &project, follow),
    }
}

fn login(args: &ServerArgs) -> anyhow::Result<()> {
    let key = match std::env::var("KARTA_API_KEY") {
        Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
        _ => {
            if std::io::stdin().is_terminal() {
                eprint!("API key: ");
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
    };
    if key.is_empty() {
        bail!("no API key given (set KARTA_API_KEY or type it on stdin)");
    }
    let r = Remote::new(args, key.clone())?;
    let v = r
        .json(r.http.get(r.url("/v1/projects")))
        .context("the key was not accepted")?;
    let path = credentials_path().context("no HOME to keep the credentials in")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let creds = Credentials {
        server: r.server.clone(),
        api_key: key,
    };
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?
    };
    // `mode` applies only to a new file: an older one is made private too.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(serde_json::to_string_pretty(&creds)?.as_bytes())?;
    let n = v["data"].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "Logged in to {} ({n} project(s)); the key is saved in {}",
        r.server,
        path.display()
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn deploy(
    r: &Remote,
    dir: &Path,
    project: &str,
    preview: bool,
    commit: Option<String>,
    message: Option<String>,
    activate: bool,
) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let tmp = tempfile_path()?;
    let packed = super::pack::pack(dir, &tmp)?;
    let size = std::fs::metadata(&tmp)?.len();
    let tty = std::io::stderr().is_terminal();
    eprintln!(
        "Packed {} file(s), {} ({} compressed)",
        packed.files,
        human(packed.bytes),
        human(size)
    );
    let bar = if tty {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "Uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.tick();
        b
    } else {
        eprintln!("Uploading {} to {}", human(size), r.server);
        indicatif::ProgressBar::hidden()
    };
    let mut query: Vec<(&str, String)> = vec![
        ("preview", preview.to_string()),
        ("activate", activate.to_string()),
    ];
    if let Some(c) = commit {
        query.push(("commit_sha", c));
    }
    if let Some(m) = message {
        query.push(("message", m));
    }
    let file = std::fs::File::open(&tmp)?;
    let progress = bar.clone();
    // The body is read in chunks as it is sent, moving the bar.
    let chunks = futures_util::stream::unfold(file, move |mut f| {
        let progress = progress.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            match f.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(buf), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        }
    });
    let result = r.json(
        r.http
            .post(r.url(&format!("/v1/projects/{project}/releases")))
            .query(&query)
            .header("content-type", "application/gzip")
            .header("content-length", size)
            .body(reqwest::Body::wrap_stream(chunks)),
    );
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&tmp);
    let v = result?;
    if !tty {
        eprintln!("Uploaded.");
    }
    let name = v["name"].as_str().unwrap_or("?");
    let status = v["status"].as_str().unwrap_or("?");
    let url = format!("{}{}", r.server, v["url"].as_str().unwrap_or_default());
    match (v["kind"].as_str(), status) {
        (Some("preview"), _) => println!(
            "Deployed {project} {name} as a preview until {}: {url}",
            v["expires_at"].as_str().unwrap_or("?")
        ),
        (_, "active") => println!("Deployed {project} {name}, live: {url}"),
        _ => println!("Deployed {project} {name} ({status}; `karta rollback {project} --to {name}` makes it live)"),
    }
    Ok(())
}

/// A new path for the archive in the temporary folder.
fn tempfile_path() -> anyhow::Result<PathBuf> {
    Ok(std::env::temp_dir().join(format!(
        "karta-deploy-{}-{}.tar.gz",
        std::process::id(),
        crate::store::random_base62(8)
    )))
}

fn logs(r: &Remote, project: &str, follow: bool) -> anyhow::Result<()> {
    let url = r.url(&format!("/v1/projects/{project}/logs?follow={follow}"));
    r.rt.block_on(async {
        use futures_util::StreamExt;
        let resp = r
            .http
            .get(url)
            .bearer_auth(&r.key)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", r.server))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!(problem(status, &text));
        }
        let mut body = resp.bytes_stream();
        let mut pending = Vec::new();
        let mut out = std::io::stdout();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk?);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                // SSE: `data:` lines carry the log lines; the rest is framing.
                if let Some(data) = line.trim_end().strip_prefix("data: ") {
                    writeln!(out, "{data}")?;
                    out.flush()?;
                }
            }
        }
        Ok(())
    })
}
