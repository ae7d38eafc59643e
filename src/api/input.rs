//! Request-body parsing shared by the OpenAI and TEI endpoints: JSON decoding with precise
//! errors, and the `str or [str]` input shape.

use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use crate::config::LimitSettings;

/// Reads at most `limits.max_body_bytes` of body within `limits.body_timeout` and parses them
/// as `T`, telling an oversized body, a late one, a syntax error and a well-formed body of the
/// wrong shape apart.
pub async fn parse_body<T: DeserializeOwned>(
    body: Body,
    limits: &LimitSettings,
) -> Result<T, ApiError> {
    let limit = limits.max_body_bytes.0;
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let deadline = limits.body_timeout;
    let collected = tokio::time::timeout(deadline.0, Limited::new(body, cap).collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {deadline} (limits.body_timeout); send the whole body at once"
                ),
            )
        })?;
    let body = collected.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            ApiError::too_large(
                "body_too_large",
                format!(
                    "the request body is larger than {limit} bytes (limits.max_body_bytes); send fewer or shorter texts per request"
                ),
            )
        } else {
            ApiError::bad_request("unreadable_body", format!("cannot read the request body: {e}"))
        }
    })?;
    let body = body.to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
            }
            Category::Data => {
                ApiError::bad_request("invalid_request", format!("invalid request: {e}"))
            }
        }
    })
}

/// Reads the `str or [str]` input field named `field`, checking count and emptiness.
pub fn texts(field: &str, value: Value, max_inputs: usize) -> Result<Vec<String>, ApiError> {
    let texts = match value {
        Value::String(s) => vec![s],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "empty_input",
                    format!("`{field}` is an empty list; send at least one text"),
                ));
            }
            if items.len() > max_inputs {
                return Err(ApiError::too_large(
                    "too_many_inputs",
                    format!(
                        "`{field}` has {} texts; at most {max_inputs} are allowed per request (limits.max_inputs); split the request",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::bad_request(
                        "invalid_input",
                        format!("`{field}[{i}]` is not a string; token arrays are not supported, send text"),
                    )),
                    other => Err(ApiError::bad_request(
                        "invalid_input",
                        format!("`{field}[{i}]` must be a string, got {}", json_type(&other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        other => {
            return Err(ApiError::bad_request(
                "invalid_input",
                format!(
                    "`{field}` must be a string or a list of strings, got {}",
                    json_type(&other)
                ),
            ));
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let place = if texts.len() == 1 {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        return Err(ApiError::bad_request(
            "empty_input",
            format!("`{place}` is empty or only whitespace; send text to embed"),
        ));
    }
    Ok(texts)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_string_or_a_list() {
        assert_eq!(texts("input", json!("a"), 4).unwrap(), vec!["a"]);
        assert_eq!(
            texts("input", json!(["a", "b"]), 4).unwrap(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn names_the_bad_element() {
        let e = texts("input", json!(["a", 5]), 4).unwrap_err();
        assert_eq!(e.code, "invalid_input");
        assert_eq!(
            e.message,
            "`input[1]` is not a string; token arrays are not supported, send text"
        );
        let e = texts("inputs", json!(["a", " "]), 4).unwrap_err();
        assert_eq!(
            e.message,
            "`inputs[1]` is empty or only whitespace; send text to embed"
        );
        let e = texts("input", json!({"a": 1}), 4).unwrap_err();
        assert_eq!(
            e.message,
            "`input` must be a string or a list of strings, got an object"
        );
    }

    #[test]
    fn counts_inputs() {
        assert_eq!(
            texts("input", json!([]), 4).unwrap_err().code,
            "empty_input"
        );
        let e = texts("input", json!(["a", "b", "c"]), 2).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (413, "too_many_inputs"));
    }
}
