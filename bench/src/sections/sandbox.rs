//! `sandbox`: what confinement costs. Per harness process: launching `/usr/bin/true` through the
//! plugin API's launcher with each backend (bubblewrap as the tenant's uid, with the in-sandbox
//! forwarder, with cgroup limits) against no sandbox. Per turn: echo turns (1 client) with
//! `[sandbox] backend = "none"` against the default, so the host's per-turn preparation (tenant
//! uid, spec, gateway token) shows.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use karta_driver_kit::sandbox::{
    self, LaunchOptions, NetworkMode, SandboxBackend, SandboxLimits, SandboxSpec,
};

use crate::karta::{Db, Karta};
use crate::load::{self, Limits, Worker};
use crate::report::{ms, Report};
use crate::sections::Ctx;
use crate::stats::Summary;

fn mkdir(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Launch-to-exit times of `/usr/bin/true`, in microseconds.
fn launches(spec: &SandboxSpec, opts: &LaunchOptions, runs: usize) -> anyhow::Result<Summary> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut cmd = Command::new("/usr/bin/true");
        cmd.current_dir(&opts.workspace);
        let start = Instant::now();
        let mut h = sandbox::launch(spec, cmd, opts).context("launch")?;
        let status = h.wait()?;
        drop(h);
        anyhow::ensure!(status.success(), "the sandboxed process failed: {status}");
        times.push(crate::stats::micros(start.elapsed()));
    }
    Ok(Summary::of(&mut times))
}

/// Runs the section.
pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    report.heading("sandbox");
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("bubblewrap is not installed (scripts/ensure-bubblewrap.sh installs it)")?;
    let runs = if ctx.plan.quick { 10 } else { 50 };
    let dir = tempfile::Builder::new()
        .prefix("karta-bench-sbx-")
        .tempdir()?;
    let root = dir.path();
    mkdir(root, 0o711)?;
    for d in ["bin", "gateway", "run", "ws", "ws.home"] {
        mkdir(&root.join(d), 0o711)?;
    }
    let helper = sandbox::stage(&root.join("bin"), &ctx.bins.karta)?;
    // SAFETY: geteuid has no preconditions.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(200_000);
    let s = |p: &Path| Some(p.display().to_string());
    let base = SandboxSpec {
        backend: SandboxBackend::Bubblewrap,
        bwrap: Some(bwrap.into()),
        uid,
        gid: uid,
        network: NetworkMode::None,
        stage_dir: s(&root.join("bin")),
        helper: s(&helper),
        gateway_dir: s(&root.join("gateway")),
        proxy_dir: None,
        gateway_port: 4100,
        run_dir: s(&root.join("run")),
        limits: SandboxLimits::default(),
        cgroup: None,
    };
    let cgroup = sandbox::detect_cgroup(None);
    let configs = [
        (
            "no sandbox (PID namespace only)",
            SandboxSpec {
                backend: SandboxBackend::None,
                ..base.clone()
            },
        ),
        ("bubblewrap, network none", base.clone()),
        (
            "bubblewrap, model-only (gateway forwarder)",
            SandboxSpec {
                network: NetworkMode::ModelOnly,
                ..base.clone()
            },
        ),
        (
            "bubblewrap, model-only, cgroup memory + pids limits",
            SandboxSpec {
                network: NetworkMode::ModelOnly,
                limits: SandboxLimits {
                    memory_mb: Some(2048),
                    processes: Some(512),
                    open_files: Some(4096),
                    ..SandboxLimits::default()
                },
                cgroup: cgroup.clone(),
                ..base.clone()
            },
        ),
    ];
    let opts = LaunchOptions {
        workspace: root.join("ws"),
        home: root.join("ws.home"),
        ..LaunchOptions::default()
    };
    report.note(&format!(
        "Per harness process: `/usr/bin/true` started through `karta_driver_kit::sandbox::launch` \
         and waited for, {runs} runs each, sequentially (launch to exit: fork, bwrap's namespaces \
         and mounts, the forwarder's start, cgroup set-up and removal). Sandbox uid: {}. cgroups: {}.",
        uid.map_or("Karta's own".into(), |u| u.to_string()),
        if cgroup.is_some() { "found" } else { "none writable" },
    ));
    report.table(&["launch", "runs", "p50", "p99", "max", "added p50"]);
    let mut first = None;
    for (name, spec) in configs {
        let opts = opts.clone();
        let summary = tokio::task::spawn_blocking(move || launches(&spec, &opts, runs)).await??;
        let added = match first {
            None => {
                first = Some(summary.p50);
                "-".to_string()
            }
            Some(b) => format!("{} ms", ms(summary.p50.saturating_sub(b))),
        };
        report.row(&[
            name.into(),
            summary.count.to_string(),
            ms(summary.p50),
            ms(summary.p99),
            ms(summary.max),
            added,
        ]);
    }
    report.end_table();

    report.note(&format!(
        "Per turn: echo driver (no harness process), 1 client, non-streaming turns for {:?} after \
         {:?} of warm-up, on SQLite; the difference is the host's per-turn sandbox preparation.",
        ctx.plan.measure, ctx.plan.warmup
    ));
    report.table(&["[sandbox] backend", "turns/s", "p50", "p99", "added p50"]);
    let mut none_p50 = 0;
    for backend in ["none", "bubblewrap"] {
        let karta = Karta::start_env(
            &ctx.bins,
            Db::Sqlite,
            0,
            &[("KARTA_SANDBOX__BACKEND", backend)],
        )
        .await?;
        let limits = Limits::timed(ctx.plan.warmup, ctx.plan.measure);
        let (addr, key) = (karta.public, karta.key.clone());
        let workers = Worker::many(1, || Worker::karta(addr, Arc::clone(&key), false)).await?;
        let r = load::run(workers, limits).await?;
        let lat = Summary::latency(&r.samples);
        let added = if backend == "none" {
            none_p50 = lat.p50;
            "-".to_string()
        } else {
            format!(
                "{} ms",
                crate::sections::turns::signed_ms(lat.p50, none_p50)
            )
        };
        report.row(&[
            backend.into(),
            format!("{:.0}", r.rps()),
            ms(lat.p50),
            ms(lat.p99),
            added,
        ]);
    }
    report.end_table();
    Ok(())
}
