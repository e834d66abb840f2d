//! Driver settings checked against the JSON Schema the driver gave in its handshake.

use serde_json::Value;

/// One way the settings miss the schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("settings{}: {message}", path.iter().map(|p| format!(".{p}")).collect::<String>())]
pub struct SettingsProblem {
    /// Where in the settings (object keys and array indexes), empty for the whole object.
    pub path: Vec<String>,
    /// What is wrong.
    pub message: String,
}

/// Every problem of `settings` against `schema` (`null` accepts anything). A schema that does
/// not compile is the driver's bug, reported as one problem.
pub fn check(schema: &Value, settings: &Value) -> Vec<SettingsProblem> {
    if schema.is_null() {
        return Vec::new();
    }
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![SettingsProblem {
                path: Vec::new(),
                message: format!("the driver's settings schema is invalid: {e}"),
            }]
        }
    };
    let mut out: Vec<SettingsProblem> = validator
        .iter_errors(settings)
        .flat_map(|e| {
            let base: Vec<String> = e
                .instance_path()
                .as_str()
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            match e.kind() {
                // Point at each unknown key itself, like an unknown key anywhere else.
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    unexpected
                        .iter()
                        .map(|k| {
                            let mut path = base.clone();
                            path.push(k.clone());
                            SettingsProblem {
                                path,
                                message: "unknown setting".into(),
                            }
                        })
                        .collect::<Vec<_>>()
                }
                _ => vec![SettingsProblem {
                    path: base,
                    message: e.to_string(),
                }],
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "delay_ms": {"type": "integer", "minimum": 0},
                "nested": {"type": "object", "properties": {"x": {"type": "string"}}}
            }
        })
    }

    #[test]
    fn each_problem_names_its_key() {
        assert!(check(&schema(), &json!({"delay_ms": 3})).is_empty());
        let p = check(
            &schema(),
            &json!({"delay_ms": -1, "typo": 1, "nested": {"x": 2}}),
        );
        let paths: Vec<String> = p.iter().map(|p| p.path.join(".")).collect();
        assert_eq!(paths, ["delay_ms", "nested.x", "typo"]);
        assert_eq!(p[2].message, "unknown setting");
        assert!(p[0].message.contains("minimum"), "{}", p[0].message);
        assert_eq!(
            p[1].to_string(),
            format!("settings.nested.x: {}", p[1].message)
        );
    }

    #[test]
    fn a_null_schema_accepts_anything_and_a_broken_one_is_reported() {
        assert!(check(&Value::Null, &json!({"a": 1})).is_empty());
        let p = check(&json!({"type": 12}), &json!({}));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].message.contains("schema is invalid"),
            "{}",
            p[0].message
        );
    }
}
