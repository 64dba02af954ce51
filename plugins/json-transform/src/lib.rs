//! `json-transform`: sets, removes and renames fields of JSON text messages,
//! addressed by JSON Pointer. String values may hold placeholders filled from
//! the connection context: `${connection-id}`, `${endpoint}`,
//! `${content-type}`, `${header.NAME}` (upgrade request header),
//! `${attribute.NAME}` (a connection attribute another plugin published),
//! `${route}` (upstream URL), `${direction}`.

use std::collections::BTreeMap;

use serde_json::Value;
use wsgate_plugin_sdk::policy::NonJson;
use wsgate_plugin_sdk::prelude::*;
use wsgate_plugin_sdk::{
    connection_value, is_connection_placeholder, render_template, template_names,
};

/// Configuration of `json-transform`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Fields to set: JSON Pointer -> value (strings are templates).
    #[serde(default)]
    set: BTreeMap<String, Value>,
    /// Fields to remove, by JSON Pointer.
    #[serde(default)]
    remove: Vec<String>,
    /// Fields to move: from-pointer -> to-pointer.
    #[serde(default)]
    rename: BTreeMap<String, String>,
    /// What to do with text that is not JSON, and with binary messages.
    #[serde(default)]
    non_json: NonJson,
}

/// Split a JSON Pointer into unescaped tokens; `None` if it is not one.
fn tokens(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// Set `value` at `pointer`, creating objects on the way. Returns false if
/// the path runs through a non-object.
fn set_at(root: &mut Value, pointer: &str, value: Value) -> bool {
    let Some(tokens) = tokens(pointer) else {
        return false;
    };
    let Some((last, parents)) = tokens.split_last() else {
        return false;
    };
    let mut node = root;
    for token in parents {
        let Value::Object(map) = node else {
            return false;
        };
        node = map
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            true
        }
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items[i] = value;
                true
            }
            _ if last == "-" => {
                items.push(value);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Remove and return the value at `pointer`.
fn take_at(root: &mut Value, pointer: &str) -> Option<Value> {
    let (parent, last) = pointer.rsplit_once('/')?;
    let last = last.replace("~1", "/").replace("~0", "~");
    match root.pointer_mut(parent)? {
        Value::Object(map) => map.remove(&last),
        Value::Array(items) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// Fill templates in every string of `value`.
fn render(value: &Value, direction: Direction) -> Value {
    match value {
        Value::String(template) => Value::String(
            render_template(template, |n| connection_value(n, direction)).unwrap_or_default(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, direction)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, direction)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn check_templates(value: &Value, field: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(template) => match template_names(template)
            .into_iter()
            .find(|n| !is_connection_placeholder(n))
        {
            Some(bad) => Err(ConfigError {
                field: field.to_string(),
                message: format!(
                    "unknown placeholder `${{{bad}}}` (use connection-id, endpoint, content-type, route, direction, now-ms, header.NAME, attribute.NAME)"
                ),
            }),
            None => Ok(()),
        },
        Value::Array(items) => items.iter().try_for_each(|v| check_templates(v, field)),
        Value::Object(map) => map.values().try_for_each(|v| check_templates(v, field)),
        _ => Ok(()),
    }
}

struct JsonTransform;

impl Plugin for JsonTransform {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let pointer_error = |field: String, pointer: &str| ConfigError {
            field,
            message: format!("`{pointer}` is not a JSON Pointer (it starts with `/`)"),
        };
        for (pointer, value) in &config.set {
            let field = format!("/set/{}", pointer.replace('~', "~0").replace('/', "~1"));
            if tokens(pointer).is_none() {
                return Err(pointer_error(field, pointer));
            }
            check_templates(value, &field)?;
        }
        for (i, pointer) in config.remove.iter().enumerate() {
            if tokens(pointer).is_none() {
                return Err(pointer_error(format!("/remove/{i}"), pointer));
            }
        }
        for (from, to) in &config.rename {
            let field = format!("/rename/{}", from.replace('~', "~0").replace('/', "~1"));
            if tokens(from).is_none() {
                return Err(pointer_error(field, from));
            }
            if tokens(to).is_none() {
                return Err(pointer_error(field, to));
            }
        }
        Ok(())
    }
}

impl MessageFilter for JsonTransform {
    fn on_message(config: &Config, direction: Direction, message: Message) -> MessageVerdict {
        let not_json = || config.non_json.verdict();
        let text = match &message {
            Message::Text(text) => text,
            Message::Binary(_) => return not_json(),
            _ => return MessageVerdict::Forward,
        };
        let Ok(mut json) = serde_json::from_str::<Value>(text) else {
            return not_json();
        };
        for (from, to) in &config.rename {
            if let Some(value) = take_at(&mut json, from) {
                set_at(&mut json, to, value);
            }
        }
        for pointer in &config.remove {
            take_at(&mut json, pointer);
        }
        for (pointer, value) in &config.set {
            set_at(&mut json, pointer, render(value, direction));
        }
        match serde_json::to_string(&json) {
            Ok(text) => MessageVerdict::modify(Message::Text(text)),
            Err(_) => MessageVerdict::Forward,
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(JsonTransform);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_creates_intermediate_objects() {
        let mut value = json!({"a": 1});
        assert!(set_at(&mut value, "/meta/via", json!("wsgate")));
        assert_eq!(value, json!({"a": 1, "meta": {"via": "wsgate"}}));
        assert!(!set_at(&mut value, "/a/b", json!(1)));
    }

    #[test]
    fn take_removes_from_objects_and_arrays() {
        let mut value = json!({"a": {"b~c": 1}, "list": [1, 2, 3]});
        assert_eq!(take_at(&mut value, "/a/b~0c"), Some(json!(1)));
        assert_eq!(take_at(&mut value, "/list/1"), Some(json!(2)));
        assert_eq!(value, json!({"a": {}, "list": [1, 3]}));
        assert_eq!(take_at(&mut value, "/missing/x"), None);
    }
}

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
