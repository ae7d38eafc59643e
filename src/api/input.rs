//! Request-body parsing shared by the OpenAI and TEI endpoints: JSON decoding with precise
//! errors, and the `str or [str]` input shape.

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::RequestError;
use crate::config::LimitSettings;
use crate::serve::Picture;

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
            check_count(field, items.len(), max_inputs)?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| text_item(field, i, item))
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

/// A list of `count` inputs: at least one, at most `max_inputs`.
fn check_count(field: &str, count: usize, max_inputs: usize) -> Result<(), RequestError> {
    if count == 0 {
        return Err(RequestError::EmptyList(field.to_string()));
    }
    if count > max_inputs {
        return Err(RequestError::TooManyInputs {
            field: field.to_string(),
            count,
            max: max_inputs,
        });
    }
    Ok(())
}

/// Item `i` of the list `field` as a text.
fn text_item(field: &str, i: usize, item: Value) -> Result<String, RequestError> {
    match item {
        Value::String(s) => Ok(s),
        Value::Number(_) | Value::Array(_) => Err(RequestError::InvalidInput {
            place: format!("{field}[{i}]"),
            problem: "is not a string; token arrays are not supported, send text".into(),
        }),
        other => Err(RequestError::InvalidInput {
            place: format!("{field}[{i}]"),
            problem: format!("must be a string, got {}", json_type(&other)),
        }),
    }
}

/// A multimodal list's texts in order, and its pictures with their places in the list.
pub type Inputs = (Vec<String>, Vec<(usize, Picture)>);

/// Texts and pictures of a multimodal input list (Jina's and vLLM's shape): `str or [item]`,
/// each item a string, `{"text": str}` or `{"image": "data:image/...;base64,..."}`. The texts
/// in order, and each picture with its index in the list. A picture's data is not read here:
/// the serving path decodes it within its limits.
pub fn inputs(field: &str, value: Value, max_inputs: usize) -> Result<Inputs, RequestError> {
    let items = match value {
        Value::Array(items) if items.iter().any(Value::is_object) => items,
        other => return Ok((texts(field, other, max_inputs)?, Vec::new())),
    };
    check_count(field, items.len(), max_inputs)?;
    let (mut texts, mut pictures) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut o) = item else {
            texts.push(nonblank(
                text_item(field, i, item)?,
                format!("{field}[{i}]"),
            )?);
            continue;
        };
        let only = |key: &str| o.len() == 1 && o.contains_key(key);
        if only("image") {
            let place = format!("{field}[{i}].image");
            match o.remove("image") {
                Some(Value::String(uri)) => pictures.push((i, Picture { place, uri })),
                other => {
                    return Err(RequestError::InvalidInput {
                        place,
                        problem: format!(
                            "must be a data URI string (data:image/jpeg;base64,...), got {}",
                            json_type(&other.unwrap_or(Value::Null))
                        ),
                    });
                }
            }
        } else if only("text") {
            let place = format!("{field}[{i}].text");
            match o.remove("text") {
                Some(Value::String(s)) => texts.push(nonblank(s, place)?),
                other => {
                    return Err(RequestError::InvalidInput {
                        place,
                        problem: format!(
                            "must be a string, got {}",
                            json_type(&other.unwrap_or(Value::Null))
                        ),
                    });
                }
            }
        } else {
            return Err(RequestError::InvalidInput {
                place: format!("{field}[{i}]"),
                problem: "is an object; it must be a string, {\"text\": \"...\"} or {\"image\": \"data:image/...;base64,...\"} alone".into(),
            });
        }
    }
    Ok((texts, pictures))
}

/// The documents of a rerank: texts, or pictures (`{"image": ...}` items) for an image-text
/// model; strings and `{"text": ...}` items are texts.
pub enum Documents {
    /// Texts, in order.
    Texts(Vec<String>),
    /// Pictures, in order.
    Pictures(Vec<Picture>),
}

/// The rerank documents of the list `field`: all texts or all pictures.
pub fn documents(field: &str, value: Value, max_inputs: usize) -> Result<Documents, RequestError> {
    let (texts, pictures) = inputs(field, value, max_inputs)?;
    match (texts.is_empty(), pictures.is_empty()) {
        (_, true) => Ok(Documents::Texts(texts)),
        (true, false) => Ok(Documents::Pictures(
            pictures.into_iter().map(|(_, p)| p).collect(),
        )),
        (false, false) => Err(RequestError::InvalidInput {
            place: field.to_string(),
            problem: "mixes texts and pictures; rank one kind of document a request".into(),
        }),
    }
}

/// `text` unless it is empty or only whitespace (then refused, naming `place`).
fn nonblank(text: String, place: String) -> Result<String, RequestError> {
    match text.trim().is_empty() {
        true => Err(RequestError::EmptyText(place)),
        false => Ok(text),
    }
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

    type Uris = (Vec<String>, Vec<(usize, String)>);

    fn inputs(value: Value) -> Result<Uris, ApiError> {
        super::inputs("input", value, 4)
            .map(|(t, p)| (t, p.into_iter().map(|(i, p)| (i, p.uri)).collect()))
            .map_err(ApiError::from)
    }

    #[test]
    fn a_multimodal_list_gives_texts_in_order_and_pictures_by_place() {
        let (texts, pictures) = inputs(json!([
            "a", {"image": "data:image/png;base64,AAAA"}, {"text": "b"}
        ]))
        .unwrap();
        assert_eq!(texts, vec!["a", "b"]);
        assert_eq!(
            pictures,
            vec![(1, "data:image/png;base64,AAAA".to_string())]
        );
        // Plain texts take the text path, with its messages.
        assert_eq!(inputs(json!("a")).unwrap(), (vec!["a".to_string()], vec![]));
    }

    #[test]
    fn a_multimodal_list_names_the_bad_item() {
        let refused = |v: Value| inputs(v).unwrap_err();
        let e = refused(json!([{"image": 5}]));
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_input"));
        assert_eq!(
            e.message,
            "`input[0].image` must be a data URI string (data:image/jpeg;base64,...), got a number"
        );
        let e = refused(json!(["a", {"image": "x", "text": "y"}]));
        assert_eq!(
            e.message,
            "`input[1]` is an object; it must be a string, {\"text\": \"...\"} or {\"image\": \"data:image/...;base64,...\"} alone"
        );
        let e = refused(json!([{"text": " "}]));
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "empty_input",
                "`input[0].text` is empty or only whitespace; send text to embed"
            )
        );
        let e = refused(json!([{"text": "a"}, ""]));
        assert_eq!(
            e.message,
            "`input[1]` is empty or only whitespace; send text to embed"
        );
        let e = refused(json!([{"text": "a"}, 1, 2, 3, 4]));
        assert_eq!((e.status.as_u16(), e.code), (413, "too_many_inputs"));
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
