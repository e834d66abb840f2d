//! Semantic checks on the merged configuration (field rules via `validator`, then cross-references).

use std::collections::BTreeSet;

use validator::{Validate, ValidationError, ValidationErrors, ValidationErrorsKind};

use super::{DriverConfig, PlatformConfig, ProjectConfig, TenantConfig};

/// A problem as (key path segments, message).
pub(crate) type Problem = (Vec<String>, String);

/// Slugs are lowercase ASCII letters, digits and single dashes, 1 to 63 characters.
pub fn validate_slug(s: &str) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        let mut e = ValidationError::new("slug");
        e.message = Some(
            format!("`{s}` is not a valid slug (lowercase letters, digits and dashes, 1 to 63 characters)")
                .into(),
        );
        Err(e)
    }
}

#[derive(Validate)]
struct TenantRules<'a> {
    #[validate(custom(function = "validate_slug"))]
    slug: &'a str,
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    name: &'a str,
}

#[derive(Validate)]
struct ProjectRules<'a> {
    #[validate(custom(function = "validate_slug"))]
    slug: &'a str,
    #[validate(length(min = 1, message = "names no tenant"))]
    tenant: &'a str,
}

fn collect(prefix: &[String], errs: &ValidationErrors, out: &mut Vec<Problem>) {
    for (field, kind) in errs.errors() {
        let mut path = prefix.to_vec();
        path.push(field.to_string());
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let msg = e
                        .message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| format!("fails rule `{}`", e.code));
                    out.push((path.clone(), msg));
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(&path, inner, out),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    collect(&p, inner, out);
                }
            }
        }
    }
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn check_tenants(tenants: &[TenantConfig], out: &mut Vec<Problem>) {
    let mut seen = BTreeSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let idx = i.to_string();
        let rules = TenantRules {
            slug: &t.slug,
            name: &t.name,
        };
        if let Err(e) = rules.validate() {
            collect(&key(&["tenants", &idx]), &e, out);
        }
        if !seen.insert(t.slug.as_str()) {
            out.push((
                key(&["tenants", &idx, "slug"]),
                format!("tenant `{}` is declared twice", t.slug),
            ));
        }
    }
}

fn check_projects(tenants: &[TenantConfig], projects: &[ProjectConfig], out: &mut Vec<Problem>) {
    let tenant_slugs: BTreeSet<&str> = tenants.iter().map(|t| t.slug.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (i, p) in projects.iter().enumerate() {
        let idx = i.to_string();
        let rules = ProjectRules {
            slug: &p.slug,
            tenant: &p.tenant,
        };
        if let Err(e) = rules.validate() {
            collect(&key(&["projects", &idx]), &e, out);
        }
        if !p.tenant.is_empty() && !tenant_slugs.contains(p.tenant.as_str()) {
            out.push((
                key(&["projects", &idx, "tenant"]),
                format!(
                    "names tenant `{}`, which no [[tenants]] entry declares",
                    p.tenant
                ),
            ));
        }
        if !seen.insert((p.tenant.as_str(), p.slug.as_str())) {
            out.push((
                key(&["projects", &idx, "slug"]),
                format!("project `{}/{}` is declared twice", p.tenant, p.slug),
            ));
        }
        for (h, hook) in p.hooks.iter().enumerate() {
            let hk = |f: &str| key(&["projects", &idx, "hooks", &h.to_string(), f]);
            if !crate::runtime::hooks::EVENTS.contains(&hook.event.as_str()) {
                out.push((
                    hk("event"),
                    format!(
                        "must be one of {}, got `{}`",
                        crate::runtime::hooks::EVENTS.join(", "),
                        hook.event
                    ),
                ));
            }
            match (&hook.webhook, &hook.command) {
                (Some(_), None) => {}
                (None, Some(c)) if !c.is_empty() => {}
                (None, Some(_)) => out.push((hk("command"), "must name a program".into())),
                _ => out.push((
                    hk("webhook"),
                    "set `webhook` or `command` (one of them)".into(),
                )),
            }
            if let Some(f) = &hook.on_failure {
                if f != "log" && f != "ignore" {
                    out.push((
                        hk("on_failure"),
                        format!("must be `log` or `ignore`, got `{f}`"),
                    ));
                }
            }
        }
        if p.releases_only {
            if !p.path.as_os_str().is_empty() {
                out.push((
                    key(&["projects", &idx, "path"]),
                    "a `releases_only` project has no folder: drop `path` or `releases_only`"
                        .into(),
                ));
            }
        } else if p.path.as_os_str().is_empty() {
            out.push((
                key(&["projects", &idx, "path"]),
                "is required (or `releases_only = true` for a project served from its releases)"
                    .into(),
            ));
        } else if !p.path.is_dir() {
            out.push((
                key(&["projects", &idx, "path"]),
                format!("`{}` is not a folder", p.path.display()),
            ));
        }
    }
}

fn check_drivers(drivers: &[DriverConfig], out: &mut Vec<Problem>) {
    for (i, d) in drivers.iter().enumerate() {
        let idx = i.to_string();
        if d.name.is_none() && d.path.is_none() {
            out.push((
                key(&["drivers", &idx]),
                "needs `name` (a first-party driver) or `path` (a plugin library)".into(),
            ));
        }
    }
}

/// Checks the configuration; returns every problem found.
pub(crate) fn validate(c: &PlatformConfig) -> Result<(), Vec<Problem>> {
    let mut out = Vec::new();
    check_tenants(&c.tenants, &mut out);
    check_projects(&c.tenants, &c.projects, &mut out);
    check_drivers(&c.drivers, &mut out);
    check_policies(c, &mut out);
    check_budgets(c, &mut out);
    check_prices(c, &mut out);
    check_webhooks(c, &mut out);
    check_api_keys(c, &mut out);
    if c.server.heartbeat_seconds == 0 {
        out.push((
            key(&["server", "heartbeat_seconds"]),
            "must be at least 1".into(),
        ));
    }
    for (k, addr) in [
        ("listen", &c.server.listen),
        ("admin_listen", &c.server.admin_listen),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            out.push((
                key(&["server", k]),
                format!("`{addr}` is not an address like 127.0.0.1:8000"),
            ));
        }
    }
    if let Some(url) = &c.database.url {
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite://"))
        {
            out.push((
                key(&["database", "url"]),
                "must start with postgres:// or sqlite://".into(),
            ));
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

fn check_policies(c: &PlatformConfig, out: &mut Vec<Problem>) {
    let mut names = std::collections::HashSet::new();
    for (i, p) in c.policies.iter().enumerate() {
        let at = |field: &str| vec!["policies".to_string(), i.to_string(), field.to_string()];
        if p.name.trim().is_empty() {
            out.push((at("name"), "is required".into()));
        } else if !names.insert(p.name.as_str()) {
            out.push((at("name"), format!("`{}` is declared twice", p.name)));
        }
        if !c.tenants.iter().any(|t| t.slug == p.tenant) {
            out.push((
                at("tenant"),
                format!("no tenant `{}` is declared", p.tenant),
            ));
        }
        if let Some(project) = &p.project {
            if !c
                .projects
                .iter()
                .any(|x| x.tenant == p.tenant && &x.slug == project)
            {
                out.push((
                    at("project"),
                    format!("tenant `{}` declares no project `{project}`", p.tenant),
                ));
            }
        }
        if p.max_message_length == Some(0) || p.max_messages_per_session == Some(0) {
            out.push((at("name"), "limits must be at least 1".into()));
        }
        for (j, pat) in p.deny_patterns.iter().enumerate() {
            if let Err(e) = regex::RegexBuilder::new(pat).size_limit(1 << 20).build() {
                out.push((
                    vec![
                        "policies".to_string(),
                        i.to_string(),
                        "deny_patterns".to_string(),
                        j.to_string(),
                    ],
                    format!("not a valid regular expression: {e}"),
                ));
            }
        }
    }
}

fn check_budgets(c: &PlatformConfig, out: &mut Vec<Problem>) {
    let mut scopes = std::collections::HashSet::new();
    for (i, b) in c.budgets.iter().enumerate() {
        let at = |field: &str| vec!["budgets".to_string(), i.to_string(), field.to_string()];
        if !c.tenants.iter().any(|t| t.slug == b.tenant) {
            out.push((
                at("tenant"),
                format!("no tenant `{}` is declared", b.tenant),
            ));
        }
        if let Some(project) = &b.project {
            if !c
                .projects
                .iter()
                .any(|x| x.tenant == b.tenant && &x.slug == project)
            {
                out.push((
                    at("project"),
                    format!("tenant `{}` declares no project `{project}`", b.tenant),
                ));
            }
        }
        if let Some(k) = &b.api_key {
            if b.project.is_some() {
                out.push((
                    at("api_key"),
                    "a budget is for a tenant, a project or an API key, not both".into(),
                ));
            }
            if !k.starts_with("key_") {
                out.push((
                    at("api_key"),
                    format!("must be an API key id (`key_...`), got `{k}`"),
                ));
            }
        }
        if !scopes.insert((
            b.tenant.as_str(),
            b.project.as_deref(),
            b.api_key.as_deref(),
        )) {
            out.push((
                at("tenant"),
                "a budget for this scope is declared twice".into(),
            ));
        }
        if [
            b.input_tokens,
            b.output_tokens,
            b.total_tokens,
            b.cost_cents,
        ]
        .iter()
        .all(Option::is_none)
        {
            out.push((
                at("tenant"),
                "sets no cap (input_tokens, output_tokens, total_tokens or cost_cents)".into(),
            ));
        }
    }
}

fn check_api_keys(c: &PlatformConfig, out: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for (i, k) in c.api_keys.iter().enumerate() {
        let at = |field: &str| vec!["api_keys".to_string(), i.to_string(), field.to_string()];
        if k.name.trim().is_empty() {
            out.push((at("name"), "is required".into()));
        } else if !seen.insert((k.tenant.as_str(), k.name.as_str())) {
            out.push((
                at("name"),
                format!("`{}` is declared twice for tenant `{}`", k.name, k.tenant),
            ));
        }
        if !c.tenants.iter().any(|t| t.slug == k.tenant) {
            out.push((
                at("tenant"),
                format!("no tenant `{}` is declared", k.tenant),
            ));
        }
        if k.scopes.is_empty() {
            out.push((at("scopes"), "at least one scope is required".into()));
        }
        for s in &k.scopes {
            if !["read", "write", "admin"].contains(&s.as_str()) {
                out.push((
                    at("scopes"),
                    format!("unknown scope `{s}` (use read, write or admin)"),
                ));
            }
        }
        // 14 characters; 16 (the length before 14 was adopted) still works, its first 14 used.
        let prefix_ok = (k.prefix.len() == 14 || k.prefix.len() == 16)
            && k.prefix.starts_with("kt_live_")
            && k.prefix[8..].bytes().all(|b| b.is_ascii_alphanumeric());
        if !prefix_ok {
            out.push((
                at("prefix"),
                "must be the key's first 14 characters (`kt_live_` and 6 letters or digits)".into(),
            ));
        } else if !prefixes.insert(crate::platform::keys::lookup_prefix(&k.prefix)) {
            out.push((at("prefix"), "two keys share this prefix".into()));
        }
        let hash_ok = match k.hash.strip_prefix("sha256:") {
            Some(hex) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            None => k.hash.starts_with("$argon2"),
        };
        if !hash_ok {
            out.push((
                at("hash"),
                "must be `sha256:` and 64 hex digits, or an argon2id PHC string".into(),
            ));
        }
    }
}

fn check_prices(c: &PlatformConfig, out: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in c.prices.iter().enumerate() {
        let at = |field: &str| vec!["prices".to_string(), i.to_string(), field.to_string()];
        if !matches!(p.provider.as_str(), "anthropic" | "openai") {
            out.push((
                at("provider"),
                format!("must be `anthropic` or `openai`, got `{}`", p.provider),
            ));
        }
        if p.model.trim().is_empty() {
            out.push((at("model"), "must name a model (or `*`)".into()));
        }
        if !seen.insert((p.provider.as_str(), p.model.as_str(), p.effective_from)) {
            out.push((
                at("model"),
                "this model already has a price from the same day".into(),
            ));
        }
    }
}

fn check_webhooks(c: &PlatformConfig, out: &mut Vec<Problem>) {
    let mut seen = std::collections::HashSet::new();
    for (i, w) in c.webhooks.iter().enumerate() {
        let at = |field: &str| vec!["webhooks".to_string(), i.to_string(), field.to_string()];
        if !c.tenants.iter().any(|t| t.slug == w.tenant) {
            out.push((
                at("tenant"),
                format!("no tenant `{}` is declared", w.tenant),
            ));
        }
        if w.name.trim().is_empty() {
            out.push((at("name"), "is required".into()));
        } else if !seen.insert((w.tenant.as_str(), w.name.as_str())) {
            out.push((
                at("name"),
                "this tenant declares a webhook of that name twice".into(),
            ));
        }
        if let Err(e) =
            crate::platform::webhooks::target::check_url(&w.url, c.webhook_delivery.development)
        {
            out.push((at("url"), e));
        }
        if let Err(e) = crate::platform::webhooks::check_event_types(&w.events) {
            out.push((at("events"), e.to_string()));
        }
        if w.secret.is_none() {
            out.push((
                at("secret"),
                "is required: `{ env = \"NAME\" }` or `{ file = \"path\" }`".into(),
            ));
        }
    }
}
