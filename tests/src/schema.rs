//! Checks JSON values against the committed schema files under `schemas/`, so that what
//! travels on the wire is what the published schemas promise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// The `schemas/` directory of the workspace.
pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("schemas")
}

fn validator(rel: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(rel) {
        return v.clone();
    }
    let path = schemas_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read schema {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("schema {} is not JSON: {e}", path.display()));
    let compiled = Arc::new(
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("schema {} does not compile: {e}", path.display())),
    );
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rel.to_owned(), compiled.clone());
    compiled
}

/// Every way `value` breaks the schema file at `schema_rel_path`; empty when it
/// matches.
pub fn violations(schema_rel_path: &str, value: &Value) -> Vec<String> {
    validator(schema_rel_path)
        .iter_errors(value)
        .map(|e| format!("at '{}': {e}", e.instance_path()))
        .collect()
}

/// Panics, listing every violation, unless `value` matches the schema file at
/// `schema_rel_path` (relative to `schemas/`, e.g. `commands/status.reply.schema.json`).
pub fn validate(schema_rel_path: &str, value: &Value) {
    let v = validator(schema_rel_path);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("  - at '{}': {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{value}\ndoes not match {schema_rel_path}:\n{}",
        errors.join("\n")
    );
}

/// Checks a reply against `reply.schema.json` and against the reply schema of
/// `command` (`commands/<command>.reply.schema.json`).
pub fn validate_reply(command: &str, value: &Value) {
    validate("reply.schema.json", value);
    validate(&format!("commands/{command}.reply.schema.json"), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_good_reply_and_rejects_a_bad_one() {
        let ok = json!({"node": "a", "status": "ok", "time": 1.0, "numprocesses": 2});
        validate_reply("incr", &ok);
        let err = json!({"node": "a", "status": "error", "time": 1.0, "reason": "x", "errno": 4});
        validate_reply("incr", &err);
        let bad = json!({"node": "a", "status": "ok", "time": 1.0, "numprocesses": "two"});
        let caught = std::panic::catch_unwind(|| validate_reply("incr", &bad));
        assert!(caught.is_err());
    }
}
