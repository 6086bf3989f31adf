//! Label selectors (`labelSelector`) and field selectors (`fieldSelector`) of list and watch
//! requests.

use serde_json::Value;

use crate::api_error::ApiError;
use crate::store::Kind;

#[derive(Clone, Debug, PartialEq)]
enum Operator {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    operator: Operator,
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits on commas that are not inside the parentheses of an `in (...)` set.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_set(text: &str, requirement: &str) -> Result<Vec<String>, ApiError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| selector_error(requirement, "expected a value set in parentheses"))?;
    Ok(inner
        .split(',')
        .map(|value| value.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

fn selector_error(requirement: &str, problem: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {requirement:?}: {problem}"
    ))
}

fn parse_requirement(text: &str) -> Result<Requirement, ApiError> {
    let text = text.trim();
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Requirement {
            key: key.trim().to_owned(),
            operator: Operator::DoesNotExist,
        });
    }
    if let Some((key, value)) = text.split_once("!=") {
        let operator = Operator::NotEquals(value.trim().to_owned());
        return Ok(Requirement {
            key: key.trim().to_owned(),
            operator,
        });
    }
    if let Some((key, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
        let operator = Operator::Equals(value.trim().to_owned());
        return Ok(Requirement {
            key: key.trim().to_owned(),
            operator,
        });
    }
    let mut words = text.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or("").to_owned();
    let rest = words.next().unwrap_or("").trim_start();
    if rest.is_empty() {
        if key.is_empty() {
            return Err(selector_error(text, "found '', expected: identifier"));
        }
        return Ok(Requirement {
            key,
            operator: Operator::Exists,
        });
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Requirement {
            key,
            operator: Operator::NotIn(parse_set(set, text)?),
        });
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Requirement {
            key,
            operator: Operator::In(parse_set(set, text)?),
        });
    }
    Err(selector_error(
        text,
        "expected one of '=', '==', '!=', 'in', 'notin'",
    ))
}

impl LabelSelector {
    /// Parses the string form: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_top_level(text)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.requirements.iter().all(|requirement| {
            let value = labels[&requirement.key].as_str();
            match &requirement.operator {
                Operator::Equals(expected) => value == Some(expected.as_str()),
                Operator::NotEquals(expected) => value != Some(expected.as_str()),
                Operator::In(set) => value.is_some_and(|v| set.iter().any(|s| s == v)),
                Operator::NotIn(set) => value.is_none_or(|v| set.iter().all(|s| s != v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// A parsed field selector: `field=value` and `field!=value` terms, all of which must hold.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// The fields a selector may name for each kind, as the API server supports them.
fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        ],
        Kind::Secret => &["metadata.name", "metadata.namespace", "type"],
        Kind::Service => &["metadata.name", "metadata.namespace"],
    }
}

fn field_value<'a>(object: &'a Value, field: &str) -> &'a str {
    let mut value = object;
    for part in field.split('.') {
        value = &value[part];
    }
    value.as_str().unwrap_or("")
}

impl FieldSelector {
    pub fn parse(kind: Kind, text: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|(field, equal, value)| (field_value(object, field) == value) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}})
    }

    #[test]
    fn label_selector_operators() {
        let object = labelled(json!({"app": "tower", "tier": "run"}));
        let cases = [
            ("app=tower", true),
            ("app==tower", true),
            ("app!=tower", false),
            ("app=other", false),
            ("app in (x, tower)", true),
            ("app notin (x,tower)", false),
            ("tier,app", true),
            ("!tier", false),
            ("missing", false),
            ("!missing", true),
            ("app=tower,tier in (run)", true),
            ("", true),
        ];
        for (selector, expected) in cases {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&object), expected, "selector {selector:?}");
        }
    }

    #[test]
    fn field_selector_rejects_unknown_field() {
        let error = FieldSelector::parse(Kind::Pod, "spec.hostname=x").unwrap_err();
        assert_eq!(error.code, 400);
        let selector = FieldSelector::parse(Kind::Pod, "metadata.name=p").unwrap();
        assert!(selector.matches(&labelled(json!({}))));
    }
}
