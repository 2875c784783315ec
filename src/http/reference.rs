//! `GET /docs`: the API reference as one HTML page, rendered on the server
//! from the OpenAPI document (no script, nothing loaded from elsewhere), so
//! it reads the same on a loopback-only host as anywhere.

use std::{fmt::Write, sync::OnceLock};

use axum::response::Html;
use serde_json::{Map, Value};

use super::openapi;

#[utoipa::path(
    get, path = "/docs", operation_id = "api_reference", tag = "ops",
    responses((status = 200, description = "This API's reference, rendered from `/openapi.json`", content_type = "text/html", body = String)),
)]
pub async fn page() -> Html<&'static str> {
    static PAGE: OnceLock<String> = OnceLock::new();
    Html(PAGE.get_or_init(|| render(&openapi::document_value())))
}

/// The whole page for a document.
pub fn render(doc: &Value) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = esc(doc["info"]["title"].as_str().unwrap_or("API"));
    let version = esc(doc["info"]["version"].as_str().unwrap_or(""));
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} API reference</title>\
         <style>{CSS}</style></head><body><h1>{title} API <small>{version}</small></h1>\
         <p>{}</p><p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>",
        prose(doc["info"]["description"].as_str().unwrap_or("")),
        esc(doc["openapi"].as_str().unwrap_or("")),
    );
    security_schemes(&mut out, doc);
    operations(&mut out, doc);
    schemas(&mut out, doc);
    out.push_str("</body></html>");
    out
}

fn security_schemes(out: &mut String, doc: &Value) {
    out.push_str("<h2>Authentication</h2><table><tr><th>scheme</th><th>how</th><th></th></tr>");
    for (name, scheme) in object(&doc["components"]["securitySchemes"]) {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>Authorization: {} {}</td><td>{}</td></tr>",
            esc(name),
            esc(scheme["scheme"].as_str().unwrap_or("")),
            esc(scheme["bearerFormat"].as_str().unwrap_or("")),
            prose(scheme["description"].as_str().unwrap_or("")),
        );
    }
    out.push_str("</table>");
}

/// An operation as the document holds it: path, method, the operation object.
type Operation<'a> = (&'a str, &'a str, &'a Value);

fn operations(out: &mut String, doc: &Value) {
    // Grouped by tag, in the order the document lists its tags.
    let mut by_tag: Vec<(String, Vec<Operation>)> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|tag| (tag["name"].as_str().unwrap_or("").to_owned(), Vec::new()))
        .collect();
    for (path, item) in object(&doc["paths"]) {
        for (method, op) in object(item) {
            let tag = op["tags"][0].as_str().unwrap_or("");
            let slot = match by_tag.iter().position(|(t, _)| t == tag) {
                Some(i) => i,
                None => {
                    by_tag.push((tag.to_owned(), Vec::new()));
                    by_tag.len() - 1
                }
            };
            by_tag[slot].1.push((path, method, op));
        }
    }
    for (tag, ops) in &by_tag {
        let _ = write!(out, "<h2>{}</h2>", esc(tag));
        for (path, method, op) in ops {
            operation(out, path, method, op);
        }
    }
}

fn operation(out: &mut String, path: &str, method: &str, op: &Value) {
    let id = op["operationId"].as_str().unwrap_or("");
    let _ = write!(
        out,
        "<section id=\"op-{id}\"><h3><span class=\"m\">{}</span> <code>{}</code> <small>{id}</small></h3>",
        esc(&method.to_uppercase()),
        esc(path),
        id = esc(id),
    );
    for text in [&op["summary"], &op["description"]] {
        if let Some(text) = text.as_str() {
            let _ = write!(out, "<p>{}</p>", prose(text));
        }
    }
    let schemes: Vec<&str> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|req| object(req).into_iter().map(|(name, _)| name.as_str()))
        .collect();
    let _ = write!(
        out,
        "<p>Auth: {}</p>",
        if schemes.is_empty() {
            "none".to_owned()
        } else {
            esc(&schemes.join(", "))
        }
    );
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>");
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                if p["required"] == true { " *" } else { "" },
                esc(p["in"].as_str().unwrap_or("")),
                schema_summary(&p["schema"]),
                prose(p["description"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</table>");
    }
    for (media, content) in object(&op["requestBody"]["content"]) {
        let _ = write!(
            out,
            "<p>Body ({}): {}</p>",
            esc(media),
            schema_summary(&content["schema"])
        );
    }
    out.push_str("<table><tr><th>status</th><th>body</th><th></th></tr>");
    for (status, response) in object(&op["responses"]) {
        let bodies: Vec<String> = object(&response["content"])
            .into_iter()
            .map(|(media, c)| format!("{} {}", esc(media), schema_summary(&c["schema"])))
            .collect();
        let mut notes = prose(response["description"].as_str().unwrap_or(""));
        for (header, _) in object(&response["headers"]) {
            let _ = write!(notes, " <code>{}</code>", esc(header));
        }
        for (name, link) in object(&response["links"]) {
            let target = link["operationId"].as_str().unwrap_or("");
            let _ = write!(
                notes,
                " → <a href=\"#op-{t}\">{}</a>",
                esc(name),
                t = esc(target)
            );
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{notes}</td></tr>",
            esc(status),
            bodies.join("<br>")
        );
    }
    out.push_str("</table></section>");
}

fn schemas(out: &mut String, doc: &Value) {
    out.push_str("<h2>Schemas</h2>");
    for (name, schema) in object(&doc["components"]["schemas"]) {
        let _ = write!(
            out,
            "<section id=\"schema-{n}\"><h3>{n}</h3>",
            n = esc(name)
        );
        if let Some(text) = schema["description"].as_str() {
            let _ = write!(out, "<p>{}</p>", prose(text));
        }
        if let Some(values) = schema["enum"].as_array() {
            let listed: Vec<String> = values
                .iter()
                .map(|v| format!("<code>{}</code>", esc(v.as_str().unwrap_or(""))))
                .collect();
            let _ = write!(out, "<p>One of: {}</p>", listed.join(" "));
        }
        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut properties: Vec<(&String, &Value)> = object(&schema["properties"]);
        for part in schema["allOf"].as_array().into_iter().flatten() {
            properties.extend(object(&part["properties"]));
            if let Some(reference) = part["$ref"].as_str() {
                let _ = write!(out, "<p>All of {}, and:</p>", ref_link(reference));
            }
        }
        if !properties.is_empty() {
            out.push_str("<table><tr><th>field</th><th>schema</th><th></th></tr>");
            for (field, prop) in properties {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(field),
                    if required.contains(&field.as_str()) {
                        " *"
                    } else {
                        ""
                    },
                    schema_summary(prop),
                    prose(prop["description"].as_str().unwrap_or("")),
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
    }
}

/// One line for a schema: its type or a link to it, with its bounds.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return ref_link(reference);
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema[combinator].as_array() {
            let parts: Vec<String> = parts.iter().map(schema_summary).collect();
            return parts.join(" | ");
        }
    }
    let mut text = match &schema["type"] {
        Value::String(t) => esc(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .map(esc)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    };
    if text.starts_with("array") {
        text = format!("array of {}", schema_summary(&schema["items"]));
    }
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(text, " ({})", esc(format));
    }
    for (key, word) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("pattern", "matching"),
    ] {
        if let Some(bound) = schema.get(key).filter(|v| !v.is_null()) {
            let shown = bound
                .as_str()
                .map_or_else(|| bound.to_string(), str::to_owned);
            let _ = write!(text, ", {word} <code>{}</code>", esc(&shown));
        }
    }
    text
}

fn ref_link(reference: &str) -> String {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    format!("<a href=\"#schema-{n}\">{n}</a>", n = esc(name))
}

/// A JSON object's entries in document order (none for anything else).
fn object(value: &Value) -> Vec<(&String, &Value)> {
    value
        .as_object()
        .map_or_else(Vec::new, |m: &Map<String, Value>| m.iter().collect())
}

/// Escaped text with its `code` spans rendered.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, part) in esc(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1 small,h3 small{color:#888;font-weight:normal;font-size:.7em}h2{border-bottom:2px solid #ddd;margin-top:2.5rem}\
section{border-left:3px solid #eee;padding-left:1rem;margin:1.5rem 0}.m{background:#246;color:#fff;padding:0 .4em;border-radius:3px}\
table{border-collapse:collapse;margin:.5rem 0;width:100%}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f6f6f6}code{background:#f3f3f3;padding:0 .2em}";
