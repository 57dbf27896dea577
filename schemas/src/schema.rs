//! Generates the JSON Schema files from the types: one file for any request, one for
//! any reply, and a request and a reply file for each command.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::command::*;
use crate::logs::*;
use crate::options::WatcherOptions;
use crate::registry::{Announcement, MembersData, MembersRequest};
use crate::reply::*;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Every schema file: (path relative to `schemas/`, content).
pub fn all() -> Vec<(String, Value)> {
    let mut files = vec![
        (
            "request.schema.json".to_owned(),
            root::<Request>("Any request"),
        ),
        (
            "reply.schema.json".to_owned(),
            root::<Reply<Map<String, Value>>>("Any reply"),
        ),
        (
            "watcher-options.schema.json".to_owned(),
            root::<WatcherOptions>("Watcher options"),
        ),
        (
            "registry.schema.json".to_owned(),
            root::<Announcement>("Membership announcement"),
        ),
    ];
    for command in Command::examples() {
        let name = command.name();
        files.push((
            format!("commands/{name}.request.schema.json"),
            request_schema(&command),
        ));
        files.push((
            format!("commands/{name}.reply.schema.json"),
            reply_schema(command.reply_kind(), name),
        ));
    }
    files.push((
        "log-line.schema.json".to_owned(),
        root::<LogLine>("Log line"),
    ));
    files.push((
        "stats.schema.json".to_owned(),
        root::<crate::stats::StatsMessage>("Stats message"),
    ));
    files.push((
        "events.schema.json".to_owned(),
        root::<crate::events::Event>("Event"),
    ));
    // `properties` may be left out of a request whose properties are all optional (the
    // agent's parser takes `{"command": "status"}`): the root file says what the
    // per-command files say.
    let required: std::collections::BTreeMap<String, Value> = files
        .iter()
        .filter_map(|(path, v)| {
            let name = path
                .strip_prefix("commands/")?
                .strip_suffix(".request.schema.json")?;
            Some((name.to_owned(), v["required"].clone()))
        })
        .collect();
    if let Some((_, root)) = files.iter_mut().find(|(p, _)| p == "request.schema.json") {
        if let Some(Value::Array(branches)) = root.get_mut("oneOf") {
            for b in branches {
                let name = b["properties"]["command"]["const"]
                    .as_str()
                    .map(str::to_owned);
                if let Some(r) = name.and_then(|n| required.get(&n)) {
                    b["required"] = r.clone();
                }
            }
        }
    }
    // What the agents send is closed: a field the types do not name is a drift.
    // Requests keep what the types say (their inputs deny unknown fields themselves).
    for (path, schema) in &mut files {
        if !path.ends_with("request.schema.json") {
            close_structs(schema);
        }
    }
    files
}

/// Sets `additionalProperties: false` on every struct-like object schema (one that lists
/// `properties` and says nothing of other fields, with no `allOf`/`oneOf`/`anyOf` whose
/// branches could add fields), walking only the keywords that hold schemas. Maps
/// (`additionalProperties` with a schema) and open envelopes (`true`) stay as they are.
fn close_structs(schema: &mut Value) {
    let Value::Object(m) = schema else {
        return;
    };
    let composed = ["allOf", "oneOf", "anyOf"]
        .iter()
        .any(|k| m.contains_key(*k));
    if m.contains_key("properties")
        && !m.contains_key("additionalProperties")
        && !m.contains_key("patternProperties")
        && !composed
    {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(children)) = m.get_mut(key) {
            children.values_mut().for_each(close_structs);
        }
    }
    for key in ["allOf", "oneOf", "anyOf", "prefixItems"] {
        if let Some(Value::Array(children)) = m.get_mut(key) {
            children.iter_mut().for_each(close_structs);
        }
    }
    for key in ["items", "additionalProperties", "not", "if", "then", "else"] {
        if let Some(child) = m.get_mut(key) {
            close_structs(child);
        }
    }
}

/// The whole schema of one type, as its own file.
fn root<T: JsonSchema>(title: &str) -> Value {
    let mut v = SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value();
    if let Value::Object(m) = &mut v {
        m.insert("title".into(), json!(title));
    }
    v
}

/// A request for one command: `id`, `command` fixed to `name`, and its properties.
fn request<P: JsonSchema>(name: &str) -> Value {
    let mut generator = SchemaGenerator::default();
    let props = generator.subschema_for::<P>().to_value();
    let props_required = generator
        .definitions()
        .get(&P::schema_name().to_string())
        .and_then(|d| d.get("required"))
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    let mut required = vec![json!("command")];
    if props_required {
        required.push(json!("properties"));
    }
    with_defs(
        json!({
            "$schema": DRAFT,
            "title": format!("{name} request"),
            "type": "object",
            "properties": {
                "id": { "type": ["string", "null"], "description": "Echoed in the reply." },
                "command": { "const": name },
                "properties": props,
            },
            "required": required,
            "additionalProperties": false,
        }),
        generator.definitions(),
    )
}

/// The request file of a command: the schema of its properties.
fn request_schema(command: &Command) -> Value {
    let name = command.name();
    match command {
        Command::Status(_) | Command::List(_) | Command::Stats(_) => request::<MaybeName>(name),
        Command::Start(_) | Command::Stop(_) => request::<StartStop>(name),
        Command::Restart(_) | Command::Reload(_) => request::<Restart>(name),
        Command::Incr(_) | Command::Decr(_) => request::<Resize>(name),
        Command::Numprocesses(_) => request::<Numprocesses>(name),
        Command::Signal(_) => request::<SignalProps>(name),
        Command::Options(_) => request::<Name>(name),
        Command::Get(_) => request::<GetProps>(name),
        Command::Set(_) => request::<SetProps>(name),
        Command::Add(_) => request::<AddProps>(name),
        Command::Rm(_) => request::<RmProps>(name),
        Command::Members(_) => request::<MembersRequest>(name),
        Command::Logs(_) => request::<LogsProps>(name),
        Command::Numwatchers(_)
        | Command::Reloadconfig(_)
        | Command::Dstats(_)
        | Command::Quit(_)
        | Command::Ping(_)
        | Command::Listsockets(_)
        | Command::Upgrade(_) => request::<Empty>(name),
    }
}

/// The reply file of a command: the schema of the data its kind carries.
fn reply_schema(kind: ReplyKind, name: &str) -> Value {
    match kind {
        ReplyKind::Status => reply::<StatusData>(name),
        ReplyKind::List => reply::<ListData>(name),
        ReplyKind::Action => reply::<ActionData>(name),
        ReplyKind::Numprocesses => reply::<NumprocessesData>(name),
        ReplyKind::Numwatchers => reply::<NumwatchersData>(name),
        ReplyKind::Options => reply::<OptionsData>(name),
        ReplyKind::Plan => reply::<PlanData>(name),
        ReplyKind::Dstats => reply::<DstatsData>(name),
        ReplyKind::Ping => reply::<PingData>(name),
        ReplyKind::Stats => reply::<crate::stats::StatsData>(name),
        ReplyKind::Members => reply::<MembersData>(name),
        ReplyKind::Logs => reply::<LogsData>(name),
        ReplyKind::Sockets => reply::<SocketsData>(name),
        ReplyKind::Upgrade => reply::<UpgradeData>(name),
        ReplyKind::Empty => reply::<NoData>(name),
    }
}

/// A reply to one command: a success carrying `T`, or an error.
fn reply<T: JsonSchema>(name: &str) -> Value {
    let mut generator = SchemaGenerator::default();
    let ok = generator.subschema_for::<OkReply<T>>().to_value();
    let err = generator.subschema_for::<ErrorReply>().to_value();
    with_defs(
        json!({
            "$schema": DRAFT,
            "title": format!("{name} reply"),
            "oneOf": [ok, err],
        }),
        generator.definitions(),
    )
}

fn with_defs(mut v: Value, defs: &Map<String, Value>) -> Value {
    if !defs.is_empty() {
        v["$defs"] = Value::Object(defs.clone());
    }
    v
}

/// Where the committed schema files live.
pub fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The text a schema file holds: pretty JSON with a final newline.
pub fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("a schema serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when a committed schema file differs from what the types generate.
    /// `UPDATE_SCHEMAS=1 cargo test -p cluster-protocol` writes them anew.
    #[test]
    fn committed_schemas_match_the_types() {
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = vec![];
        for (path, value) in all() {
            let file = dir().join(&path);
            let want = render(&value);
            if update {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &want).unwrap();
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(have) if have == want => {}
                _ => stale.push(path),
            }
        }
        assert!(
            stale.is_empty(),
            "schema files differ from the types: {stale:?}; \
             run `UPDATE_SCHEMAS=1 cargo test -p cluster-protocol` and commit them"
        );
    }

    /// Replies, events, stats, registry messages and log lines name every field: an
    /// object with properties either forbids others or is a declared map or envelope.
    #[test]
    fn what_agents_send_is_closed() {
        fn open_structs(v: &Value, at: &str, found: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    let composed = ["allOf", "oneOf", "anyOf"]
                        .iter()
                        .any(|k| m.contains_key(*k));
                    if m.contains_key("properties")
                        && !m.contains_key("additionalProperties")
                        && !composed
                    {
                        found.push(at.to_owned());
                    }
                    for (k, c) in m {
                        if k != "properties" || c.is_object() {
                            open_structs(c, &format!("{at}/{k}"), found);
                        }
                    }
                }
                Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .for_each(|(i, c)| open_structs(c, &format!("{at}/{i}"), found)),
                _ => {}
            }
        }
        let mut found = vec![];
        for (path, value) in all() {
            if !path.ends_with("request.schema.json") {
                open_structs(&value, &path, &mut found);
            }
        }
        // A property named "properties" would look like a schema keyword here; none is.
        found.retain(|p| !p.ends_with("/properties/properties"));
        assert!(found.is_empty(), "open objects: {found:?}");
        let status = all()
            .into_iter()
            .find(|(p, _)| p == "commands/status.reply.schema.json")
            .map(|(_, v)| v)
            .unwrap();
        assert_eq!(status["$defs"]["OkReply"]["additionalProperties"], false);
        assert_eq!(status["$defs"]["ErrorReply"]["additionalProperties"], false);
    }

    /// The root request file takes what the parser takes: `properties` is optional
    /// where every property is.
    #[test]
    fn the_root_request_schema_agrees_with_the_parser() {
        let root = all()
            .into_iter()
            .find(|(p, _)| p == "request.schema.json")
            .map(|(_, v)| v)
            .unwrap();
        let validator = jsonschema_like_required(&root, "status");
        assert_eq!(validator, vec![json!("command")]);
        assert!(crate::command::parse_request(br#"{"command":"status"}"#).is_ok());
        let incr = jsonschema_like_required(&root, "incr");
        assert!(incr.contains(&json!("properties")), "{incr:?}");
    }

    fn jsonschema_like_required(root: &Value, command: &str) -> Vec<Value> {
        root["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["properties"]["command"]["const"] == command)
            .and_then(|b| b["required"].as_array().cloned())
            .unwrap_or_default()
    }

    #[test]
    fn no_stray_schema_files() {
        let known: Vec<String> = all().into_iter().map(|(p, _)| p).collect();
        for sub in ["", "commands"] {
            let Ok(entries) = std::fs::read_dir(dir().join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.ends_with(".schema.json") {
                    let rel = if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    };
                    assert!(
                        known.contains(&rel),
                        "{rel} is not generated by any type; remove it"
                    );
                }
            }
        }
    }
}
