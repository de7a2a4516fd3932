//! The OpenAPI document as the fuzzer reads it: its operations, `$ref` resolution, and a
//! validator for the subset of JSON Schema (2020-12, as OpenAPI 3.1 uses it) that the
//! document contains.
//!
//! The validator knows the keywords it checks and the ones that only annotate; any other
//! keyword is reported as a failure, so that a schema the validator cannot judge is never
//! passed silently.

use serde_json::{Map, Value};

/// Keywords that annotate without constraining.
const ANNOTATIONS: &[&str] = &["description", "example", "examples", "default", "title", "deprecated", "readOnly", "writeOnly", "xml"];

/// Most `$ref` hops followed from one schema (a cycle of references would otherwise loop).
const REF_HOPS_MAX: usize = 16;

/// The document, and what the fuzzer asks of it.
pub(crate) struct Doc {
    root: Value,
}

/// One operation: a method on a path template, with its OpenAPI object.
#[derive(Clone, Debug)]
pub(crate) struct Operation {
    /// Upper case: `GET`, `POST`…
    pub(crate) method: String,
    /// The template: `/v1/tenants/{tenant}/imvus/{id}`.
    pub(crate) path: String,
    /// The operation object.
    pub(crate) spec: Value,
}

/// Where a parameter goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    Path,
    Query,
}

/// One parameter of an operation.
#[derive(Clone, Debug)]
pub(crate) struct Parameter {
    pub(crate) name: String,
    pub(crate) location: Location,
    pub(crate) required: bool,
    pub(crate) schema: Value,
}

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

impl Doc {
    pub(crate) fn new(root: Value) -> Self {
        Self { root }
    }

    /// Every operation, in document order (paths sorted, then methods).
    pub(crate) fn operations(&self) -> Vec<Operation> {
        let mut operations = Vec::new();
        let Some(paths) = self.root.get("paths").and_then(Value::as_object) else { return operations };
        for (path, item) in paths {
            for method in METHODS {
                if let Some(spec) = item.get(*method) {
                    operations.push(Operation { method: method.to_uppercase(), path: path.clone(), spec: spec.clone() });
                }
            }
        }
        operations
    }

    /// `schema` with its `$ref`s followed (to the schema itself if it has none).
    pub(crate) fn resolve<'a>(&'a self, mut schema: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..REF_HOPS_MAX {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else { return Ok(schema) };
            let pointer = reference.strip_prefix('#').ok_or_else(|| format!("external reference {reference}"))?;
            schema = self.root.pointer(pointer).ok_or_else(|| format!("dangling reference {reference}"))?;
        }
        Err("more than 16 `$ref` hops".into())
    }

    /// Checks `value` against `schema`; each violation is pushed to `errors` as
    /// `instance path: what (schema path)`.
    pub(crate) fn validate(&self, schema: &Value, value: &Value, errors: &mut Vec<String>) {
        self.check(schema, value, &mut Cursor { instance: "$".into(), schema: "#".into() }, errors);
    }

    /// Whether `value` satisfies `schema`.
    pub(crate) fn is_valid(&self, schema: &Value, value: &Value) -> bool {
        let mut errors = Vec::new();
        self.validate(schema, value, &mut errors);
        errors.is_empty()
    }

    fn check(&self, schema: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let Some(object) = schema.as_object() else {
            match schema {
                Value::Bool(true) => {}
                Value::Bool(false) => errors.push(at.fail("nothing is allowed here")),
                _ => errors.push(at.fail("the schema is neither an object nor a boolean")),
            }
            return;
        };
        for (keyword, argument) in object {
            self.check_keyword(object, keyword, argument, value, at, errors);
        }
    }

    fn check_keyword(
        &self,
        schema: &Map<String, Value>,
        keyword: &str,
        argument: &Value,
        value: &Value,
        at: &mut Cursor,
        errors: &mut Vec<String>,
    ) {
        match keyword {
            "$ref" => match self.resolve(&Value::Object(Map::from_iter([(keyword.to_owned(), argument.clone())]))) {
                Ok(target) => {
                    let target = target.clone();
                    at.enter_reference(argument.as_str().unwrap_or("$ref"), |at| self.check(&target, value, at, errors));
                }
                Err(e) => errors.push(at.fail(&e)),
            },
            "type" => check_type(argument, value, at, errors),
            "enum" => {
                if !argument.as_array().is_some_and(|options| options.contains(value)) {
                    errors.push(at.fail(&format!("{} is not one of {argument}", excerpt(value))));
                }
            }
            "const" if argument != value => errors.push(at.fail(&format!("{} is not {argument}", excerpt(value)))),
            "const" => {}
            "properties" => self.check_properties(argument, value, at, errors),
            "required" => check_required(argument, value, at, errors),
            "additionalProperties" => self.check_additional(schema, argument, value, at, errors),
            "propertyNames" => self.check_property_names(argument, value, at, errors),
            "items" => self.check_items(argument, value, at, errors),
            "minItems" | "maxItems" => check_count(keyword, argument, value.as_array().map(Vec::len), at, errors),
            "minProperties" | "maxProperties" => check_count(keyword, argument, value.as_object().map(Map::len), at, errors),
            "minLength" | "maxLength" => check_count(keyword, argument, value.as_str().map(|s| s.chars().count()), at, errors),
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => check_bound(keyword, argument, value, at, errors),
            "pattern" => check_pattern(argument, value, at, errors),
            "format" => check_format(argument, value, at, errors),
            "allOf" => self.check_all_of(argument, value, at, errors),
            "oneOf" | "anyOf" => self.check_alternatives(keyword, argument, value, at, errors),
            _ if ANNOTATIONS.contains(&keyword) => {}
            _ => errors.push(at.fail(&format!("keyword `{keyword}` is not known to the fuzzer's validator"))),
        }
    }

    fn check_properties(&self, properties: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let (Some(properties), Some(object)) = (properties.as_object(), value.as_object()) else { return };
        for (name, schema) in properties {
            if let Some(field) = object.get(name) {
                at.enter(&format!("properties/{name}"), name, |at| self.check(schema, field, at, errors));
            }
        }
    }

    fn check_additional(&self, schema: &Map<String, Value>, additional: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let Some(object) = value.as_object() else { return };
        let declared = schema.get("properties").and_then(Value::as_object);
        for (name, field) in object {
            if declared.is_some_and(|d| d.contains_key(name)) {
                continue;
            }
            match additional {
                Value::Bool(false) => errors.push(at.fail(&format!("unknown field `{name}`"))),
                Value::Bool(true) => {}
                extra => at.enter("additionalProperties", name, |at| self.check(extra, field, at, errors)),
            }
        }
    }

    fn check_property_names(&self, names: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let Some(object) = value.as_object() else { return };
        for name in object.keys() {
            at.enter("propertyNames", name, |at| self.check(names, &Value::String(name.clone()), at, errors));
        }
    }

    fn check_items(&self, items: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let Some(array) = value.as_array() else { return };
        for (i, item) in array.iter().enumerate() {
            at.enter("items", &i.to_string(), |at| self.check(items, item, at, errors));
        }
    }

    fn check_all_of(&self, branches: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        for (i, branch) in branches.as_array().into_iter().flatten().enumerate() {
            at.enter_schema(&format!("allOf/{i}"), |at| self.check(branch, value, at, errors));
        }
    }

    /// `oneOf`: exactly one branch; `anyOf`: at least one. On failure, says what each branch
    /// found wrong.
    fn check_alternatives(&self, keyword: &str, branches: &Value, value: &Value, at: &mut Cursor, errors: &mut Vec<String>) {
        let mut failures = Vec::new();
        let mut matched = 0;
        for (i, branch) in branches.as_array().into_iter().flatten().enumerate() {
            let mut branch_errors = Vec::new();
            at.enter_schema(&format!("{keyword}/{i}"), |at| self.check(branch, value, at, &mut branch_errors));
            if branch_errors.is_empty() {
                matched += 1;
            } else {
                failures.push(format!("[{i}] {}", branch_errors.join("; ")));
            }
        }
        match (keyword, matched) {
            ("oneOf", 1) => {}
            ("anyOf", n) if n >= 1 => {}
            ("oneOf", n) if n > 1 => errors.push(at.fail(&format!("{} matches {n} branches of oneOf", excerpt(value)))),
            _ => errors.push(at.fail(&format!("{} matches no branch of {keyword}: {}", excerpt(value), failures.join(" | ")))),
        }
    }
}

/// Where the validator is: in the value (`$.key.id`) and in the schema (`#/properties/key`).
struct Cursor {
    instance: String,
    schema: String,
}

impl Cursor {
    fn fail(&self, what: &str) -> String {
        format!("{}: {what} (schema {})", self.instance, self.schema)
    }

    /// Runs `f` one level down in both the schema and the value.
    fn enter(&mut self, schema_step: &str, instance_step: &str, f: impl FnOnce(&mut Self)) {
        let (instance_len, schema_len) = (self.instance.len(), self.schema.len());
        self.instance.push('.');
        self.instance.push_str(instance_step);
        self.schema.push('/');
        self.schema.push_str(schema_step);
        f(self);
        self.instance.truncate(instance_len);
        self.schema.truncate(schema_len);
    }

    /// Runs `f` in the schema a `$ref` names: schema paths start again from it, the shortest
    /// name for where a value failed.
    fn enter_reference(&mut self, reference: &str, f: impl FnOnce(&mut Self)) {
        let outer = std::mem::replace(&mut self.schema, reference.to_owned());
        f(self);
        self.schema = outer;
    }

    /// Runs `f` one level down in the schema only (a branch).
    fn enter_schema(&mut self, schema_step: &str, f: impl FnOnce(&mut Self)) {
        let schema_len = self.schema.len();
        self.schema.push('/');
        self.schema.push_str(schema_step);
        f(self);
        self.schema.truncate(schema_len);
    }
}

/// The JSON type names `value` has (an integer is also a number).
fn type_names(value: &Value) -> &'static [&'static str] {
    match value {
        Value::Null => &["null"],
        Value::Bool(_) => &["boolean"],
        Value::Number(n) if n.is_i64() || n.is_u64() => &["integer", "number"],
        Value::Number(_) => &["number"],
        Value::String(_) => &["string"],
        Value::Array(_) => &["array"],
        Value::Object(_) => &["object"],
    }
}

fn check_type(argument: &Value, value: &Value, at: &Cursor, errors: &mut Vec<String>) {
    let allowed: Vec<&str> = match argument {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => return errors.push(at.fail("`type` is neither a name nor a list")),
    };
    if !type_names(value).iter().any(|t| allowed.contains(t)) {
        errors.push(at.fail(&format!("{} is not of type {argument}", excerpt(value))));
    }
}

fn check_required(argument: &Value, value: &Value, at: &Cursor, errors: &mut Vec<String>) {
    let Some(object) = value.as_object() else { return };
    for name in argument.as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !object.contains_key(name) {
            errors.push(at.fail(&format!("required field `{name}` is missing")));
        }
    }
}

fn check_count(keyword: &str, argument: &Value, count: Option<usize>, at: &Cursor, errors: &mut Vec<String>) {
    let (Some(count), Some(bound)) = (count, argument.as_u64()) else { return };
    let count = count as u64;
    let ok = if keyword.starts_with("min") { count >= bound } else { count <= bound };
    if !ok {
        errors.push(at.fail(&format!("{count} breaks {keyword} {bound}")));
    }
}

fn check_bound(keyword: &str, argument: &Value, value: &Value, at: &Cursor, errors: &mut Vec<String>) {
    let (Some(n), Some(bound)) = (value.as_f64(), argument.as_f64()) else { return };
    // Exact for integers: compare as i128 when both are integers (f64 loses precision past 2^53).
    let ordering = match (as_i128(value), as_i128(argument)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => n.partial_cmp(&bound).unwrap_or(std::cmp::Ordering::Equal),
    };
    use std::cmp::Ordering::{Greater, Less};
    let ok = match keyword {
        "minimum" => ordering != Less,
        "maximum" => ordering != Greater,
        "exclusiveMinimum" => ordering == Greater,
        _ => ordering == Less,
    };
    if !ok {
        errors.push(at.fail(&format!("{} breaks {keyword} {argument}", excerpt(value))));
    }
}

pub(crate) fn as_i128(value: &Value) -> Option<i128> {
    value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from))
}

fn check_pattern(argument: &Value, value: &Value, at: &Cursor, errors: &mut Vec<String>) {
    let (Some(pattern), Some(text)) = (argument.as_str(), value.as_str()) else { return };
    match regex::Regex::new(pattern) {
        Ok(re) if re.is_match(text) => {}
        Ok(_) => errors.push(at.fail(&format!("{} does not match {pattern:?}", excerpt(value)))),
        Err(e) => errors.push(at.fail(&format!("pattern {pattern:?} does not compile: {e}"))),
    }
}

/// Formats with a range (OpenAPI's `int32`, `int64`); others only annotate here.
fn check_format(argument: &Value, value: &Value, at: &Cursor, errors: &mut Vec<String>) {
    let Some(n) = as_i128(value) else { return };
    let range = match argument.as_str() {
        Some("int32") => i128::from(i32::MIN)..=i128::from(i32::MAX),
        Some("int64") => i128::from(i64::MIN)..=i128::from(i64::MAX),
        _ => return,
    };
    if !range.contains(&n) {
        errors.push(at.fail(&format!("{n} is outside format {argument}")));
    }
}

/// A value as short text for messages.
pub(crate) fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    cut(&text, 120)
}

/// `text`, cut to about `max` bytes.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}… ({} bytes)", &text[..at], text.len())
}

impl Operation {
    /// `METHOD /path`.
    pub(crate) fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        let mut parameters = Vec::new();
        for p in self.spec.get("parameters").and_then(Value::as_array).into_iter().flatten() {
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => Location::Path,
                Some("query") => Location::Query,
                _ => continue, // headers and cookies: the document declares none
            };
            parameters.push(Parameter {
                name: p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                location,
                required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                schema: p.get("schema").cloned().unwrap_or(Value::Bool(true)),
            });
        }
        parameters
    }

    /// Parameters whose location is not one the fuzzer can send (headers, cookies).
    pub(crate) fn unsupported_parameters(&self) -> Vec<String> {
        let spec = self.spec.get("parameters").and_then(Value::as_array);
        spec.into_iter()
            .flatten()
            .filter(|p| !matches!(p.get("in").and_then(Value::as_str), Some("path" | "query")))
            .map(|p| p.to_string())
            .collect()
    }

    /// The JSON request body's schema and whether the body is required.
    pub(crate) fn body(&self) -> Option<(Value, bool)> {
        let body = self.spec.get("requestBody")?;
        let schema = body.pointer("/content/application~1json/schema")?.clone();
        Some((schema, body.get("required").and_then(Value::as_bool).unwrap_or(false)))
    }

    /// Media types of the request body other than JSON (the fuzzer sends JSON only).
    pub(crate) fn non_json_bodies(&self) -> Vec<String> {
        let content = self.spec.pointer("/requestBody/content").and_then(Value::as_object);
        content.into_iter().flat_map(|c| c.keys()).filter(|k| *k != "application/json").cloned().collect()
    }

    /// The declared response for `status`.
    pub(crate) fn response(&self, status: u16) -> Option<&Value> {
        let responses = self.spec.get("responses")?;
        responses.get(status.to_string()).or_else(|| responses.get(format!("{}XX", status / 100))).or_else(|| responses.get("default"))
    }
}
