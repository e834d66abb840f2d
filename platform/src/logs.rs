//! Each project's recent runtime log lines (turns, harness stops, errors), for `karta logs`: a
//! `tracing` layer keeps every event at info or above that carries a `project` field, so the
//! one log call feeds both the server log and the project's. Bounded: [`LINES_PER_PROJECT`]
//! lines per project, [`MAX_PROJECTS`] projects (the least recently written is dropped).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept per project.
pub const LINES_PER_PROJECT: usize = 500;
/// Projects kept.
pub const MAX_PROJECTS: usize = 1000;
/// New lines a slow follower may lag behind before it skips ahead.
const FOLLOW_BUFFER: usize = 1024;
/// Longest line kept, in bytes (longer ones are cut).
const MAX_LINE: usize = 2048;

/// A project's line.
#[derive(Clone, Debug)]
pub struct Line {
    /// The project id.
    pub project: Arc<str>,
    /// The formatted line.
    pub text: Arc<str>,
}

struct Kept {
    lines: VecDeque<Arc<str>>,
    touched: u64,
}

/// The kept lines and the live feed.
pub struct ProjectLogs {
    kept: Mutex<(HashMap<Arc<str>, Kept>, u64)>,
    feed: broadcast::Sender<Line>,
}

/// The process's project logs.
pub fn global() -> &'static ProjectLogs {
    static LOGS: OnceLock<ProjectLogs> = OnceLock::new();
    LOGS.get_or_init(|| ProjectLogs {
        kept: Mutex::new((HashMap::new(), 0)),
        feed: broadcast::channel(FOLLOW_BUFFER).0,
    })
}

impl ProjectLogs {
    fn push(&self, project: &str, text: String) {
        let line = Line {
            project: Arc::from(project),
            text: Arc::from(text),
        };
        {
            let mut guard = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let (map, clock) = &mut *guard;
            *clock += 1;
            let now = *clock;
            if !map.contains_key(project) && map.len() >= MAX_PROJECTS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, k)| k.touched)
                    .map(|(p, _)| p.clone())
                {
                    map.remove(&oldest);
                }
            }
            let kept = map.entry(line.project.clone()).or_insert_with(|| Kept {
                lines: VecDeque::new(),
                touched: now,
            });
            kept.touched = now;
            if kept.lines.len() >= LINES_PER_PROJECT {
                kept.lines.pop_front();
            }
            kept.lines.push_back(line.text.clone());
        }
        let _ = self.feed.send(line);
    }

    /// The project's kept lines, oldest first.
    pub fn recent(&self, project: &str) -> Vec<Arc<str>> {
        let guard = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .0
            .get(project)
            .map(|k| k.lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// New lines of every project, as they are written.
    pub fn follow(&self) -> broadcast::Receiver<Line> {
        self.feed.subscribe()
    }
}

#[derive(Default)]
struct Fields {
    project: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "project" => self.project = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "project" => self.project = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// The layer that feeds [`global`].
pub struct ProjectLayer;

impl<S: Subscriber> Layer<S> for ProjectLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::INFO {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(project) = f.project else { return };
        let mut text = format!(
            "{} {:<5} {}{}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            event.metadata().level(),
            f.message,
            f.rest
        )
        .replace(['\n', '\r'], " ");
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        global().push(&project, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_with_a_project_are_kept_per_project_and_bounded() {
        let sub = tracing_subscriber::registry().with(ProjectLayer);
        let mut live = global().follow();
        tracing::subscriber::with_default(sub, || {
            tracing::info!(project = "prj_t1", session = "s1", "turn started");
            tracing::debug!(project = "prj_t1", "too chatty to keep");
            tracing::warn!(project = "prj_t2", "other project");
            tracing::info!("no project: server log only");
            for i in 0..LINES_PER_PROJECT + 5 {
                tracing::info!(project = "prj_t3", n = i, "line");
            }
        });
        let one = global().recent("prj_t1");
        assert_eq!(one.len(), 1);
        assert!(
            one[0].contains("INFO  turn started session=s1"),
            "{}",
            one[0]
        );
        assert_eq!(global().recent("prj_t2").len(), 1);
        let three = global().recent("prj_t3");
        assert_eq!(three.len(), LINES_PER_PROJECT);
        assert!(three[0].ends_with("n=5"), "{}", three[0]);
        assert_eq!(&*live.try_recv().unwrap().project, "prj_t1");
    }
}
