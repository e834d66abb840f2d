//! JSON request bodies: 400 for malformed JSON, 422 naming the field for the wrong shape.

use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses a JSON body; an empty body counts as `{}`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            vec!["body".into()],
            "the body must be a JSON object",
            "type_error",
        ));
    }
    if let Some(mut loc) = nul_at(&value) {
        loc.insert(0, "body".into());
        return Err(ApiError::invalid(
            loc,
            "text may not contain NUL characters",
            "value_error",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut loc = vec!["body".to_string()];
        let path = e.path().to_string();
        if path != "." {
            loc.extend(path.split('.').map(str::to_string));
        }
        ApiError::invalid(loc, e.inner().to_string(), "type_error")
    })
}

/// A 422 for a required field that is missing.
pub fn missing(field: &str) -> ApiError {
    ApiError::invalid(
        vec!["body".into(), field.into()],
        "field required",
        "missing",
    )
}

/// Where a string (or an object key) holds a NUL character: no database column can store one
/// (PostgreSQL refuses it), so it is a client error, never a 500.
fn nul_at(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(vec![]),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            nul_at(item).map(|mut loc| {
                loc.insert(0, i.to_string());
                loc
            })
        }),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                return Some(vec![k.replace('\0', "\\u0000")]);
            }
            nul_at(item).map(|mut loc| {
                loc.insert(0, k.clone());
                loc
            })
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_is_a_422_naming_the_field() {
        let r: Result<serde_json::Value, _> =
            parse(br#"{"text": "ok", "metadata": {"k": ["a", "b\u0000c"]}}"#);
        let Err(ApiError::Validation(items)) = r else {
            panic!("expected a 422, got {r:?}");
        };
        assert_eq!(items[0].0, ["body", "metadata", "k", "1"]);
        assert!(parse::<serde_json::Value>(br#"{"text": "fine"}"#).is_ok());
    }
}
