//! Request-body parsing shared by the OpenAI and TEI endpoints: JSON decoding with precise
//! errors, and the `str or [str]` input shape.

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::RequestError;
use crate::config::LimitSettings;

/// Reads at most `limits.max_body_bytes` of body within `limits.body_timeout` and parses them
/// as `T`, telling an oversized body, a late one, a syntax error and a well-formed body of the
/// wrong shape apart.
pub async fn parse_body<T: DeserializeOwned>(
    body: Body,
    limits: &LimitSettings,
) -> Result<T, RequestError> {
    let limit = limits.max_body_bytes.0;
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let deadline = limits.body_timeout;
    let collected = tokio::time::timeout(deadline.0, Limited::new(body, cap).collect())
        .await
        .map_err(|_| RequestError::BodyTimeout(deadline.to_string()))?;
    let body = collected.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            RequestError::BodyTooLarge(limit)
        } else {
            RequestError::UnreadableBody(e.to_string())
        }
    })?;
    let body = body.to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                RequestError::InvalidJson(e.to_string())
            }
            Category::Data => RequestError::InvalidRequest(e.to_string()),
        }
    })
}

/// Reads the `str or [str]` input field named `field`, checking count and emptiness.
pub fn texts(field: &str, value: Value, max_inputs: usize) -> Result<Vec<String>, RequestError> {
    let texts = match value {
        Value::String(s) => vec![s],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(RequestError::EmptyList(field.to_string()));
            }
            if items.len() > max_inputs {
                return Err(RequestError::TooManyInputs {
                    field: field.to_string(),
                    count: items.len(),
                    max: max_inputs,
                });
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s),
                    Value::Number(_) | Value::Array(_) => Err(RequestError::InvalidInput {
                        place: format!("{field}[{i}]"),
                        problem: "is not a string; token arrays are not supported, send text"
                            .into(),
                    }),
                    other => Err(RequestError::InvalidInput {
                        place: format!("{field}[{i}]"),
                        problem: format!("must be a string, got {}", json_type(&other)),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        other => {
            return Err(RequestError::InvalidInput {
                place: field.to_string(),
                problem: format!(
                    "must be a string or a list of strings, got {}",
                    json_type(&other)
                ),
            });
        }
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        let place = if texts.len() == 1 {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        return Err(RequestError::EmptyText(place));
    }
    Ok(texts)
}

/// A rerank `query`, unless it is empty or only whitespace.
pub fn query(query: String) -> Result<String, RequestError> {
    if query.trim().is_empty() {
        return Err(RequestError::EmptyQuery);
    }
    Ok(query)
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
    use crate::api::ApiError;
    use serde_json::json;

    fn texts(field: &str, value: Value, max: usize) -> Result<Vec<String>, ApiError> {
        super::texts(field, value, max).map_err(ApiError::from)
    }

    #[test]
    fn an_empty_query_is_refused() {
        let e = ApiError::from(query("  ".into()).unwrap_err());
        assert_eq!((e.status.as_u16(), e.code), (400, "empty_input"));
        assert_eq!(
            e.message,
            "`query` is empty or only whitespace; send the text to rank the documents against"
        );
        assert_eq!(query("q".into()).unwrap(), "q");
    }

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
