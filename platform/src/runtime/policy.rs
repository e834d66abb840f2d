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
        })
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
        })
        .unwrap()
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
