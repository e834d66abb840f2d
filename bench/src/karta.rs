//! Karta under test: its workspace (config, app, data, database), the `karta serve` child, the CLI.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::{Method, StatusCode};

use crate::client::Conn;
use crate::system::{free_addr, run_checked, scrub_karta_env, ChildGuard};

/// The operator token the bench gives Karta.
pub const ADMIN_TOKEN: &str = "bench";
/// The tenant the bench's clients belong to.
pub const TENANT: &str = "bench";
/// PostgreSQL server the bench creates databases in, unless `KARTA_BENCH_PG_URL` names another.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long `karta serve` may take to answer on both listeners.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `karta` binary.
    pub karta: PathBuf,
    /// The echo driver plugin.
    pub echo_plugin: PathBuf,
}

/// A store Karta runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite in the data folder.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

impl Db {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        }
    }
}

/// A PostgreSQL database created for one measurement; dropped with `dropdb` on drop.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create() -> anyhow::Result<PgDatabase> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let admin_url =
            std::env::var("KARTA_BENCH_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let name = format!(
            "karta_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(
            Command::new("createdb")
                .arg(format!("--maintenance-db={admin_url}"))
                .arg(&name),
            "createdb",
        )?;
        // Connection options (`?sslmode=disable`, a socket `host=`) carry over to the new database.
        let (path, query) = match admin_url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (admin_url.as_str(), None),
        };
        let (base, _) = path
            .rsplit_once('/')
            .with_context(|| format!("KARTA_BENCH_PG_URL `{admin_url}` has no database part"))?;
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        Ok(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let result = run_checked(
            Command::new("dropdb")
                .arg(format!("--maintenance-db={}", self.admin_url))
                .arg("--if-exists")
                .arg("--force")
                .arg(&self.name),
            "dropdb",
        );
        if let Err(e) = result {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A temporary folder with Karta's config, a one-file echo app, the data folder and the store.
pub struct Workspace {
    bins: Binaries,
    pg: Option<PgDatabase>,
    /// `karta.platform.toml`.
    pub config: PathBuf,
    app: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A fresh workspace (and a fresh PostgreSQL database for [`Db::Postgres`]).
    pub fn new(bins: &Binaries, db: Db) -> anyhow::Result<Workspace> {
        let dir = tempfile::Builder::new()
            .prefix("karta-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        // Sandboxed harnesses (tenant uids) must be able to enter the data folder's parents.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let app = dir.path().join("app");
        std::fs::create_dir(&app).context("cannot create the app folder")?;
        std::fs::write(
            app.join("ECHO.md"),
            "# bench\n\nServed by the echo driver.\n",
        )
        .context("cannot write ECHO.md")?;
        let pg = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(PgDatabase::create()?),
        };
        Ok(Workspace {
            bins: bins.clone(),
            pg,
            config: dir.path().join("karta.platform.toml"),
            data: dir.path().join("data"),
            app,
            dir,
        })
    }

    /// The workspace folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config: tenant `bench` with one project, plus `bulk` projects of tenant `bulk`
    /// (all on the same app folder).
    pub fn write_config(&self, bulk: usize) -> anyhow::Result<()> {
        let text = config_text(
            &self.bins.echo_plugin,
            &self.data,
            self.pg.as_ref().map(|p| p.url.as_str()),
            &self.app,
            bulk,
        );
        std::fs::write(&self.config, text)
            .with_context(|| format!("cannot write {}", self.config.display()))
    }

    /// `karta --config <config> <args>` with the bench's environment.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.karta);
        scrub_karta_env(&mut cmd)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("KARTA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KARTA_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `karta config apply`; returns how long it took.
    pub fn apply(&self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        run_checked(&mut self.cli(&["config", "apply"]), "karta config apply")?;
        Ok(start.elapsed())
    }
}

/// Escapes a TOML basic string.
fn toml_str(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

fn config_text(
    plugin: &Path,
    data: &Path,
    db_url: Option<&str>,
    app: &Path,
    bulk: usize,
) -> String {
    let app = toml_str(&app.to_string_lossy());
    let mut t = format!("data_dir = {}\n\n", toml_str(&data.to_string_lossy()));
    // The bench drives thousands of sessions at once through a driver that holds no process:
    // lift the warm-harness caps. KARTA_BENCH_RUNTIME replaces this block (set it empty for a
    // karta binary older than these settings).
    let runtime = std::env::var("KARTA_BENCH_RUNTIME").unwrap_or_else(|_| {
        "max_warm_harnesses = 1000000\nmax_warm_harnesses_per_tenant = 1000000\n".into()
    });
    if !runtime.trim().is_empty() {
        let _ = writeln!(t, "[runtime]\n{runtime}");
    }
    if let Some(url) = db_url {
        let _ = writeln!(t, "[database]\nurl = {}\n", toml_str(url));
    }
    let _ = writeln!(
        t,
        "[[drivers]]\npath = {}\nsettings = {{ delay_ms = 0 }}\n",
        toml_str(&plugin.to_string_lossy())
    );
    let _ = writeln!(t, "[[tenants]]\nslug = \"{TENANT}\"\nname = \"Bench\"\n");
    let _ = writeln!(
        t,
        "[[projects]]\ntenant = \"{TENANT}\"\nslug = \"hello\"\npath = {app}\n"
    );
    if bulk > 0 {
        t.push_str("[[tenants]]\nslug = \"bulk\"\nname = \"Bulk\"\n\n");
    }
    for i in 0..bulk {
        let _ = writeln!(
            t,
            "[[projects]]\ntenant = \"bulk\"\nslug = \"p-{i:05}\"\npath = {app}\n"
        );
    }
    t
}

/// A running `karta serve`; killed on drop, before its workspace is removed.
pub struct Karta {
    child: ChildGuard,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// An API key of tenant `bench`.
    pub key: Arc<str>,
    /// Config, app, data and store.
    pub ws: Workspace,
}

impl Karta {
    /// Starts Karta on a fresh workspace with `bulk` extra projects, waits until it answers and
    /// creates an API key.
    pub async fn start(bins: &Binaries, db: Db, bulk: usize) -> anyhow::Result<Karta> {
        Self::start_env(bins, db, bulk, &[]).await
    }

    /// [`Karta::start`] with extra environment for the server (configuration overrides).
    pub async fn start_env(
        bins: &Binaries,
        db: Db,
        bulk: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Karta> {
        let ws = Workspace::new(bins, db)?;
        ws.write_config(bulk)?;
        let (public, admin) = (free_addr()?, free_addr()?);
        let log_path = ws.path().join("karta.log");
        let log = std::fs::File::create(&log_path).context("cannot create karta.log")?;
        let child = ws
            .cli(&["serve", "--listen", &public.to_string()])
            .envs(env.iter().copied())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bins.karta.display()))?;
        let mut child = ChildGuard::new(child, "karta serve");
        if let Err(e) = wait_ready(&mut child, public, admin).await {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("{e:#}; karta's log:\n{}", tail(&log, 40));
        }
        let key = create_key(&ws)?;
        Ok(Karta {
            child,
            public,
            admin,
            key: Arc::from(key),
            ws,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Karta's resident set size in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        crate::system::rss_kib(self.pid())
    }

    /// Fails when the server has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.child.check_running()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut conn) = Conn::connect(addr).await else {
        return false;
    };
    conn.call(Method::GET, "/healthz", None, None)
        .await
        .is_ok_and(|(s, _)| s.is_success())
}

async fn wait_ready(
    child: &mut ChildGuard,
    public: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        child.check_running()?;
        if healthy(public).await && healthy(admin).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("karta did not answer on {public} and {admin} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `karta keys create --tenant bench`; the key is the last line of stdout.
fn create_key(ws: &Workspace) -> anyhow::Result<String> {
    let out = run_checked(
        &mut ws.cli(&["keys", "create", "--tenant", TENANT]),
        "karta keys create",
    )?;
    let stdout = String::from_utf8(out.stdout).context("karta keys create: stdout is not UTF-8")?;
    stdout
        .lines()
        .last()
        .map(|l| l.trim().to_string())
        .filter(|k| !k.is_empty())
        .context("karta keys create printed no key")
}

/// `POST /admin/v1/config/reload`; returns the status, the body and how long it took.
pub async fn reload(admin: SocketAddr) -> anyhow::Result<(StatusCode, String, Duration)> {
    let mut conn = Conn::connect(admin).await?;
    let start = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(600),
        conn.call(
            Method::POST,
            "/admin/v1/config/reload",
            Some(ADMIN_TOKEN),
            None,
        ),
    )
    .await
    .context("the reload did not answer within 10 minutes")??;
    Ok((status, crate::client::snippet(&body), start.elapsed()))
}
