//! Values from schemas, from one seeded generator: valid ones (anything the schema allows,
//! biased towards small values and the bounds, where bugs live) and invalid ones (one rule of
//! the schema broken, with a word on which).
//!
//! Both are checked against the validator by the caller: a "valid" value the validator refuses,
//! or an "invalid" one it accepts, is a bug of the fuzzer, not of the server.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};

use super::schema::{as_i128, Doc};

/// Nesting depth of free-form values (`{}` schemas): enough to exercise nesting, small enough
/// to keep bodies short.
const ANY_DEPTH_MAX: usize = 2;
/// Longest string made when the schema sets no `maxLength`, bytes.
const STRING_LEN_DEFAULT_MAX: usize = 24;
/// Items added to an array beyond its `minItems` at most.
const ARRAY_EXTRA_MAX: u64 = 3;
/// Tries to find a value a pattern or a mutation allows before giving up.
const TRIES_MAX: usize = 20;
/// Characters of generated strings: mostly plain, some that need escaping in URLs and JSON,
/// some multi-byte.
const CHARS: &[char] = &[
    'a', 'b', 'c', 'x', 'y', 'z', 'K', 'Q', '0', '1', '7', '9', '-', '_', '.', ' ', '/', '%', '?', '#', '&', '=', '+', ':', '"', '\\',
    '\'', '<', 'é', 'ß', '☃', '😀', '\n', '\t',
];

/// splitmix64: one `u64` seed, a reproducible stream (no dependency, no global state).
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True `percent` times in a hundred.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        assert!(!items.is_empty(), "pick from an empty list");
        &items[self.below(items.len() as u64) as usize]
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: i128, hi: i128) -> i128 {
        let span = (hi - lo) as u128 + 1;
        let r = (u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())) % span;
        lo + r as i128
    }
}

/// A value `schema` allows.
pub(crate) fn valid(doc: &Doc, schema: &Value, rng: &mut Rng) -> Result<Value, String> {
    let value = valid_at(doc, schema, rng, 0)?;
    let mut errors = Vec::new();
    doc.validate(schema, &value, &mut errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!("the fuzzer made {value} for {schema}, which its own validator refuses: {}", errors.join("; ")))
    }
}

fn valid_at(doc: &Doc, schema: &Value, rng: &mut Rng, depth: usize) -> Result<Value, String> {
    let schema = doc.resolve(schema)?;
    let Some(object) = schema.as_object() else { return Ok(any_value(rng, depth)) };
    if let Some(options) = object.get("enum").and_then(Value::as_array) {
        return Ok(rng.pick(options).clone());
    }
    if let Some(value) = object.get("const") {
        return Ok(value.clone());
    }
    if let Some(branches) = object.get("oneOf").or_else(|| object.get("anyOf")).and_then(Value::as_array) {
        return valid_at(doc, rng.pick(branches), rng, depth);
    }
    if let Some(branches) = object.get("allOf").and_then(Value::as_array) {
        return merged(doc, branches, rng, depth);
    }
    let types = type_list(schema);
    if types.is_empty() {
        // No `type`: an object schema if it names properties, else anything.
        return if object.contains_key("properties") { valid_object(doc, object, rng, depth) } else { Ok(any_value(rng, depth)) };
    }
    let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
    if non_null.is_empty() || (non_null.len() < types.len() && rng.chance(15)) {
        return Ok(Value::Null);
    }
    match *rng.pick(&non_null) {
        "boolean" => Ok(Value::Bool(rng.chance(50))),
        "integer" => Ok(valid_integer(object, rng)),
        "number" => Ok(valid_number(object, rng)),
        "string" => valid_string(object, rng),
        "array" => valid_array(doc, object, rng, depth),
        "object" => valid_object(doc, object, rng, depth),
        other => Err(format!("type `{other}` is unknown to the fuzzer")),
    }
}

/// The names in `type`, whether one or a list.
pub(crate) fn type_list(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// `allOf` of object schemas: each branch's fields, together.
fn merged(doc: &Doc, branches: &[Value], rng: &mut Rng, depth: usize) -> Result<Value, String> {
    let mut fields = Map::new();
    for branch in branches {
        match valid_at(doc, branch, rng, depth)? {
            Value::Object(part) => fields.extend(part),
            other => return Err(format!("allOf of a non-object ({other}) is beyond the fuzzer")),
        }
    }
    Ok(Value::Object(fields))
}

/// The inclusive integer range a schema allows (its bounds, else its format's).
pub(crate) fn integer_range(schema: &Map<String, Value>) -> (i128, i128) {
    let (mut lo, mut hi) = match schema.get("format").and_then(Value::as_str) {
        Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    if let Some(min) = schema.get("minimum").and_then(as_i128) {
        lo = lo.max(min);
    }
    if let Some(max) = schema.get("maximum").and_then(as_i128) {
        hi = hi.min(max);
    }
    if let Some(min) = schema.get("exclusiveMinimum").and_then(as_i128) {
        lo = lo.max(min + 1);
    }
    if let Some(max) = schema.get("exclusiveMaximum").and_then(as_i128) {
        hi = hi.min(max - 1);
    }
    (lo, hi)
}

/// Small values most often (ids, counts), the bounds often, anything in range sometimes.
fn valid_integer(schema: &Map<String, Value>, rng: &mut Rng) -> Value {
    let (lo, hi) = integer_range(schema);
    let n = match rng.below(10) {
        0..=3 => rng.between(lo.max(0).min(hi), (lo.max(0) + 10).min(hi)),
        4 | 5 => lo,
        6 => hi,
        _ => rng.between(lo, hi),
    };
    integer_value(n)
}

pub(crate) fn integer_value(n: i128) -> Value {
    match (i64::try_from(n), u64::try_from(n)) {
        (Ok(i), _) => json!(i),
        (_, Ok(u)) => json!(u),
        _ => json!(n as f64),
    }
}

fn valid_number(schema: &Map<String, Value>, rng: &mut Rng) -> Value {
    let lo = schema.get("minimum").and_then(Value::as_f64).unwrap_or(-1e6);
    let hi = schema.get("maximum").and_then(Value::as_f64).unwrap_or(1e6);
    json!(lo + (hi - lo) * (rng.below(1_000_001) as f64 / 1e6))
}

/// A string within `minLength..=maxLength` (counted in UTF-8 bytes, which also bounds the
/// characters: the server's limits are bytes, JSON Schema's characters; a string that fits
/// in bytes fits both) and matching `pattern`.
fn valid_string(schema: &Map<String, Value>, rng: &mut Rng) -> Result<Value, String> {
    let min_len = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max_len = schema.get("maxLength").and_then(Value::as_u64).map_or(usize::MAX, |m| m as usize);
    let Some(pattern) = schema.get("pattern").and_then(Value::as_str) else {
        return Ok(Value::String(random_string(rng, min_len, max_len)));
    };
    let re = regex::Regex::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    for _ in 0..TRIES_MAX {
        let text = string_matching(pattern, rng)?;
        let chars = text.chars().count();
        if re.is_match(&text) && chars >= min_len && text.len() <= max_len {
            return Ok(Value::String(text));
        }
    }
    Err(format!("no string of {min_len}..={max_len} bytes matching {pattern:?} in {TRIES_MAX} tries"))
}

/// Random text of `min..=max` bytes (at most [`STRING_LEN_DEFAULT_MAX`] beyond `min`).
fn random_string(rng: &mut Rng, min: usize, max: usize) -> String {
    let target = min + rng.below((max.min(min + STRING_LEN_DEFAULT_MAX) - min) as u64 + 1) as usize;
    let mut text = String::new();
    while text.len() < target {
        let c = *rng.pick(CHARS);
        if text.len() + c.len_utf8() > max {
            text.push('a');
            continue;
        }
        text.push(c);
    }
    text
}

/// A string matching `pattern`, generated by proptest's regex strategy from a runner seeded by
/// `rng` (one seed still decides everything). proptest does not take anchors: `^…$` are
/// dropped, since the whole generated string matches what is between them.
pub(crate) fn string_matching(pattern: &str, rng: &mut Rng) -> Result<String, String> {
    let inner = pattern.strip_prefix('^').unwrap_or(pattern);
    let inner = inner.strip_suffix('$').unwrap_or(inner);
    let strategy = proptest::string::string_regex(inner).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let tree = strategy.new_tree(&mut runner).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
    Ok(tree.current())
}

fn valid_array(doc: &Doc, schema: &Map<String, Value>, rng: &mut Rng, depth: usize) -> Result<Value, String> {
    let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
    let max = schema.get("maxItems").and_then(Value::as_u64).unwrap_or(u64::MAX).min(min + ARRAY_EXTRA_MAX);
    let len = min + rng.below(max - min + 1);
    let items = schema.get("items").cloned().unwrap_or(Value::Bool(true));
    let values: Result<Vec<Value>, String> = (0..len).map(|_| valid_at(doc, &items, rng, depth + 1)).collect();
    Ok(Value::Array(values?))
}

/// Required fields always, optional ones often; extra fields only where the schema allows
/// them (`additionalProperties` a schema, or absent on an object that names properties).
fn valid_object(doc: &Doc, schema: &Map<String, Value>, rng: &mut Rng, depth: usize) -> Result<Value, String> {
    let required: Vec<&str> = schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut fields = Map::new();
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, property) in properties.into_iter().flatten() {
        if required.contains(&name.as_str()) || rng.chance(60) {
            fields.insert(name.clone(), valid_at(doc, property, rng, depth + 1)?);
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => {}
        Some(extra @ Value::Object(_)) => {
            for _ in 0..rng.below(3) {
                let name = random_string(rng, 1, 12);
                fields.insert(name, valid_at(doc, extra, rng, depth + 1)?);
            }
        }
        _ if properties.is_none() => {
            // A free-form object (`{"type": "object"}`): anything in it.
            for _ in 0..rng.below(3) {
                fields.insert(random_string(rng, 1, 8), any_value(rng, depth + 1));
            }
        }
        _ if rng.chance(30) => {
            fields.insert("fuzz_extra".into(), any_value(rng, ANY_DEPTH_MAX));
        }
        _ => {}
    }
    Ok(Value::Object(fields))
}

/// Any JSON value, small.
pub(crate) fn any_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth >= ANY_DEPTH_MAX { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => json!(rng.between(-1000, 1000) as i64),
        3 => json!(rng.below(1000) as f64 / 7.0),
        4 => Value::String(random_string(rng, 0, 16)),
        5 => Value::Array((0..rng.below(3)).map(|_| any_value(rng, depth + 1)).collect()),
        _ => Value::Object((0..rng.below(3)).map(|i| (format!("f{i}"), any_value(rng, depth + 1))).collect()),
    }
}

/// A value `schema` refuses, and which rule it breaks; `None` when the schema allows anything.
pub(crate) fn invalid(doc: &Doc, schema: &Value, valid_sample: &Value, rng: &mut Rng) -> Result<Option<(Value, String)>, String> {
    let mut mutations = invalid_all(doc, schema, valid_sample, rng)?;
    if mutations.is_empty() {
        return Ok(None);
    }
    Ok(Some(mutations.swap_remove(rng.below(mutations.len() as u64) as usize)))
}

/// Every value this generator knows that `schema` refuses, starting from `valid_sample`.
pub(crate) fn invalid_all(doc: &Doc, schema: &Value, valid_sample: &Value, rng: &mut Rng) -> Result<Vec<(Value, String)>, String> {
    let mut mutations = Vec::new();
    mutations_of(doc, schema, valid_sample, rng, 0, &mut mutations)?;
    // A mutation can land on another allowed value (null where null is also allowed).
    mutations.retain(|(value, _)| !doc.is_valid(schema, value));
    Ok(mutations)
}

/// Every way this generator knows to break `schema`, starting from `sample`, a valid value
/// (so that a broken field sits in an otherwise valid body).
fn mutations_of(
    doc: &Doc,
    schema: &Value,
    sample: &Value,
    rng: &mut Rng,
    depth: usize,
    out: &mut Vec<(Value, String)>,
) -> Result<(), String> {
    let schema = doc.resolve(schema)?;
    let Some(object) = schema.as_object() else { return Ok(()) };
    wrong_types(schema, out);
    if let Some(options) = object.get("enum").and_then(Value::as_array) {
        if options.iter().all(Value::is_string) {
            out.push((json!("zz-not-an-option"), format!("not one of {}", Value::Array(options.clone()))));
        }
    }
    if let Some(branches) = object.get("oneOf").or_else(|| object.get("anyOf")).and_then(Value::as_array) {
        // A value of each shape, and nested breakage through the branch the sample took.
        for probe in [json!(7), json!("x"), json!([]), json!({}), json!(true)] {
            out.push((probe.clone(), format!("{probe}: no branch allows it")));
        }
        for branch in branches {
            if doc.is_valid(branch, sample) {
                mutations_of(doc, branch, sample, rng, depth, out)?;
            }
        }
    }
    match sample {
        Value::Number(_) => out_of_range(object, out),
        Value::String(_) => bad_strings(object, out)?,
        Value::Array(items) => bad_arrays(doc, object, items, rng, depth, out)?,
        Value::Object(fields) => bad_objects(doc, object, fields, rng, depth, out)?,
        _ => {}
    }
    Ok(())
}

/// A value of each JSON type the schema's `type` leaves out.
fn wrong_types(schema: &Value, out: &mut Vec<(Value, String)>) {
    let types = type_list(schema);
    if types.is_empty() {
        return;
    }
    let probes = [
        ("null", Value::Null),
        ("boolean", json!(true)),
        ("integer", json!(7)),
        ("number", json!(1.5)),
        ("string", json!("7")),
        ("array", json!([])),
        ("object", json!({})),
    ];
    for (name, probe) in probes {
        let allowed = types.contains(&name) || (name == "integer" && types.contains(&"number"));
        if !allowed {
            out.push((probe, format!("a {name} where the schema wants {types:?}")));
        }
    }
    if types.contains(&"integer") {
        out.push((json!(1e30), "a number far beyond 64 bits".into()));
    }
}

fn out_of_range(schema: &Map<String, Value>, out: &mut Vec<(Value, String)>) {
    // Only the schema's own bounds: a format's (int32, int64) is the document's approximation
    // of Rust's unsigned types, not a limit the server enforces.
    if let Some(min) = schema.get("minimum").and_then(as_i128) {
        out.push((integer_value(min - 1), format!("below minimum {min}")));
    }
    if let Some(max) = schema.get("maximum").and_then(as_i128) {
        out.push((integer_value(max + 1), format!("above maximum {max}")));
    }
}

/// Candidates for strings a `pattern` refuses: the usual suspects of paths and names.
const BAD_STRINGS: &[&str] = &["", ".", "..", "a/b", "UPPER", "with space", "é", "-", "0000-00", "9999-99", "%00", "x\u{0}y", "😀😀"];

fn bad_strings(schema: &Map<String, Value>, out: &mut Vec<(Value, String)>) -> Result<(), String> {
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        out.push((json!("x".repeat(max as usize + 1)), format!("longer than maxLength {max}")));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| *m > 0) {
        out.push((json!("x".repeat(min as usize - 1)), format!("shorter than minLength {min}")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        let re = regex::Regex::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        let long = "x".repeat(300);
        for candidate in BAD_STRINGS.iter().copied().chain([long.as_str()]) {
            if !re.is_match(candidate) {
                out.push((json!(candidate), format!("does not match {pattern:?}")));
            }
        }
    }
    Ok(())
}

fn bad_arrays(
    doc: &Doc,
    schema: &Map<String, Value>,
    items: &[Value],
    rng: &mut Rng,
    depth: usize,
    out: &mut Vec<(Value, String)>,
) -> Result<(), String> {
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| *m > 0) {
        out.push((Value::Array(items.iter().take(min as usize - 1).cloned().collect()), format!("fewer than minItems {min}")));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        let filler = items.first().cloned().unwrap_or(json!({}));
        out.push((Value::Array(vec![filler; max as usize + 1]), format!("more than maxItems {max}")));
    }
    if let (Some(item_schema), Some((i, item))) =
        (schema.get("items"), items.iter().enumerate().nth(rng.below(items.len() as u64) as usize))
    {
        let mut nested = Vec::new();
        mutations_of(doc, item_schema, item, rng, depth + 1, &mut nested)?;
        for (bad, why) in nested {
            let mut copy = items.to_vec();
            copy[i] = bad;
            out.push((Value::Array(copy), format!("[{i}]: {why}")));
        }
    }
    Ok(())
}

fn bad_objects(
    doc: &Doc,
    schema: &Map<String, Value>,
    fields: &Map<String, Value>,
    rng: &mut Rng,
    depth: usize,
    out: &mut Vec<(Value, String)>,
) -> Result<(), String> {
    for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        let mut copy = fields.clone();
        copy.remove(name);
        out.push((Value::Object(copy), format!("required `{name}` missing")));
    }
    if !fields.is_empty() {
        // serde's derived structs also take their fields by position: a form no schema shows.
        out.push((Value::Array(fields.values().cloned().collect()), "an array of the object's values (fields by position)".into()));
    }
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        let mut copy = fields.clone();
        copy.insert("zz_unknown".into(), json!(1));
        out.push((Value::Object(copy), "an unknown field where additionalProperties is false".into()));
    }
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Ok(()) };
    for (name, property) in properties {
        let sample = match fields.get(name) {
            Some(present) => present.clone(),
            None => valid_at(doc, property, rng, depth + 1)?,
        };
        let mut nested = Vec::new();
        mutations_of(doc, property, &sample, rng, depth + 1, &mut nested)?;
        for (bad, why) in nested {
            let mut copy = fields.clone();
            copy.insert(name.clone(), bad);
            out.push((Value::Object(copy), format!("`{name}`: {why}")));
        }
    }
    Ok(())
}
