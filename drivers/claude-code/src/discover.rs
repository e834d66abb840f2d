//! What a Claude Code harness app holds: agents in `.claude/agents/*.md` and skills in
//! `.claude/skills/*/SKILL.md`, each with YAML frontmatter.

use std::path::Path;

use karta_driver_api::{AgentInfo, Discovery, SkillInfo};
use karta_driver_kit::markdown::{frontmatter, line_in_message};
use serde::Deserialize;

/// How strongly a folder is a Claude Code app.
pub fn detect(app_dir: &Path) -> u32 {
    if app_dir.join(".claude").is_dir() || app_dir.join("CLAUDE.md").is_file() {
        100
    } else {
        0
    }
}

#[derive(Deserialize)]
struct Front {
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Parses one agent or skill file; errors name the file and, for YAML errors, the line.
fn read_front(path: &Path) -> Result<Front, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (yaml, first_line) = frontmatter(&text).ok_or_else(|| {
        format!(
            "{}:1: expected YAML frontmatter between `---` lines",
            path.display()
        )
    })?;
    serde_saphyr::from_str::<Front>(yaml).map_err(|e| {
        let msg = e.to_string();
        match line_in_message(&msg) {
            Some(l) => format!(
                "{}:{}: invalid frontmatter: {}",
                path.display(),
                l + first_line - 1,
                first_line_of(&msg)
            ),
            None => format!(
                "{}: invalid frontmatter: {}",
                path.display(),
                first_line_of(&msg)
            ),
        }
    })
}

fn first_line_of(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn md_files(dir: &Path) -> Vec<std::path::PathBuf> {
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

/// Agents and skills of the app. The main Claude Code thread (with `CLAUDE.md`) is the agent
/// `default`; every `.claude/agents/*.md` adds one.
pub fn discover(app_dir: &Path) -> Result<Discovery, String> {
    let mut agents = vec![AgentInfo {
        name: "default".into(),
        description: "The main Claude Code agent (CLAUDE.md)".into(),
    }];
    for f in md_files(&app_dir.join(".claude/agents")) {
        let front = read_front(&f)?;
        let name = front
            .name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| format!("{}: frontmatter has no `name`", f.display()))?;
        if agents.iter().any(|a| a.name == name) {
            return Err(format!("{}: agent `{name}` is defined twice", f.display()));
        }
        agents.push(AgentInfo {
            name,
            description: front.description.unwrap_or_default(),
        });
    }
    let mut skills = Vec::new();
    if let Ok(entries) = std::fs::read_dir(app_dir.join(".claude/skills")) {
        let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for d in dirs {
            let f = d.join("SKILL.md");
            if !f.is_file() {
                continue;
            }
            let front = read_front(&f)?;
            let fallback = d
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            skills.push(SkillInfo {
                name: front
                    .name
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or(fallback),
                description: front.description.unwrap_or_default(),
            });
        }
    }
    Ok(Discovery {
        agents,
        skills,
        default_agent: Some("default".into()),
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
    fn agents_and_skills_are_discovered() {
        let d = app(&[
            ("CLAUDE.md", "# App"),
            (".claude/agents/returns.md", "---\nname: returns-desk\ndescription: Handles returns\ntools:\n  read: true\n---\nYou handle returns.\n"),
            (".claude/skills/refunds/SKILL.md", "---\nname: refund-status\ndescription: Looks up refunds\n---\nbody\n"),
        ]);
        assert_eq!(detect(d.path()), 100);
        let disc = discover(d.path()).unwrap();
        let names: Vec<_> = disc.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["default", "returns-desk"]);
        assert_eq!(disc.agents[1].description, "Handles returns");
        assert_eq!(disc.skills[0].name, "refund-status");
    }

    #[test]
    fn malformed_frontmatter_names_file_and_line() {
        let d = app(&[(
            ".claude/agents/bad.md",
            "---\nname: ok\ndescription: [unclosed\n---\nbody\n",
        )]);
        let e = discover(d.path()).unwrap_err();
        assert!(e.contains("bad.md:"), "{e}");
        assert!(e.contains("invalid frontmatter"), "{e}");
        let d = app(&[(".claude/agents/none.md", "no frontmatter here\n")]);
        let e = discover(d.path()).unwrap_err();
        assert!(e.contains("none.md:1: expected YAML frontmatter"), "{e}");
        let d = app(&[(".claude/agents/anon.md", "---\ndescription: x\n---\n")]);
        assert!(discover(d.path()).unwrap_err().contains("has no `name`"));
        assert_eq!(detect(d.path()), 100);
        assert_eq!(detect(Path::new("/nonexistent")), 0);
    }
}
