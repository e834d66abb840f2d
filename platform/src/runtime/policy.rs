//! Message policies: checks a message must pass before its turn starts.

use regex::Regex;

/// A compiled `[[policies]]` entry.
#[derive(Clone, Debug)]
pub struct MessagePolicy {
    /// Its name (in violations).
    pub name: String,
    /// Longest message, in characters.
    pub max_message_length: Option<usize>,
    /// Most messages per session.
    pub max_messages_per_session: Option<u64>,
    /// Patterns a message must not match.
    pub deny: Vec<Regex>,
    /// Approval policies by tool pattern (exact first, then the longest prefix).
    pub tools: Vec<(String, super::Policy)>,
}

/// A message a policy refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The policy.
    pub policy: String,
    /// Why.
    pub detail: String,
}

impl MessagePolicy {
    /// Compiles a configured policy (patterns were validated with the configuration).
    pub fn compile(c: &crate::config::PolicyConfig) -> Result<Self, regex::Error> {
        let deny = c
            .deny_patterns
            .iter()
            .map(|p| regex::RegexBuilder::new(p).size_limit(1 << 20).build())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: c.name.clone(),
            max_message_length: c.max_message_length,
            max_messages_per_session: c.max_messages_per_session,
            deny,
            tools: c.tools.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }

    /// The policy for approvals of `tool`: an exact name, else the longest matching prefix
    /// pattern (`mcp__*`).
    pub fn tool_policy(&self, tool: &str) -> Option<super::Policy> {
        if let Some((_, p)) = self.tools.iter().find(|(pat, _)| pat == tool) {
            return Some(*p);
        }
        self.tools
            .iter()
            .filter_map(|(pat, p)| {
                let prefix = pat.strip_suffix('*')?;
                tool.starts_with(prefix).then_some((prefix.len(), *p))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }

    /// Checks the `sent`-th message of a session (1-based).
    pub fn check(&self, text: &str, sent: u64) -> Result<(), Violation> {
        let fail = |detail: String| {
            Err(Violation {
                policy: self.name.clone(),
                detail,
            })
        };
        if let Some(max) = self.max_message_length {
            let n = text.chars().count();
            if n > max {
                return fail(format!(
                    "the message has {n} characters; at most {max} are allowed"
                ));
            }
        }
        if let Some(max) = self.max_messages_per_session {
            if sent > max {
                return fail(format!("a session takes at most {max} messages"));
            }
        }
        if self.deny.iter().any(|r| r.is_match(text)) {
            return fail("the message contains text this project does not accept".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> MessagePolicy {
        MessagePolicy::compile(&crate::config::PolicyConfig {
            name: "guard".into(),
            tenant: "acme".into(),
            project: None,
            max_message_length: Some(10),
            max_messages_per_session: Some(2),
            deny_patterns: vec!["(?i)ignore previous".into()],
            tools: [
                ("Bash".to_string(), super::super::Policy::Deny),
                ("mcp__*".to_string(), super::super::Policy::Prompt),
                (
                    "mcp__github__*".to_string(),
                    super::super::Policy::ApproveOnce,
                ),
            ]
            .into_iter()
            .collect(),
        })
        .unwrap()
    }

    #[test]
    fn tool_policies_match_exactly_then_by_the_longest_prefix() {
        let p = policy();
        assert_eq!(p.tool_policy("Bash"), Some(super::super::Policy::Deny));
        assert_eq!(
            p.tool_policy("mcp__slack__post"),
            Some(super::super::Policy::Prompt)
        );
        assert_eq!(
            p.tool_policy("mcp__github__issue"),
            Some(super::super::Policy::ApproveOnce)
        );
        assert_eq!(p.tool_policy("Edit"), None);
    }

    #[test]
    fn length_count_and_patterns_are_checked() {
        let p = policy();
        assert!(p.check("hello", 1).is_ok());
        assert!(p
            .check("héllo wörld!", 1)
            .unwrap_err()
            .detail
            .contains("12 characters"));
        assert!(p.check("hi", 3).unwrap_err().detail.contains("at most 2"));
        let v = p.check("IGNORE previous", 1).unwrap_err();
        assert_eq!(v.policy, "guard");
    }
}
