//! What an OpenCode harness app holds: agents in `.opencode/agent(s)/*.md`, the default agent in
//! `opencode.json` / `.opencode/opencode.jsonc`, skills in `.opencode/skills/` and `.claude/skills/`.

use std::path::{Path, PathBuf};

use karta_driver_api::{AgentInfo, Discovery, SkillInfo};
use karta_driver_kit::markdown::{frontmatter, line_in_message};
use serde::Deserialize;

/// OpenCode's built-in primary agents.
const BUILTIN: &[(&str, &str)] = &[
    ("build", "OpenCode's default agent: builds with every tool"),
    (
        "plan",
        "OpenCode's planning agent: asks before edits and commands",
    ),
];

/// `.opencode/` claims the app; an app with no harness signal at all falls to OpenCode too
/// (weakly, so any other driver's claim wins).
pub fn detect(app_dir: &Path) -> u32 {
    if app_dir.join(".opencode").is_dir() || app_dir.join("opencode.json").is_file() {
        100
    } else if app_dir.join(".claude").exists() || app_dir.join("CLAUDE.md").exists() {
        0
    } else {
        1
    }
}

#[derive(Deserialize)]
struct Front {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn read_front(path: &Path, required: bool) -> Result<Option<Front>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some((yaml, first)) = frontmatter(&text) else {
        return if required {
            Err(format!(
                "{}:1: expected YAML frontmatter between `---` lines",
                path.display()
            ))
        } else {
            Ok(None)
        };
    };
    serde_saphyr::from_str::<Front>(yaml)
        .map(Some)
        .map_err(|e| {
            let msg = e.to_string();
            let head = msg.lines().next().unwrap_or_default().to_string();
            match line_in_message(&msg) {
                Some(l) => format!(
                    "{}:{}: invalid frontmatter: {head}",
                    path.display(),
                    l + first - 1
                ),
                None => format!("{}: invalid frontmatter: {head}", path.display()),
            }
        })
}

fn md_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("md"))
        .collect();
    v.sort();
    v
}

/// `default_agent` from the app's OpenCode config, if it names one.
fn default_agent(app_dir: &Path) -> Result<Option<String>, String> {
    for f in [
        app_dir.join(".opencode/opencode.jsonc"),
        app_dir.join(".opencode/opencode.json"),
        app_dir.join("opencode.jsonc"),
        app_dir.join("opencode.json"),
    ] {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let v: serde_json::Value = json5::from_str(&text).map_err(|e| match e {
            json5::Error::Message { msg, location } => match location {
                Some(l) => format!("{}:{}: {msg}", f.display(), l.line),
                None => format!("{}: {msg}", f.display()),
            },
        })?;
        if let Some(a) = v["default_agent"].as_str() {
            return Ok(Some(a.to_string()));
        }
    }
    Ok(None)
}

/// Agents (built-in primaries plus the app's), the default agent, and skills.
pub fn discover(app_dir: &Path) -> Result<Discovery, String> {
    let mut agents: Vec<AgentInfo> = BUILTIN
        .iter()
        .map(|(n, d)| AgentInfo {
            name: n.to_string(),
            description: d.to_string(),
        })
        .collect();
    let mut files = md_files(&app_dir.join(".opencode/agent"));
    files.extend(md_files(&app_dir.join(".opencode/agents")));
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let front = read_front(&f, false)?;
        let (description, mode) = front
            .map(|fr| (fr.description.unwrap_or_default(), fr.mode))
            .unwrap_or_default();
        if let Some(m) = &mode {
            if !["primary", "subagent", "all"].contains(&m.as_str()) {
                return Err(format!(
                    "{}: mode must be primary, subagent or all, got `{m}`",
                    f.display()
                ));
            }
        }
        if let Some(existing) = agents.iter_mut().find(|a| a.name == name) {
            existing.description = description;
        } else {
            agents.push(AgentInfo { name, description });
        }
    }
    let default = default_agent(app_dir)?.unwrap_or_else(|| "build".into());
    if !agents.iter().any(|a| a.name == default) {
        return Err(format!(
            "the OpenCode config names default_agent `{default}`, which is not defined"
        ));
    }
    let mut skills = Vec::new();
    for root in [
        app_dir.join(".opencode/skills"),
        app_dir.join(".claude/skills"),
    ] {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let f = d.join("SKILL.md");
            if !f.is_file() {
                continue;
            }
            let front = read_front(&f, true)?.unwrap_or(Front {
                description: None,
                mode: None,
                name: None,
            });
            let dir_name = d
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            skills.push(SkillInfo {
                name: front.name.unwrap_or(dir_name),
                description: front.description.unwrap_or_default(),
            });
        }
    }
    Ok(Discovery {
        agents,
        skills,
        default_agent: Some(default),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, t) in files {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, t).unwrap();
        }
        d
    }

    #[test]
    fn agents_default_and_skills() {
        let d = app(&[
            (
                ".opencode/agents/returns.md",
                "---\ndescription: Handles returns\nmode: primary\n---\nYou handle returns.\n",
            ),
            (
                ".opencode/agent/review.md",
                "---\ndescription: Reviews\nmode: subagent\n---\nReview.\n",
            ),
            (
                ".opencode/opencode.jsonc",
                "// the default\n{ \"default_agent\": \"returns\", }\n",
            ),
            (
                ".opencode/skills/refunds/SKILL.md",
                "---\nname: refunds\ndescription: Refund lookups\n---\n",
            ),
        ]);
        assert_eq!(detect(d.path()), 100);
        let disc = discover(d.path()).unwrap();
        let names: Vec<_> = disc.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["build", "plan", "review", "returns"]);
        assert_eq!(disc.default_agent.as_deref(), Some("returns"));
        assert_eq!(disc.skills[0].name, "refunds");
    }

    #[test]
    fn detection_and_clear_errors() {
        let plain = app(&[("README.md", "x")]);
        assert_eq!(
            detect(plain.path()),
            1,
            "no signal falls to OpenCode, weakly"
        );
        let claude = app(&[("CLAUDE.md", "x")]);
        assert_eq!(detect(claude.path()), 0);
        let bad = app(&[(".opencode/agents/x.md", "---\nmode: sometimes\n---\n")]);
        assert!(discover(bad.path()).unwrap_err().contains("mode must be"));
        let bad = app(&[(".opencode/opencode.jsonc", "{\n  default_agent: ,\n}\n")]);
        let e = discover(bad.path()).unwrap_err();
        assert!(e.contains("opencode.jsonc:2"), "{e}");
        let bad = app(&[(".opencode/opencode.json", "{\"default_agent\": \"ghost\"}")]);
        assert!(discover(bad.path()).unwrap_err().contains("ghost"));
        let bad = app(&[(".opencode/agents/y.md", "---\ndescription: [oops\n---\n")]);
        assert!(discover(bad.path()).unwrap_err().contains("y.md"));
    }
}
