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
