//! docs/events.md and docs/schemas/*.json are generated from the catalogue, and these tests fail
//! when they are out of date, so the published catalogue cannot drift from what the server
//! validates (and a schema change shows up in review as a diff of these files).
//! Run `UPDATE_DOCS=1 cargo test -p travelmap-domain --test catalogue_doc` to regenerate them.

use std::fmt::Write;

use serde_json::Value;
use travelmap_domain::catalogue::event_types;

const PREAMBLE: &str = r#"# Event catalogue (v1)

Every journey event is posted as an envelope around a typed `data` object:

```json
{"id": "5d0e8a52-3f8e-4c59-9b43-0a3f2b1c9e11",
 "type": "client.released",
 "schema_version": 1,
 "client_id": "0b6f3c1e-7a2d-4f4e-8c1a-2d9e5b7a6c30",
 "occurred_at": "2026-03-01T09:00:00+01:00",
 "actor": "PO-4",
 "data": {"release_kind": "conditional", "supervision": true, "municipality": "Opava"}}
```

- `id` is chosen by the sender and is the idempotency key: the same id with the same content is
  answered with the original receipt; with other content, `409 duplicate_conflict`. `id` and
  `client_id` are UUIDs, not the nil UUID; other spellings the UUID parser reads (no hyphens,
  braces, `urn:uuid:`) are taken as the same id and answered in the hyphenated form.
  `schema_version` and `expected_version` are whole numbers written without a fraction (`1`,
  not `1.0`).
- `occurred_at` is when it happened (agencies post late and out of order); the server adds
  `recorded_at`, when it learned it. Travel maps order by `occurred_at`; `as_of` reads and audit
  replays use `recorded_at`. `occurred_at` may not lie more than 10 minutes in the future, nor
  before 1900, and is kept to the microsecond (finer digits are dropped).
- `actor` is optional: the sender's reference to the worker (not a name).
- The recorded `agency` and `credential` come from the bearer key, never from the body; a body
  that sends `agency` is refused.
- *Posted by* names the kinds of agency (as configured in `[[agencies]]`) whose credentials may
  post the type: a sentence or a release only from a prison, a registration with the employment
  bureau only from the bureau. Any other agency gets `403 forbidden` and nothing is stored.
- `expected_version` (optional) is the client's stream version the sender last saw; if the
  stream has moved on, the event is refused with `409 version_conflict`.
- Every `data` object rejects unknown fields, so a misspelt optional field is an error rather
  than a silently lost fact. Optional fields may be omitted; `null` is accepted only where the
  type's JSON Schema allows it (not, for example, for `attended` or `identifiers`, which have
  defaults). Text fields are trimmed, must not be blank, and hold at most 2000 characters once
  trimmed (the published `maxLength` counts the text as sent, so a padded text the schema
  refuses may still be taken); no string may hold a control character other than tab, line
  feed and carriage return. Identifiers are compared once trimmed, so `"x"` and `" x"` are the
  same identifier listed twice. A sentence's `expected_release_date` is not before its
  `start_date`.
  Dates are `YYYY-MM-DD` exactly; times RFC 3339 exactly (`2026-03-01T09:00:00+01:00`, a
  fraction of a second and `Z` allowed, no leap second); both within the years 1900 to 2199
  (a time's year counted as written and in UTC). The schemas say so with a `pattern` beside each `format`, so
  that a validator taking `format` as a mere annotation refuses them too; a pattern cannot
  know that a month lacks a day (2026-02-30), nor a time's year in UTC within a day of 1900
  or 2199, which the server refuses all the same.

The same schemas are served by `GET /v1/event-types` (JSON Schema 2020-12, generated from the
types the server decodes into), and as one file per type in [schemas/](schemas/). Fields listed
under *personal* hold personal data: they are encrypted before they are stored, with a key per
client and *category*, and are erased by destroying that key (see
[data-protection.md](data-protection.md)). Data-protection decisions (`personal_data.erased`,
`retention.applied`, `processing.restricted`, `restriction.lifted`) are recorded by the service
itself through its own endpoints; posting them gets `403 forbidden`.

## Versions and upcasting

Each type has a `schema_version`; senders post the current one (a different version is refused
with `validation_failed` on `schema_version`). Stored events keep the version they were written
with and are never rewritten. When a type changes incompatibly, its version becomes 2 and the
catalogue gains an *upcaster*: a function that rewrites v1 `data` into v2 shape when an old event
is read. Every reader (histories, projections, rebuilds) sees only the current shape, and a
rebuild after the change applies the upcaster to the whole log. Adding an optional field is
compatible and does not need a new version.

## Rectification

`event.corrected` and `event.retracted` never change the original: they are new events of the
same client that name an earlier event. Projections read the corrected event with its replacement
data (validated against the corrected type's schema, its dated facts such as a birth date not
after the day of the event corrected nor the correction's own, and stored as that type reads it:
texts trimmed, defaults filled in, times to the microsecond) and drop retracted events; the history keeps
all of them, with who corrected what and why. A correction replaces the event's `data` only: its
`occurred_at` stays as recorded (the correction's own `occurred_at` is when it was made). An event
recorded with the wrong time is retracted and recorded again, under a new id, with the right one.
A retracted event, or a correction or retraction
itself, cannot be corrected or retracted again, nor can the data-protection officer's decisions
(`personal_data.erased`, `processing.restricted`, `restriction.lifted`, `retention.applied`),
which only the officer's further decisions change: all of these are `422 validation_failed` on
`data.event_id`. Any agency may post a rectification, but only of an event whose type its own
kind may post (*Posted by* of the rectified type): an NGO cannot correct or retract a prison's
release (`403 forbidden` naming `data.event_id`).

## Types
"#;

fn describe(property: &Value) -> String {
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        return format!("one of {}", values.join(", "));
    }
    if let Some(options) = property
        .get("anyOf")
        .or_else(|| property.get("oneOf"))
        .and_then(Value::as_array)
    {
        let options: Vec<String> = options
            .iter()
            .filter(|option| option.get("type") != Some(&Value::String("null".into())))
            .map(describe)
            .collect();
        return options.join(" or ");
    }
    let kind = match property.get("type") {
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("any")
            .to_owned(),
        Some(Value::String(kind)) => kind.clone(),
        _ => "any".to_owned(),
    };
    match (
        kind.as_str(),
        property.get("format").and_then(Value::as_str),
    ) {
        ("string", Some("date")) => "date".into(),
        ("string", Some("date-time")) => "date-time".into(),
        ("string", Some("uuid")) => "uuid".into(),
        ("array", _) => match property.get("items") {
            Some(items) => format!("list of {}", describe(items)),
            None => "list".into(),
        },
        ("object", _) => match property.get("properties").and_then(Value::as_object) {
            Some(fields) => {
                let names: Vec<String> = fields.keys().map(|name| format!("`{name}`")).collect();
                format!("object ({})", names.join(", "))
            }
            None => "object".into(),
        },
        _ => kind,
    }
}

/// The kinds of agency that may post a type, in words.
fn posted_by(info: &travelmap_domain::EventTypeInfo) -> String {
    if info.posted_by.is_empty() {
        return "the service (data-protection endpoints, retention run)".into();
    }
    if info.posted_by.len() == travelmap_domain::AgencyKind::ALL.len() {
        return "any agency".into();
    }
    let kinds: Vec<String> = info
        .posted_by
        .iter()
        .map(|kind| format!("`{kind}`"))
        .collect();
    kinds.join(", ")
}

fn category(event_type: &str) -> String {
    travelmap_domain::personal::category(event_type).map_or_else(
        || "that of the event rectified".to_owned(),
        |category| format!("`{category}`"),
    )
}

fn render() -> String {
    let mut out = String::from(PREAMBLE);
    out.push_str(
        "\n| type | version | category | description | posted by |\n| --- | --- | --- | --- | --- |\n",
    );
    for info in event_types() {
        let anchor = info.event_type.replace('.', "");
        writeln!(
            out,
            "| [`{}`](#{anchor}) | {} | {} | {} | {} |",
            info.event_type,
            info.schema_version,
            category(info.event_type),
            info.description,
            posted_by(info)
        )
        .unwrap();
    }
    for info in event_types() {
        writeln!(out, "\n### `{}`\n\n{}\n", info.event_type, info.description).unwrap();
        writeln!(out, "Posted by: {}.\n", posted_by(info)).unwrap();
        if !info.personal_fields.is_empty() {
            // A correction's `data` is the replacement data of the corrected event: what is
            // personal in it is what the corrected event's type lists, not all of it.
            let personal: Vec<String> = info
                .personal_fields
                .iter()
                .map(|f| match (info.event_type, *f) {
                    ("event.corrected", "data") => {
                        "the personal fields of the corrected event's type within `data`".to_owned()
                    }
                    _ => format!("`{f}`"),
                })
                .collect();
            writeln!(out, "Personal: {}.\n", personal.join(", ")).unwrap();
        }
        let properties = info.data["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if properties.is_empty() {
            out.push_str("No fields: `data` is `{}`.\n");
            continue;
        }
        let required: Vec<&str> = info.data["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| field | type | required | meaning |\n| --- | --- | --- | --- |\n");
        for (name, property) in &properties {
            let meaning = property["description"]
                .as_str()
                .unwrap_or("")
                .replace('\n', " ");
            let required = if required.contains(&name.as_str()) {
                "yes"
            } else {
                "no"
            };
            writeln!(
                out,
                "| `{name}` | {} | {required} | {meaning} |",
                describe(property)
            )
            .unwrap();
        }
    }
    out
}

#[test]
fn docs_events_md_matches_the_catalogue() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let expected = render();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/events.md is out of date; run `UPDATE_DOCS=1 cargo test -p travelmap-domain --test catalogue_doc`"
    );
}

#[test]
fn docs_schemas_match_the_catalogue() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schemas");
    let update = std::env::var_os("UPDATE_DOCS").is_some();
    if update {
        std::fs::create_dir_all(dir).unwrap();
    }
    let mut expected_files = Vec::new();
    for info in event_types() {
        let name = format!("{}.v{}.json", info.event_type, info.schema_version);
        let mut schema = info.data.clone();
        schema["$id"] = Value::String(format!("schemas/{name}"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = format!("{dir}/{name}");
        if update {
            std::fs::write(&path, &text).unwrap();
        } else {
            let actual = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                actual == text,
                "{path} is out of date; run `UPDATE_DOCS=1 cargo test -p travelmap-domain --test catalogue_doc`"
            );
        }
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "docs/schemas holds a file for every type and nothing else"
    );
}
