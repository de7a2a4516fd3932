//! The expression language of declarative workflows.
//!
//! Workflow definitions move data between steps with small expressions: written on their own
//! (a step's condition, a loop's collection) or embedded in JSON templates
//! (`"Hello ${input.name}"`). An expression is parsed once, when the definition is uploaded
//! ([`Expr::parse`], [`parse_template`]), checked against what is known before it runs
//! ([`Expr::roots`], [`Expr::fields_of`], [`Expr::static_type`], [`Expr::type_error`]), and
//! evaluated against a *scope* each time the step runs ([`Expr::eval`], [`render`]).
//!
//! Evaluation is pure and deterministic: it reads the scope and nothing else (no clock, no
//! randomness, no I/O), and object keys are always visited in sorted order, so replaying a
//! workflow gives the same values.
//!
//! # Scope
//!
//! The scope is a JSON object whose keys are the *roots* an expression may name, for example
//! `{"input": {…}, "vars": {…}, "steps": {"fetch": {"result": …}}, "item": …, "index": 3}`.
//! A root the scope does not hold reads as `null`.
//!
//! # Grammar
//!
//! ```text
//! expr     = or [ "?" expr ":" expr ]                  conditional, right-associative
//! or       = and { "||" and }
//! and      = equality { "&&" equality }
//! equality = compare { ( "==" | "!=" ) compare }
//! compare  = sum { ( "<" | "<=" | ">" | ">=" ) sum }
//! sum      = product { ( "+" | "-" ) product }
//! product  = unary { ( "*" | "/" | "%" ) unary }
//! unary    = { "!" | "-" } postfix
//! postfix  = primary { "." name | "[" expr "]" }
//! primary  = number | string | "true" | "false" | "null"
//!          | name                                       a root of the scope
//!          | name "(" [ expr { "," expr } ] ")"          a function call
//!          | "(" expr ")"
//!          | "[" [ expr { "," expr } ] "]"              an array
//!          | "{" [ key ":" expr { "," key ":" expr } ] "}"   an object
//! key      = name | string
//! name     = [A-Za-z_][A-Za-z0-9_]*
//! number   = digits [ "." digits ] [ ( "e" | "E" ) [ "+" | "-" ] digits ]
//! string   = "'" { char } "'" | '"' { char } '"'
//! ```
//!
//! Binary operators of one level associate to the left (`a - b - c` is `(a - b) - c`).
//! Whitespace (any Unicode whitespace) separates tokens and is otherwise ignored; there are no
//! comments. Trailing commas are not allowed.
//!
//! # Literals
//!
//! - Numbers: `3` is an integer (one that does not fit in a signed 64-bit integer becomes a
//!   float); `2.5` and `1e3` are floats (`1e3` is `1000.0`). A literal has no sign: `-3` is
//!   negation applied to `3`. A literal too large for a float is a parse error.
//! - Strings: single or double quotes; the escapes are `\\`, `\'`, `\"`, `\n` and `\t`; any other
//!   backslash sequence is a parse error. Any other character, newlines included, stands for
//!   itself.
//! - `true`, `false` and `null` are keywords, so they cannot name roots (they can name fields:
//!   `x.null` reads the field `"null"`).
//! - Arrays `[1, a, "x"]` and objects `{"k": v, k2: v}`; a key is a name or a string, and a key
//!   given twice is a parse error.
//!
//! # Paths
//!
//! A name reads a root of the scope; `.name` reads a field; `[key]` reads by a computed key. A
//! string key reads an object field; a number key reads an array element (it must be an integer;
//! a negative one counts from the end: `a[-1]` is the last element); a `null` key reads `null`;
//! a key of any other type is an error. Reading never fails otherwise: a missing field, an index
//! out of range, a non-integer index, a field of a non-object or an element of a non-array all
//! read as `null`, so `default(input.x, 0)` works whatever `input` holds. Any expression may be
//! followed by accessors: `[10, 20][0]`, `(a + b).c`, `keys(o)[0]`.
//!
//! # Types and values
//!
//! Values are JSON values: null, bool, number, string, array, object. Numbers are integers or
//! floats: arithmetic on two integers stays an integer when the result is exact and fits
//! (`2 + 3` is `5`, `6 / 2` is `3`, `7 / 2` is `3.5`) and falls back to a float when it would
//! overflow a signed 64-bit integer; any operation on a float gives a float (`2.0 + 3` is `5.0`).
//! A result that is not a finite number is an error. Numbers compare by value whatever their
//! representation (`1 == 1.0`).
//!
//! There is no implicit conversion: `"1" + 1`, `!0` and `null - 1` are errors. Conversions are
//! explicit: `str`, `num`, `bool`.
//!
//! # Operators
//!
//! From lowest to highest precedence:
//!
//! | operators           | operands                          | result                                     |
//! |---------------------|-----------------------------------|--------------------------------------------|
//! | `c ? a : b`         | `c` a bool                        | `a` if `c` is true, else `b`; only the chosen branch is evaluated |
//! | `\|\|`              | bools                             | bool; the right side is evaluated only when the left is `false` |
//! | `&&`                | bools                             | bool; the right side is evaluated only when the left is `true` |
//! | `==` `!=`           | any                               | bool; structural equality (numbers by value, objects ignore key order) |
//! | `<` `<=` `>` `>=`   | two numbers or two strings        | bool; strings compare by Unicode code point |
//! | `+`                 | two numbers, strings, arrays or objects | sum, concatenation, or merge (the right object's keys win) |
//! | `-`                 | numbers                           | difference                                 |
//! | `*` `/` `%`         | numbers                           | product, quotient, remainder (sign of the left operand); `/` and `%` by zero are errors |
//! | `!` `-` (prefix)    | a bool; a number                  | negation                                   |
//! | `.f` `[k]` `f(…)`   |                                   | paths and calls                            |
//!
//! Conditions (`? :`, `!`, `&&`, `||`) need real booleans: a non-bool operand is an error, not
//! "falsy". Write `x != null`, `len(x) > 0` or `bool(x)` to test other values.
//!
//! # Null
//!
//! `null` is an ordinary value: a missing root, field or element reads as `null`, `null == null`
//! is true, and `null` is rendered as `null` in text. Operators other than `==` and `!=` reject
//! it, so an unexpected `null` is reported rather than silently propagated; `default(x, y)`,
//! `get(o, k, d)` and `not_null(x)` handle values that may be missing.
//!
//! # Functions
//!
//! The set is fixed: calling an unknown function, or with the wrong number of arguments, is a
//! parse error.
//!
//! | function                 | result |
//! |--------------------------|--------|
//! | `len(x)`                 | characters of a string, elements of an array, keys of an object |
//! | `upper(s)` `lower(s)`    | the string in upper or lower case |
//! | `trim(s)`                | the string without leading and trailing whitespace |
//! | `contains(h, n)`         | `n` is a substring of string `h`, an element of array `h` (by `==`), or a key of object `h` |
//! | `starts_with(s, p)` `ends_with(s, p)` | bool, for two strings |
//! | `keys(o)`                | the object's keys, sorted |
//! | `values(o)`              | the object's values, in sorted key order |
//! | `min(a, b, …)` `max(a, b, …)` | the smallest / largest of one or more numbers, or of the numbers in a single array argument (an empty one is an error) |
//! | `abs(n)`                 | absolute value |
//! | `round(n)` `floor(n)` `ceil(n)` | the nearest integer (halves away from zero), rounded down, rounded up; an integer when it fits |
//! | `str(x)`                 | a string as it is; any other value as compact JSON (`null` is `"null"`) |
//! | `num(x)`                 | a number as it is; a string parsed as a decimal number (surrounding whitespace ignored); `true` 1, `false` 0; anything else is an error |
//! | `bool(x)`                | truthiness: `null`, `false`, `0`, `""`, `[]` and `{}` are false, everything else true |
//! | `default(x, y)`          | `x`, or `y` when `x` is `null` (`y` is evaluated only then) |
//! | `split(s, sep)`          | the parts of `s` between the separators; an empty `sep` splits into characters |
//! | `join(a, sep)`           | the elements of array `a`, each rendered like `str`, separated by `sep` |
//! | `range(n)` `range(a, b)` | the integers `0..n` or `a..b` (end excluded; empty when the end is not above the start); at most 10 000 |
//! | `slice(x, a)` `slice(x, a, b)` | characters or elements `a..b` of a string or array (`b` defaults to the end; negative indices count from the end; indices are clamped to the bounds) |
//! | `get(o, k)` `get(o, k, d)` | `o[k]`, or `d` (default `null`) when that reads `null`; `d` is evaluated only then |
//! | `type(x)`                | `"null"`, `"bool"`, `"number"`, `"string"`, `"array"` or `"object"` |
//! | `sum(a)`                 | the sum of an array of numbers (`0` when empty) |
//! | `not_null(x)`            | `x != null` |
//!
//! Integer arguments (`range`, `slice`) accept floats with no fractional part (`2.0`).
//!
//! # Templates
//!
//! A template is a JSON value in which strings may hold expressions ([`render`],
//! [`parse_template`]):
//!
//! - a string that is exactly one `${ expr }` evaluates to the expression's value, of any type:
//!   `"${input.count}"` gives the number itself;
//! - otherwise each `${ expr }` in a string is replaced by its value as text (strings as they
//!   are, other values as compact JSON, `null` as `null`): `"n=${n}, ok=${ok}"`;
//! - `$${` stands for a literal `${`;
//! - arrays and object values are rendered recursively; object keys are not templated;
//! - numbers, bools and `null` are returned unchanged.
//!
//! An expression ends at the first `}` that closes no `{` of its own and is outside its string
//! literals, so `"${ {"a": "}"}.a }"` works.
//!
//! # Static checks
//!
//! Definitions are checked at upload. [`Expr::roots`] lists the roots an expression reads (so an
//! unbound one is refused) and [`Expr::fields_of`] the fields it reads directly below a root (so
//! `vars.x` must be assigned somewhere). [`Expr::static_type`] gives the result type where it is
//! certain, and [`Expr::type_error`] reports an operator or function applied to a type it can
//! never accept; both take the types of the roots, [`Type::Any`] meaning "unknown". A check that
//! passes does not mean evaluation cannot fail: unknown types are checked when the step runs.
//!
//! # Limits
//!
//! - An expression is at most [`EXPR_LEN_MAX`] bytes of source.
//! - It nests at most [`EXPR_DEPTH_MAX`] levels, counted two ways that must both hold: in the
//!   source, parentheses, brackets, braces, call arguments and conditional branches each open a
//!   level; in the parsed tree, a literal or root is one level and every operator, call, array,
//!   object or accessor chain is one level above its deepest part (`a + b + c` is three levels:
//!   a chain of 64 `+` is too deep, a path `a.b.c…` of any length is two). So no input can
//!   exhaust the stack of the parser or the evaluator.
//! - A string or array built by an expression (`+`, `join`, `split`, `str`, `upper`, `lower`, or
//!   template interpolation) holds at most [`VALUE_LEN_MAX`] bytes or elements, and `range`
//!   yields at most 10 000 integers.
//!
//! # Errors
//!
//! [`ParseError`] gives a byte offset in the source (for a template string, in that string) and
//! what was wrong; [`parse_template`] adds the JSON path of the string. [`EvalError`] says what
//! was wrong with which values, e.g. "`-` needs numbers, got string and number" or "division by
//! zero"; [`render`] prefixes it with the JSON path of the string it came from. No input makes
//! parsing or evaluation panic.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Number, Value};

/// The longest expression source accepted, in bytes.
pub const EXPR_LEN_MAX: usize = 4096;

/// The deepest nesting accepted, in levels of the parsed expression (see the module docs).
pub const EXPR_DEPTH_MAX: usize = 64;

/// The most bytes (strings) or elements (arrays) a value built by an expression may hold.
pub const VALUE_LEN_MAX: usize = 1 << 20;

/// The most integers `range` yields: loops over a range must stay small.
const RANGE_LEN_MAX: usize = 10_000;

/// A parsed expression, ready to be checked and evaluated any number of times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
}

/// Why an expression does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {message}")]
pub struct ParseError {
    /// The byte offset in the source where the problem was found.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    fn new(at: usize, message: impl Into<String>) -> Self {
        Self { at, message: message.into() }
    }
}

/// Why an expression could not be evaluated against a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(
    /// What was wrong, with which values.
    pub String,
);

fn fail<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(message.into()))
}

/// Static types for definition validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Unknown: any value, or a mix of types.
    Any,
    /// Always `null`.
    Null,
    /// A bool.
    Bool,
    /// A number (integer or float).
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl Type {
    fn of(value: &Value) -> Type {
        match value {
            Value::Null => Type::Null,
            Value::Bool(_) => Type::Bool,
            Value::Number(_) => Type::Number,
            Value::String(_) => Type::String,
            Value::Array(_) => Type::Array,
            Value::Object(_) => Type::Object,
        }
    }

    /// The name `type(x)` returns, also used in messages.
    fn name(self) -> &'static str {
        match self {
            Type::Any => "any",
            Type::Null => "null",
            Type::Bool => "bool",
            Type::Number => "number",
            Type::String => "string",
            Type::Array => "array",
            Type::Object => "object",
        }
    }

    fn known(self) -> bool {
        self != Type::Any
    }
}

fn type_name(value: &Value) -> &'static str {
    Type::of(value).name()
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Number),
    Str(String),
    Name(String),
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    at: usize,
}

/// Two-character symbols come first so that `<=` is not read as `<` then `=`.
const SYMBOLS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "(", ")", "[", "]", "{", "}", ",", ":", ".", "?", "!", "-",
    "+", "*", "/", "%", "<", ">",
];

/// Splits the source into tokens, ending with `Tok::End`.
fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut toks = Vec::new();
    let mut pos = 0;
    while let Some(c) = src.get(pos..).and_then(|rest| rest.chars().next()) {
        if c.is_whitespace() {
            pos += c.len_utf8();
            continue;
        }
        let at = pos;
        let rest = &src[at..];
        let tok = if c.is_ascii_digit() {
            let (num, end) = lex_number(src, at)?;
            pos = end;
            Tok::Num(num)
        } else if c == '"' || c == '\'' {
            let (text, end) = lex_string(src, at, c)?;
            pos = end;
            Tok::Str(text)
        } else if c.is_ascii_alphabetic() || c == '_' {
            let len =
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            pos += len;
            Tok::Name(rest[..len].to_owned())
        } else if let Some(sym) = SYMBOLS.iter().find(|sym| rest.starts_with(**sym)) {
            pos += sym.len();
            Tok::Sym(sym)
        } else {
            return Err(ParseError::new(at, format!("unexpected character `{c}`")));
        };
        toks.push(Token { tok, at });
    }
    toks.push(Token { tok: Tok::End, at: src.len() });
    Ok(toks)
}

/// Reads the number starting at `start`; returns it and the offset after it.
fn lex_number(src: &str, start: usize) -> Result<(Number, usize), ParseError> {
    let bytes = src.as_bytes();
    let is_digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let digits_from = |mut i: usize| {
        while is_digit(i) {
            i += 1;
        }
        i
    };
    let mut end = digits_from(start);
    let mut float = false;
    // A `.` not followed by a digit is a field access (`[1][0].x`), not a decimal point.
    if bytes.get(end) == Some(&b'.') && is_digit(end + 1) {
        end = digits_from(end + 1);
        float = true;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut i = end + 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if is_digit(i) {
            end = digits_from(i);
            float = true;
        }
    }
    let text = src.get(start..end).unwrap_or_default();
    let int = if float { None } else { text.parse::<i64>().ok().map(Number::from) };
    let num =
        match int {
            Some(n) => n,
            None => text.parse::<f64>().ok().and_then(Number::from_f64).ok_or_else(|| {
                ParseError::new(start, format!("number `{text}` is out of range"))
            })?,
        };
    Ok((num, end))
}

/// Reads the string literal whose opening quote is at `start`; returns its text and the offset
/// after the closing quote.
fn lex_string(src: &str, start: usize, quote: char) -> Result<(String, usize), ParseError> {
    let body = start + quote.len_utf8();
    let mut text = String::new();
    let mut chars = src.get(body..).unwrap_or_default().char_indices();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((text, body + i + c.len_utf8()));
        }
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some((_, '\\')) => text.push('\\'),
            Some((_, '\'')) => text.push('\''),
            Some((_, '"')) => text.push('"'),
            Some((_, 'n')) => text.push('\n'),
            Some((_, 't')) => text.push('\t'),
            Some((_, other)) => {
                return Err(ParseError::new(body + i, format!("unknown escape `\\{other}`")))
            }
            None => break,
        }
    }
    Err(ParseError::new(start, "unterminated string"))
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Num(n) => format!("number `{n}`"),
        Tok::Str(_) => "a string".to_owned(),
        Tok::Name(name) => format!("`{name}`"),
        Tok::Sym(sym) => format!("`{sym}`"),
        Tok::End => "the end of the expression".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    Root(String),
    /// A base followed by one or more accessors; flat, so long paths do not nest.
    Path(Box<Node>, Vec<Seg>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Call(&'static Sig, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Field(String),
    Index(Node),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnOp {
    Not,
    Neg,
}

impl UnOp {
    fn symbol(self) -> &'static str {
        match self {
            UnOp::Not => "!",
            UnOp::Neg => "-",
        }
    }

    fn operand(self) -> Type {
        match self {
            UnOp::Not => Type::Bool,
            UnOp::Neg => Type::Number,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Cmp(Cmp),
    Arith(Arith),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// Binary operators by symbol, with their precedence (higher binds tighter).
const BINARY: &[(&str, BinOp, u8)] = &[
    ("||", BinOp::Or, 1),
    ("&&", BinOp::And, 2),
    ("==", BinOp::Eq, 3),
    ("!=", BinOp::Ne, 3),
    ("<", BinOp::Cmp(Cmp::Lt), 4),
    ("<=", BinOp::Cmp(Cmp::Le), 4),
    (">", BinOp::Cmp(Cmp::Gt), 4),
    (">=", BinOp::Cmp(Cmp::Ge), 4),
    ("+", BinOp::Arith(Arith::Add), 5),
    ("-", BinOp::Arith(Arith::Sub), 5),
    ("*", BinOp::Arith(Arith::Mul), 6),
    ("/", BinOp::Arith(Arith::Div), 6),
    ("%", BinOp::Arith(Arith::Rem), 6),
];

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Cmp(Cmp::Lt) => "<",
            BinOp::Cmp(Cmp::Le) => "<=",
            BinOp::Cmp(Cmp::Gt) => ">",
            BinOp::Cmp(Cmp::Ge) => ">=",
            BinOp::Arith(Arith::Add) => "+",
            BinOp::Arith(Arith::Sub) => "-",
            BinOp::Arith(Arith::Mul) => "*",
            BinOp::Arith(Arith::Div) => "/",
            BinOp::Arith(Arith::Rem) => "%",
        }
    }

    /// What the operands of a comparison or arithmetic operator must be, for messages.
    fn operands(self) -> &'static str {
        match self {
            BinOp::Cmp(_) => "two numbers or two strings",
            BinOp::Arith(Arith::Add) => "two numbers, strings, arrays or objects",
            _ => "numbers",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// A parsed subtree with its depth, so that depth is checked as the tree is built rather than
/// by a recursive walk afterwards (which could itself overflow).
struct Built {
    node: Node,
    depth: usize,
}

fn too_deep(at: usize) -> ParseError {
    ParseError::new(at, format!("expression nests deeper than {EXPR_DEPTH_MAX} levels"))
}

fn built(at: usize, node: Node, depth: usize) -> Result<Built, ParseError> {
    if depth > EXPR_DEPTH_MAX {
        return Err(too_deep(at));
    }
    Ok(Built { node, depth })
}

fn leaf(node: Node) -> Result<Built, ParseError> {
    Ok(Built { node, depth: 1 })
}

/// Never read: `lex` always ends the tokens with `End` and `advance` never passes it.
static END: Token = Token { tok: Tok::End, at: 0 };

/// Recursive descent. Recursion happens only through `expr` (which counts its own depth) and
/// through `binary` for higher precedence levels (bounded by the number of levels); prefix
/// operators and accessors are parsed in loops.
struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.toks.get(self.pos).unwrap_or(&END)
    }

    fn advance(&mut self) -> Token {
        let tok = self.peek().clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        tok
    }

    fn at_sym(&self, sym: &str) -> bool {
        matches!(self.peek().tok, Tok::Sym(s) if s == sym)
    }

    fn eat(&mut self, sym: &str) -> bool {
        let found = self.at_sym(sym);
        if found {
            self.advance();
        }
        found
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        let tok = self.peek();
        ParseError::new(tok.at, format!("expected {expected}, found {}", describe(&tok.tok)))
    }

    fn expect(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{sym}`")))
        }
    }

    fn expr(&mut self) -> Result<Built, ParseError> {
        self.depth += 1;
        if self.depth > EXPR_DEPTH_MAX {
            return Err(too_deep(self.peek().at));
        }
        let result = self.conditional();
        self.depth -= 1;
        result
    }

    fn conditional(&mut self) -> Result<Built, ParseError> {
        let cond = self.binary(1)?;
        let at = self.peek().at;
        if !self.eat("?") {
            return Ok(cond);
        }
        let yes = self.expr()?;
        self.expect(":")?;
        let no = self.expr()?;
        let depth = 1 + cond.depth.max(yes.depth).max(no.depth);
        let node = Node::Cond(Box::new(cond.node), Box::new(yes.node), Box::new(no.node));
        built(at, node, depth)
    }

    /// Precedence climbing over the operators of precedence `min` and above.
    fn binary(&mut self, min: u8) -> Result<Built, ParseError> {
        let mut lhs = self.unary()?;
        loop {
            let tok = self.peek();
            let Some(&(_, op, prec)) =
                BINARY.iter().find(|(sym, _, _)| matches!(tok.tok, Tok::Sym(s) if s == *sym))
            else {
                break;
            };
            if prec < min {
                break;
            }
            let at = tok.at;
            self.advance();
            let rhs = self.binary(prec + 1)?;
            let depth = 1 + lhs.depth.max(rhs.depth);
            lhs = built(at, Node::Binary(op, Box::new(lhs.node), Box::new(rhs.node)), depth)?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Built, ParseError> {
        let mut ops = Vec::new();
        loop {
            let op = match self.peek().tok {
                Tok::Sym("!") => UnOp::Not,
                Tok::Sym("-") => UnOp::Neg,
                _ => break,
            };
            let at = self.advance().at;
            // Each prefix operator is a level above its operand, which is at least one.
            if ops.len() + 1 >= EXPR_DEPTH_MAX {
                return Err(too_deep(at));
            }
            ops.push((op, at));
        }
        let mut operand = self.postfix()?;
        while let Some((op, at)) = ops.pop() {
            let depth = operand.depth + 1;
            operand = built(at, Node::Unary(op, Box::new(operand.node)), depth)?;
        }
        Ok(operand)
    }

    fn postfix(&mut self) -> Result<Built, ParseError> {
        let at = self.peek().at;
        let base = self.primary()?;
        let mut segs = Vec::new();
        let mut depth = base.depth;
        loop {
            if self.eat(".") {
                let tok = self.advance();
                match tok.tok {
                    Tok::Name(name) => segs.push(Seg::Field(name)),
                    other => {
                        return Err(ParseError::new(
                            tok.at,
                            format!("expected a field name after `.`, found {}", describe(&other)),
                        ))
                    }
                }
            } else if self.eat("[") {
                let key = self.expr()?;
                self.expect("]")?;
                depth = depth.max(key.depth);
                segs.push(Seg::Index(key.node));
            } else {
                break;
            }
        }
        if segs.is_empty() {
            return Ok(base);
        }
        built(at, Node::Path(Box::new(base.node), segs), depth + 1)
    }

    fn primary(&mut self) -> Result<Built, ParseError> {
        let tok = self.advance();
        match tok.tok {
            Tok::Num(n) => leaf(Node::Lit(Value::Number(n))),
            Tok::Str(s) => leaf(Node::Lit(Value::String(s))),
            Tok::Name(name) => match name.as_str() {
                "true" => leaf(Node::Lit(Value::Bool(true))),
                "false" => leaf(Node::Lit(Value::Bool(false))),
                "null" => leaf(Node::Lit(Value::Null)),
                _ if self.at_sym("(") => self.call(tok.at, &name),
                _ => leaf(Node::Root(name)),
            },
            Tok::Sym("(") => {
                let inner = self.expr()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Sym("[") => {
                let (items, depth) = self.list("]")?;
                built(tok.at, Node::Array(items), depth + 1)
            }
            Tok::Sym("{") => self.object(tok.at),
            other => Err(ParseError::new(
                tok.at,
                format!("expected an expression, found {}", describe(&other)),
            )),
        }
    }

    /// Comma-separated expressions up to `close` (the opening bracket is already read).
    fn list(&mut self, close: &str) -> Result<(Vec<Node>, usize), ParseError> {
        let mut items = Vec::new();
        let mut depth = 0;
        if self.eat(close) {
            return Ok((items, depth));
        }
        loop {
            let item = self.expr()?;
            depth = depth.max(item.depth);
            items.push(item.node);
            if self.eat(close) {
                return Ok((items, depth));
            }
            if !self.eat(",") {
                return Err(self.unexpected(&format!("`,` or `{close}`")));
            }
        }
    }

    fn call(&mut self, at: usize, name: &str) -> Result<Built, ParseError> {
        let sig = SIGS
            .iter()
            .find(|sig| sig.name == name)
            .ok_or_else(|| ParseError::new(at, format!("unknown function `{name}`")))?;
        self.expect("(")?;
        let (args, depth) = self.list(")")?;
        if args.len() < sig.min || args.len() > sig.max {
            return Err(ParseError::new(
                at,
                format!("`{name}` takes {}, got {}", sig.arity(), args.len()),
            ));
        }
        built(at, Node::Call(sig, args), depth + 1)
    }

    fn object(&mut self, at: usize) -> Result<Built, ParseError> {
        let mut fields: Vec<(String, Node)> = Vec::new();
        let mut depth = 0;
        if !self.eat("}") {
            loop {
                let tok = self.advance();
                let key = match tok.tok {
                    Tok::Name(key) | Tok::Str(key) => key,
                    other => {
                        return Err(ParseError::new(
                            tok.at,
                            format!("expected an object key, found {}", describe(&other)),
                        ))
                    }
                };
                if fields.iter().any(|(k, _)| *k == key) {
                    return Err(ParseError::new(tok.at, format!("duplicate key `{key}`")));
                }
                self.expect(":")?;
                let value = self.expr()?;
                depth = depth.max(value.depth);
                fields.push((key, value.node));
                if self.eat("}") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.unexpected("`,` or `}`"));
                }
            }
        }
        built(at, Node::Object(fields), depth + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Public API on expressions
// ---------------------------------------------------------------------------------------------

impl Expr {
    /// Parses an expression (see the module docs for the language).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] at the first offending byte: bad syntax, an unknown function, a wrong
    /// number of arguments, a source over [`EXPR_LEN_MAX`] or nesting over [`EXPR_DEPTH_MAX`].
    pub fn parse(src: &str) -> Result<Expr, ParseError> {
        if src.len() > EXPR_LEN_MAX {
            return Err(ParseError::new(
                EXPR_LEN_MAX,
                format!("expression is longer than {EXPR_LEN_MAX} bytes"),
            ));
        }
        let mut parser = Parser { toks: lex(src)?, pos: 0, depth: 0 };
        let expr = parser.expr()?;
        if parser.peek().tok != Tok::End {
            return Err(parser.unexpected("an operator or the end of the expression"));
        }
        Ok(Expr { root: expr.node })
    }

    /// Evaluates the expression against `scope`, an object whose keys are the roots.
    ///
    /// # Errors
    ///
    /// An [`EvalError`] when an operator or function meets values it does not take, on division
    /// by zero, on a non-finite result, or when a built value would exceed [`VALUE_LEN_MAX`].
    pub fn eval(&self, scope: &Value) -> Result<Value, EvalError> {
        eval(&self.root, scope)
    }

    /// The root identifiers the expression reads (e.g. `vars.x + input.y` -> `["input", "vars"]`),
    /// sorted, deduplicated. Used to refuse unbound variables at upload.
    pub fn roots(&self) -> Vec<String> {
        let mut roots = BTreeSet::new();
        self.root.visit(&mut |node| {
            if let Node::Root(name) = node {
                roots.insert(name.clone());
            }
        });
        roots.into_iter().collect()
    }

    /// The first segment after the root for paths rooted at `root` (e.g. for
    /// `vars.total + vars.n` and root `"vars"` -> `["n", "total"]`), sorted, deduplicated. Both
    /// `root.name` and `root["name"]` count; a computed key (`root[k]`) cannot be known and is
    /// left out. Used to check that `vars.x` was assigned somewhere.
    pub fn fields_of(&self, root: &str) -> Vec<String> {
        let mut fields = BTreeSet::new();
        self.root.visit(&mut |node| {
            let Node::Path(base, segs) = node else { return };
            if !matches!(&**base, Node::Root(name) if name == root) {
                return;
            }
            if let Some(Seg::Field(name) | Seg::Index(Node::Lit(Value::String(name)))) =
                segs.first()
            {
                fields.insert(name.clone());
            }
        });
        fields.into_iter().collect()
    }

    /// The static type of the result, given the static types of the roots ([`Type::Any`] when
    /// unknown). Precise where it is certain (`a == b` is `Bool`, `len(x)` is `Number`, `x - 1`
    /// is `Number`), [`Type::Any`] otherwise (`x + 1` when `x` is unknown, any path below a
    /// root).
    pub fn static_type(&self, root_type: &dyn Fn(&str) -> Type) -> Type {
        static_type(&self.root, root_type)
    }

    /// Where the types are known to mismatch an operator or function (e.g. `"a" - 1`, `!5`,
    /// `len(3)`), the first such error in evaluation order, with the message evaluation would
    /// give; `None` when nothing is known to be wrong. Used to refuse definitions at upload.
    pub fn type_error(&self, root_type: &dyn Fn(&str) -> Type) -> Option<String> {
        type_error(&self.root, root_type)
    }
}

impl Node {
    fn children(&self) -> Vec<&Node> {
        match self {
            Node::Lit(_) | Node::Root(_) => Vec::new(),
            Node::Path(base, segs) => std::iter::once(&**base)
                .chain(segs.iter().filter_map(|seg| match seg {
                    Seg::Index(key) => Some(key),
                    Seg::Field(_) => None,
                }))
                .collect(),
            Node::Array(items) | Node::Call(_, items) => items.iter().collect(),
            Node::Object(fields) => fields.iter().map(|(_, value)| value).collect(),
            Node::Unary(_, operand) => vec![&**operand],
            Node::Binary(_, lhs, rhs) => vec![&**lhs, &**rhs],
            Node::Cond(cond, yes, no) => vec![&**cond, &**yes, &**no],
        }
    }

    /// Calls `f` on every node, parents before children.
    fn visit(&self, f: &mut dyn FnMut(&Node)) {
        f(self);
        for child in self.children() {
            child.visit(f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------

/// What a missing field or element reads as, borrowed so paths can be walked without cloning.
static NULL: Value = Value::Null;

fn eval(node: &Node, scope: &Value) -> Result<Value, EvalError> {
    match node {
        Node::Lit(value) => Ok(value.clone()),
        Node::Root(name) => Ok(scope.get(name.as_str()).unwrap_or(&NULL).clone()),
        Node::Path(base, segs) => {
            let owned;
            let mut current = match &**base {
                Node::Root(name) => scope.get(name.as_str()).unwrap_or(&NULL),
                other => {
                    owned = eval(other, scope)?;
                    &owned
                }
            };
            for seg in segs {
                current = match seg {
                    Seg::Field(name) => current.get(name.as_str()).unwrap_or(&NULL),
                    Seg::Index(key) => lookup(current, &eval(key, scope)?)?.unwrap_or(&NULL),
                };
            }
            Ok(current.clone())
        }
        Node::Array(items) => {
            items.iter().map(|item| eval(item, scope)).collect::<Result<_, _>>().map(Value::Array)
        }
        Node::Object(fields) => {
            let mut object = Map::new();
            for (key, value) in fields {
                object.insert(key.clone(), eval(value, scope)?);
            }
            Ok(Value::Object(object))
        }
        Node::Unary(op, operand) => unary(*op, eval(operand, scope)?),
        Node::Binary(op, lhs, rhs) => binary(*op, lhs, rhs, scope),
        Node::Cond(cond, yes, no) => match eval(cond, scope)? {
            Value::Bool(true) => eval(yes, scope),
            Value::Bool(false) => eval(no, scope),
            other => fail(cond_message(Type::of(&other))),
        },
        Node::Call(sig, args) => call(sig, args, scope),
    }
}

/// `target[key]`: `None` when there is no such field or element.
fn lookup<'v>(target: &'v Value, key: &Value) -> Result<Option<&'v Value>, EvalError> {
    match key {
        Value::String(name) => Ok(target.get(name.as_str())),
        Value::Number(_) => Ok(match (target, integer(key)) {
            (Value::Array(items), Some(i)) => element(items, i),
            _ => None,
        }),
        Value::Null => Ok(None),
        other => fail(index_message(Type::of(other))),
    }
}

/// The element at `i`, counting from the end when negative.
fn element(items: &[Value], i: i64) -> Option<&Value> {
    let index = if i < 0 {
        items.len().checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
    } else {
        usize::try_from(i).ok()?
    };
    items.get(index)
}

fn unary(op: UnOp, value: Value) -> Result<Value, EvalError> {
    match (op, value) {
        (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
        (UnOp::Neg, Value::Number(n)) => match Num::of(&n) {
            Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
            Num::Float(f) => Num::Float(-f),
        }
        .value(),
        (op, other) => fail(unary_message(op, Type::of(&other))),
    }
}

fn binary(op: BinOp, lhs: &Node, rhs: &Node, scope: &Value) -> Result<Value, EvalError> {
    match op {
        BinOp::Or | BinOp::And => {
            // `||` stops at the first `true`, `&&` at the first `false`.
            let decisive = op == BinOp::Or;
            if logic_operand(op, eval(lhs, scope)?)? == decisive {
                return Ok(Value::Bool(decisive));
            }
            logic_operand(op, eval(rhs, scope)?).map(Value::Bool)
        }
        BinOp::Eq => Ok(Value::Bool(json_eq(&eval(lhs, scope)?, &eval(rhs, scope)?))),
        BinOp::Ne => Ok(Value::Bool(!json_eq(&eval(lhs, scope)?, &eval(rhs, scope)?))),
        BinOp::Cmp(cmp) => {
            let (a, b) = (eval(lhs, scope)?, eval(rhs, scope)?);
            let order = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => Num::of(x).cmp(Num::of(y)),
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => return fail(operands_message(op, Type::of(&a), Type::of(&b))),
            };
            Ok(Value::Bool(match cmp {
                Cmp::Lt => order.is_lt(),
                Cmp::Le => order.is_le(),
                Cmp::Gt => order.is_gt(),
                Cmp::Ge => order.is_ge(),
            }))
        }
        BinOp::Arith(arith) => {
            let (a, b) = (eval(lhs, scope)?, eval(rhs, scope)?);
            match (arith, a, b) {
                (_, Value::Number(x), Value::Number(y)) => {
                    Num::arith(arith, Num::of(&x), Num::of(&y))?.value()
                }
                (Arith::Add, Value::String(mut x), Value::String(y)) => {
                    check_len(x.len().saturating_add(y.len()), "string")?;
                    x.push_str(&y);
                    Ok(Value::String(x))
                }
                (Arith::Add, Value::Array(mut x), Value::Array(y)) => {
                    check_len(x.len().saturating_add(y.len()), "array")?;
                    x.extend(y);
                    Ok(Value::Array(x))
                }
                (Arith::Add, Value::Object(mut x), Value::Object(y)) => {
                    x.extend(y);
                    Ok(Value::Object(x))
                }
                (_, a, b) => fail(operands_message(op, Type::of(&a), Type::of(&b))),
            }
        }
    }
}

fn logic_operand(op: BinOp, value: Value) -> Result<bool, EvalError> {
    match value {
        Value::Bool(b) => Ok(b),
        other => fail(logic_message(op, Type::of(&other))),
    }
}

// Messages shared by evaluation and `type_error`, so upload and run time say the same thing.

fn unary_message(op: UnOp, got: Type) -> String {
    format!("`{}` needs a {}, got {}", op.symbol(), op.operand().name(), got.name())
}

fn logic_message(op: BinOp, got: Type) -> String {
    format!("`{}` needs bools, got {}", op.symbol(), got.name())
}

fn operands_message(op: BinOp, a: Type, b: Type) -> String {
    format!("`{}` needs {}, got {} and {}", op.symbol(), op.operands(), a.name(), b.name())
}

fn cond_message(got: Type) -> String {
    format!("`? :` needs a bool condition, got {}", got.name())
}

fn index_message(got: Type) -> String {
    format!("an index must be a string or number, got {}", got.name())
}

fn check_len(len: usize, what: &str) -> Result<(), EvalError> {
    if len > VALUE_LEN_MAX {
        return fail(format!("{what} of {len} would exceed the limit of {VALUE_LEN_MAX}"));
    }
    Ok(())
}

/// Structural equality; numbers by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Num::of(x).cmp(Num::of(y)).is_eq(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => Num::of(n).float() != 0.0,
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
    }
}

/// A value as text: strings as they are, anything else as compact JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The integer a number holds, if it holds one (`2.0` does).
fn integer(value: &Value) -> Option<i64> {
    match Num::of(value.as_number()?) {
        Num::Int(i) => Some(i),
        Num::Float(f) => exact_int(f),
    }
}

/// `f` as an `i64` when it is integral and in range (never for NaN or infinities).
fn exact_int(f: f64) -> Option<i64> {
    // `i64::MAX as f64` is 2^63, one past the largest i64, hence `<`.
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// A JSON number for arithmetic: integers stay exact as long as they can.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(n: &Number) -> Num {
        match n.as_i64() {
            Some(i) => Num::Int(i),
            // `as_f64` only fails with serde_json's arbitrary precision, which is off; a NaN
            // would be refused as a result anyway.
            None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
        }
    }

    /// An integer when `f` is integral and fits, so `round(2.5)` is `3`, not `3.0`.
    fn integral(f: f64) -> Num {
        exact_int(f).map_or(Num::Float(f), Num::Int)
    }

    fn float(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            // Operands are finite (JSON has no NaN), so there is always an order.
            (a, b) => a.float().partial_cmp(&b.float()).unwrap_or(Ordering::Equal),
        }
    }

    fn arith(op: Arith, a: Num, b: Num) -> Result<Num, EvalError> {
        if matches!(op, Arith::Div | Arith::Rem) && b.float() == 0.0 {
            return fail("division by zero");
        }
        if let (Num::Int(x), Num::Int(y)) = (a, b) {
            let exact = match op {
                Arith::Add => x.checked_add(y),
                Arith::Sub => x.checked_sub(y),
                Arith::Mul => x.checked_mul(y),
                Arith::Div => x.checked_rem(y).filter(|r| *r == 0).and_then(|_| x.checked_div(y)),
                Arith::Rem => x.checked_rem(y),
            };
            if let Some(r) = exact {
                return Ok(Num::Int(r));
            }
        }
        let (x, y) = (a.float(), b.float());
        Ok(Num::Float(match op {
            Arith::Add => x + y,
            Arith::Sub => x - y,
            Arith::Mul => x * y,
            Arith::Div => x / y,
            Arith::Rem => x % y,
        }))
    }

    fn value(self) -> Result<Value, EvalError> {
        match self {
            Num::Int(i) => Ok(Value::from(i)),
            Num::Float(f) => match Number::from_f64(f) {
                Some(n) => Ok(Value::Number(n)),
                None => fail("the result is not a finite number"),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Len,
    Upper,
    Lower,
    Trim,
    Contains,
    StartsWith,
    EndsWith,
    Keys,
    Values,
    Min,
    Max,
    Abs,
    Round,
    Floor,
    Ceil,
    Str,
    Num,
    Bool,
    Default,
    Split,
    Join,
    Range,
    Slice,
    Get,
    TypeOf,
    Sum,
    NotNull,
}

/// The types an argument may have; the description is for messages.
#[derive(Debug, PartialEq)]
struct Accept {
    /// Empty for any type.
    types: &'static [Type],
    what: &'static str,
}

impl Accept {
    fn admits(&self, t: Type) -> bool {
        !t.known() || self.types.is_empty() || self.types.contains(&t)
    }
}

const ANY: Accept = Accept { types: &[], what: "any value" };
const STR: Accept = Accept { types: &[Type::String], what: "a string" };
const NUM: Accept = Accept { types: &[Type::Number], what: "a number" };
const ARR: Accept = Accept { types: &[Type::Array], what: "an array" };
const OBJ: Accept = Accept { types: &[Type::Object], what: "an object" };
const SIZED: Accept =
    Accept { types: &[Type::String, Type::Array, Type::Object], what: "a string, array or object" };
const SEQ: Accept = Accept { types: &[Type::String, Type::Array], what: "a string or array" };
const NUMS: Accept =
    Accept { types: &[Type::Number, Type::Array], what: "numbers or one array of numbers" };
const NUMERIC: Accept =
    Accept { types: &[Type::Number, Type::String, Type::Bool], what: "a number, string or bool" };
const KEY: Accept =
    Accept { types: &[Type::String, Type::Number, Type::Null], what: "a string or number" };

/// A function's signature: name, arity, argument types (the last one repeats for variadic
/// functions) and result type ([`Type::Any`] where it depends on the arguments).
#[derive(Debug, PartialEq)]
struct Sig {
    name: &'static str,
    func: Func,
    min: usize,
    max: usize,
    params: &'static [Accept],
    returns: Type,
}

impl Sig {
    const fn new(
        name: &'static str,
        func: Func,
        (min, max): (usize, usize),
        params: &'static [Accept],
        returns: Type,
    ) -> Sig {
        Sig { name, func, min, max, params, returns }
    }

    fn accept(&self, i: usize) -> &Accept {
        self.params.get(i).or(self.params.last()).unwrap_or(&ANY)
    }

    fn arity(&self) -> String {
        let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
        if self.max == usize::MAX {
            format!("at least {} {}", self.min, plural(self.min))
        } else if self.min == self.max {
            format!("{} {}", self.min, plural(self.min))
        } else {
            format!("{} to {} arguments", self.min, self.max)
        }
    }
}

const VARIADIC: usize = usize::MAX;

const SIGS: &[Sig] = &[
    Sig::new("len", Func::Len, (1, 1), &[SIZED], Type::Number),
    Sig::new("upper", Func::Upper, (1, 1), &[STR], Type::String),
    Sig::new("lower", Func::Lower, (1, 1), &[STR], Type::String),
    Sig::new("trim", Func::Trim, (1, 1), &[STR], Type::String),
    Sig::new("contains", Func::Contains, (2, 2), &[SIZED, ANY], Type::Bool),
    Sig::new("starts_with", Func::StartsWith, (2, 2), &[STR, STR], Type::Bool),
    Sig::new("ends_with", Func::EndsWith, (2, 2), &[STR, STR], Type::Bool),
    Sig::new("keys", Func::Keys, (1, 1), &[OBJ], Type::Array),
    Sig::new("values", Func::Values, (1, 1), &[OBJ], Type::Array),
    Sig::new("min", Func::Min, (1, VARIADIC), &[NUMS], Type::Number),
    Sig::new("max", Func::Max, (1, VARIADIC), &[NUMS], Type::Number),
    Sig::new("abs", Func::Abs, (1, 1), &[NUM], Type::Number),
    Sig::new("round", Func::Round, (1, 1), &[NUM], Type::Number),
    Sig::new("floor", Func::Floor, (1, 1), &[NUM], Type::Number),
    Sig::new("ceil", Func::Ceil, (1, 1), &[NUM], Type::Number),
    Sig::new("str", Func::Str, (1, 1), &[ANY], Type::String),
    Sig::new("num", Func::Num, (1, 1), &[NUMERIC], Type::Number),
    Sig::new("bool", Func::Bool, (1, 1), &[ANY], Type::Bool),
    Sig::new("default", Func::Default, (2, 2), &[ANY, ANY], Type::Any),
    Sig::new("split", Func::Split, (2, 2), &[STR, STR], Type::Array),
    Sig::new("join", Func::Join, (2, 2), &[ARR, STR], Type::String),
    Sig::new("range", Func::Range, (1, 2), &[NUM, NUM], Type::Array),
    Sig::new("slice", Func::Slice, (2, 3), &[SEQ, NUM, NUM], Type::Any),
    Sig::new("get", Func::Get, (2, 3), &[ANY, KEY, ANY], Type::Any),
    Sig::new("type", Func::TypeOf, (1, 1), &[ANY], Type::String),
    Sig::new("sum", Func::Sum, (1, 1), &[ARR], Type::Number),
    Sig::new("not_null", Func::NotNull, (1, 1), &[ANY], Type::Bool),
];

fn arg_message(sig: &Sig, i: usize, got: Type) -> String {
    let what = sig.accept(i).what;
    if sig.max == 1 {
        format!("`{}` needs {what}, got {}", sig.name, got.name())
    } else {
        format!("`{}` needs {what} as argument {}, got {}", sig.name, i + 1, got.name())
    }
}

fn arg_error(sig: &Sig, i: usize, value: &Value) -> EvalError {
    EvalError(arg_message(sig, i, Type::of(value)))
}

fn call(sig: &Sig, args: &[Node], scope: &Value) -> Result<Value, EvalError> {
    // `default` and `get` evaluate their fallback only when it is needed.
    match (sig.func, args) {
        (Func::Default, [value, fallback]) => match eval(value, scope)? {
            Value::Null => eval(fallback, scope),
            value => Ok(value),
        },
        (Func::Get, [target, key, fallback @ ..]) => {
            let (target, key) = (eval(target, scope)?, eval(key, scope)?);
            match lookup(&target, &key).map_err(|_| arg_error(sig, 1, &key))? {
                Some(found) if !found.is_null() => Ok(found.clone()),
                _ => fallback.first().map_or(Ok(Value::Null), |fallback| eval(fallback, scope)),
            }
        }
        _ => {
            let values = args.iter().map(|arg| eval(arg, scope)).collect::<Result<Vec<_>, _>>()?;
            apply(sig, &values)
        }
    }
}

/// The functions whose arguments are all evaluated first. An argument of a type the function
/// does not take falls through to the last arm, which names it.
fn apply(sig: &Sig, args: &[Value]) -> Result<Value, EvalError> {
    use Value::{Array, Bool, Number, Object, String};
    match (sig.func, args) {
        (Func::Len, [String(s)]) => Ok(Value::from(s.chars().count())),
        (Func::Len, [Array(items)]) => Ok(Value::from(items.len())),
        (Func::Len, [Object(fields)]) => Ok(Value::from(fields.len())),
        (Func::Upper, [String(s)]) => built_string(s.to_uppercase()),
        (Func::Lower, [String(s)]) => built_string(s.to_lowercase()),
        (Func::Trim, [String(s)]) => Ok(String(s.trim().to_owned())),
        (Func::Contains, [String(s), String(part)]) => Ok(Bool(s.contains(part.as_str()))),
        (Func::Contains, [Array(items), needle]) => {
            Ok(Bool(items.iter().any(|item| json_eq(item, needle))))
        }
        (Func::Contains, [Object(fields), String(key)]) => Ok(Bool(fields.contains_key(key))),
        (Func::Contains, [String(_) | Object(_), needle]) => fail(format!(
            "`contains` needs a string as argument 2 to search a string or object, got {}",
            type_name(needle)
        )),
        (Func::StartsWith, [String(s), String(p)]) => Ok(Bool(s.starts_with(p.as_str()))),
        (Func::EndsWith, [String(s), String(p)]) => Ok(Bool(s.ends_with(p.as_str()))),
        (Func::Keys, [Object(fields)]) => {
            Ok(Array(sorted(fields).into_iter().map(|(k, _)| String(k.clone())).collect()))
        }
        (Func::Values, [Object(fields)]) => {
            Ok(Array(sorted(fields).into_iter().map(|(_, v)| v.clone()).collect()))
        }
        (Func::Min | Func::Max, [Array(items)]) => extreme(sig, items),
        (Func::Min | Func::Max, items) => extreme(sig, items),
        (Func::Abs, [Number(n)]) => match Num::of(n) {
            Num::Int(i) => i.checked_abs().map_or(Num::Float((i as f64).abs()), Num::Int),
            Num::Float(f) => Num::Float(f.abs()),
        }
        .value(),
        (Func::Round | Func::Floor | Func::Ceil, [Number(n)]) => match Num::of(n) {
            Num::Int(i) => Num::Int(i),
            Num::Float(f) => Num::integral(match sig.func {
                Func::Floor => f.floor(),
                Func::Ceil => f.ceil(),
                _ => f.round(),
            }),
        }
        .value(),
        (Func::Str, [value]) => built_string(text(value)),
        (Func::Num, [Number(n)]) => Ok(Number(n.clone())),
        (Func::Num, [String(s)]) => parse_number(s).map(Number),
        (Func::Num, [Bool(b)]) => Ok(Value::from(u8::from(*b))),
        (Func::Bool, [value]) => Ok(Bool(truthy(value))),
        (Func::Split, [String(s), String(sep)]) => {
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| String(c.to_string())).collect()
            } else {
                s.split(sep.as_str()).map(|part| String(part.to_owned())).collect()
            };
            check_len(parts.len(), "array")?;
            Ok(Array(parts))
        }
        (Func::Join, [Array(items), String(sep)]) => {
            let mut joined = std::string::String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    joined.push_str(sep);
                }
                joined.push_str(&text(item));
                check_len(joined.len(), "string")?;
            }
            Ok(String(joined))
        }
        (Func::Range, [end]) => range(0, whole(sig, 0, end)?),
        (Func::Range, [start, end]) => range(whole(sig, 0, start)?, whole(sig, 1, end)?),
        (Func::Slice, [target, start, end @ ..]) => {
            let start = whole(sig, 1, start)?;
            let end = end.first().map(|end| whole(sig, 2, end)).transpose()?;
            match target {
                String(s) => {
                    let (from, to) = bounds(s.chars().count(), start, end);
                    Ok(String(s.chars().skip(from).take(to - from).collect()))
                }
                Array(items) => {
                    let (from, to) = bounds(items.len(), start, end);
                    Ok(Array(items.get(from..to).unwrap_or_default().to_vec()))
                }
                other => Err(arg_error(sig, 0, other)),
            }
        }
        (Func::TypeOf, [value]) => Ok(String(type_name(value).to_owned())),
        (Func::Sum, [Array(items)]) => {
            let mut total = Num::Int(0);
            for item in items {
                let Number(n) = item else {
                    return fail(format!(
                        "`sum` needs an array of numbers, got an element of type {}",
                        type_name(item)
                    ));
                };
                total = Num::arith(Arith::Add, total, Num::of(n))?;
            }
            total.value()
        }
        (Func::NotNull, [value]) => Ok(Bool(!value.is_null())),
        _ => Err(mismatch(sig, args)),
    }
}

/// The error for arguments no arm of `apply` takes: the first argument of a refused type.
fn mismatch(sig: &Sig, args: &[Value]) -> EvalError {
    args.iter().enumerate().find(|(i, value)| !sig.accept(*i).admits(Type::of(value))).map_or_else(
        || EvalError(format!("`{}` cannot take these arguments", sig.name)),
        |(i, value)| arg_error(sig, i, value),
    )
}

fn built_string(s: String) -> Result<Value, EvalError> {
    check_len(s.len(), "string")?;
    Ok(Value::String(s))
}

/// Object entries by key, whatever order the map keeps.
fn sorted(fields: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = fields.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// `min` or `max` over numbers; the first of equal candidates wins.
fn extreme(sig: &Sig, items: &[Value]) -> Result<Value, EvalError> {
    let wanted = if sig.func == Func::Min { Ordering::Less } else { Ordering::Greater };
    let mut best: Option<&Number> = None;
    for item in items {
        let Value::Number(n) = item else {
            return fail(format!("`{}` needs numbers, got {}", sig.name, type_name(item)));
        };
        if best.is_none_or(|b| Num::of(n).cmp(Num::of(b)) == wanted) {
            best = Some(n);
        }
    }
    best.map(|n| Value::Number(n.clone()))
        .ok_or_else(|| EvalError(format!("`{}` needs at least one number", sig.name)))
}

/// An integer argument.
fn whole(sig: &Sig, i: usize, value: &Value) -> Result<i64, EvalError> {
    match value {
        Value::Number(n) => integer(value).ok_or_else(|| {
            EvalError(format!("`{}` needs an integer as argument {}, got {n}", sig.name, i + 1))
        }),
        other => Err(arg_error(sig, i, other)),
    }
}

fn range(start: i64, end: i64) -> Result<Value, EvalError> {
    let len = i128::from(end) - i128::from(start);
    if len > RANGE_LEN_MAX as i128 {
        return fail(format!("`range` would yield {len} integers, more than {RANGE_LEN_MAX}"));
    }
    Ok(Value::Array((start..end).map(Value::from).collect()))
}

/// Slice bounds clamped to `0..=len`, negative ones counting from the end; never `from > to`.
fn bounds(len: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let clamp = |i: i64| {
        let magnitude = usize::try_from(i.unsigned_abs()).unwrap_or(usize::MAX);
        if i < 0 {
            len.saturating_sub(magnitude)
        } else {
            magnitude.min(len)
        }
    };
    let from = clamp(start);
    let to = end.map_or(len, clamp);
    (from, to.max(from))
}

fn parse_number(s: &str) -> Result<Number, EvalError> {
    let trimmed = s.trim();
    if let Ok(i) = trimmed.parse::<i64>() {
        return Ok(Number::from(i));
    }
    // `from_f64` refuses what `parse` accepts but JSON cannot hold: "inf", "NaN".
    trimmed.parse::<f64>().ok().and_then(Number::from_f64).ok_or_else(|| {
        let preview: std::string::String = s.chars().take(32).collect();
        let more = if s.chars().nth(32).is_some() { "…" } else { "" };
        EvalError(format!("`num` cannot read {preview:?}{more} as a number"))
    })
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/// A template string cut into literal text and expressions.
enum Piece {
    Text(String),
    Expr(Expr),
}

/// Cuts a template string into pieces; `ParseError::at` is an offset in `s`.
fn pieces(s: &str) -> Result<Vec<Piece>, ParseError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut pos = 0;
    while let Some(found) = s[pos..].find('$') {
        let at = pos + found;
        text.push_str(&s[pos..at]);
        let rest = &s[at..];
        if rest.starts_with("$${") {
            text.push_str("${");
            pos = at + 3;
        } else if rest.starts_with("${") {
            let start = at + 2;
            let end = closing_brace(s, start)
                .ok_or_else(|| ParseError::new(at, "`${` has no matching `}`"))?;
            let expr = Expr::parse(&s[start..end])
                .map_err(|e| ParseError::new(start + e.at, e.message))?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Expr(expr));
            pos = end + 1;
        } else {
            text.push('$');
            pos = at + 1;
        }
    }
    text.push_str(&s[pos..]);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The offset of the `}` that ends the expression starting at `from`: the first one outside
/// string literals that closes no `{` of the expression's own.
fn closing_brace(s: &str, from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s.get(from..)?.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(from + i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Runs `f` with `key` appended to the JSON pointer `path` (escaped per RFC 6901).
fn nested<T>(path: &mut String, key: &str, f: impl FnOnce(&mut String) -> T) -> T {
    let len = path.len();
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
    let result = f(path);
    path.truncate(len);
    result
}

/// Templates: a JSON value in which strings may hold expressions.
/// - a string that is exactly `${ expr }` (whole string, one expression) evaluates to the
///   expression's value (any JSON type);
/// - a string with embedded `${...}` parts (or several) is string interpolation: each part's
///   value rendered as text (strings as-is, other values as compact JSON, null as "null");
/// - `$${` is a literal `${`;
/// - objects and arrays are rendered recursively (object keys are not templated);
/// - other values are returned unchanged.
///
/// # Errors
///
/// An [`EvalError`] from an expression, prefixed with the JSON path of its string (like
/// `at /message/text: division by zero`); an expression that does not parse is an error here
/// too (check templates with [`parse_template`] when they are uploaded).
pub fn render(template: &Value, scope: &Value) -> Result<Value, EvalError> {
    render_at(template, scope, &mut String::new())
}

fn render_at(template: &Value, scope: &Value, path: &mut String) -> Result<Value, EvalError> {
    match template {
        Value::String(s) => render_string(s, scope).map_err(|e| {
            if path.is_empty() {
                e
            } else {
                EvalError(format!("at {path}: {}", e.0))
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| nested(path, &i.to_string(), |path| render_at(item, scope, path)))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(fields) => {
            let mut rendered = Map::new();
            for (key, value) in fields {
                let value = nested(path, key, |path| render_at(value, scope, path))?;
                rendered.insert(key.clone(), value);
            }
            Ok(Value::Object(rendered))
        }
        other => Ok(other.clone()),
    }
}

fn render_string(s: &str, scope: &Value) -> Result<Value, EvalError> {
    let pieces = pieces(s).map_err(|e| EvalError(format!("invalid expression {e}")))?;
    if let [Piece::Expr(expr)] = pieces.as_slice() {
        return expr.eval(scope);
    }
    let mut out = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr(expr) => {
                out.push_str(&text(&expr.eval(scope)?));
                check_len(out.len(), "string")?;
            }
        }
    }
    Ok(Value::String(out))
}

/// Parses every expression inside a template; Err names the JSON path inside the template (like
/// `/message/text`, `""` for the template itself) and the [`ParseError`], whose offset is in
/// that string. Ok gives the parsed expressions with their paths, in document order (for
/// root/type checks).
///
/// # Errors
///
/// The path and error of the first string, in document order, holding an expression that does
/// not parse or a `${` without its `}`.
pub fn parse_template(template: &Value) -> Result<Vec<(String, Expr)>, (String, ParseError)> {
    let mut found = Vec::new();
    collect(template, &mut String::new(), &mut found)?;
    Ok(found)
}

fn collect(
    template: &Value,
    path: &mut String,
    found: &mut Vec<(String, Expr)>,
) -> Result<(), (String, ParseError)> {
    match template {
        Value::String(s) => {
            for piece in pieces(s).map_err(|e| (path.clone(), e))? {
                if let Piece::Expr(expr) = piece {
                    found.push((path.clone(), expr));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nested(path, &i.to_string(), |path| collect(item, path, found))?;
            }
        }
        Value::Object(fields) => {
            for (key, value) in fields {
                nested(path, key, |path| collect(value, path, found))?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Static types
// ---------------------------------------------------------------------------------------------

fn static_type(node: &Node, roots: &dyn Fn(&str) -> Type) -> Type {
    let of = |node: &Node| static_type(node, roots);
    match node {
        Node::Lit(value) => Type::of(value),
        Node::Root(name) => roots(name),
        Node::Path(..) => Type::Any,
        Node::Array(_) => Type::Array,
        Node::Object(_) => Type::Object,
        Node::Unary(op, _) => op.operand(),
        Node::Binary(BinOp::Arith(Arith::Add), lhs, rhs) => match (of(lhs), of(rhs)) {
            (a, b)
                if a == b
                    && matches!(a, Type::Number | Type::String | Type::Array | Type::Object) =>
            {
                a
            }
            _ => Type::Any,
        },
        Node::Binary(BinOp::Arith(_), ..) => Type::Number,
        Node::Binary(..) => Type::Bool,
        Node::Cond(_, yes, no) => match (of(yes), of(no)) {
            (a, b) if a == b => a,
            _ => Type::Any,
        },
        Node::Call(sig, args) => match (sig.func, args.as_slice()) {
            (Func::Default, [value, fallback]) => match of(value) {
                Type::Null => of(fallback),
                t => t,
            },
            (Func::Slice, [target, ..]) => match of(target) {
                t @ (Type::String | Type::Array) => t,
                _ => Type::Any,
            },
            _ => sig.returns,
        },
    }
}

fn type_error(node: &Node, roots: &dyn Fn(&str) -> Type) -> Option<String> {
    // Children first: evaluation meets their errors before their parent's.
    if let Some(error) = node.children().into_iter().find_map(|child| type_error(child, roots)) {
        return Some(error);
    }
    let of = |node: &Node| static_type(node, roots);
    match node {
        Node::Unary(op, operand) => {
            let t = of(operand);
            (t.known() && t != op.operand()).then(|| unary_message(*op, t))
        }
        Node::Binary(op @ (BinOp::Or | BinOp::And), lhs, rhs) => [of(lhs), of(rhs)]
            .into_iter()
            .find(|t| t.known() && *t != Type::Bool)
            .map(|t| logic_message(*op, t)),
        Node::Binary(op @ (BinOp::Cmp(_) | BinOp::Arith(_)), lhs, rhs) => {
            let (a, b) = (of(lhs), of(rhs));
            let allowed: &[Type] = match op {
                BinOp::Cmp(_) => &[Type::Number, Type::String],
                BinOp::Arith(Arith::Add) => {
                    &[Type::Number, Type::String, Type::Array, Type::Object]
                }
                _ => &[Type::Number],
            };
            let refused = |t: Type| t.known() && !allowed.contains(&t);
            let mixed = a.known() && b.known() && a != b;
            (refused(a) || refused(b) || mixed).then(|| operands_message(*op, a, b))
        }
        Node::Cond(cond, _, _) => {
            let t = of(cond);
            (t.known() && t != Type::Bool).then(|| cond_message(t))
        }
        Node::Path(_, segs) => segs.iter().find_map(|seg| match seg {
            Seg::Index(key) => {
                let t = of(key);
                (!KEY.admits(t)).then(|| index_message(t))
            }
            Seg::Field(_) => None,
        }),
        Node::Call(sig, args) => args.iter().enumerate().find_map(|(i, arg)| {
            let t = of(arg);
            (!sig.accept(i).admits(t)).then(|| arg_message(sig, i, t))
        }),
        Node::Lit(_)
        | Node::Root(_)
        | Node::Array(_)
        | Node::Object(_)
        | Node::Binary(BinOp::Eq | BinOp::Ne, ..) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Value {
        json!({
            "input": {"name": "Ada", "n": 3, "f": 2.5, "tags": ["a", "b", "c"], "nested": {"k": [10, {"deep": true}]}, "empty": "", "zero": 0, "nothing": null},
            "vars": {"total": 10, "list": [3, 1, 2], "obj": {"b": 2, "a": 1}, "key": "name"},
            "steps": {"fetch": {"result": {"status": 200, "body": "ok"}}},
            "item": "é—x",
            "index": 2,
        })
    }

    fn run(src: &str, scope: &Value) -> Result<Value, String> {
        Expr::parse(src).map_err(|e| format!("parse: {e}"))?.eval(scope).map_err(|e| e.0)
    }

    /// Evaluates `src` against `scope` and compares with `expected` exactly (so `5` and `5.0`
    /// differ).
    fn check(src: &str, scope: &Value, expected: Value) {
        match run(src, scope) {
            Ok(got) => assert_eq!(got, expected, "{src}"),
            Err(e) => panic!("{src}: {e}"),
        }
    }

    fn check_err(src: &str, scope: &Value, needle: &str) {
        match run(src, scope) {
            Ok(got) => panic!("{src}: expected an error containing {needle:?}, got {got}"),
            Err(e) => assert!(e.contains(needle), "{src}: {e:?} lacks {needle:?}"),
        }
    }

    fn parse_err(src: &str, needle: &str) -> ParseError {
        match Expr::parse(src) {
            Ok(e) => panic!("{src}: expected a parse error, got {e:?}"),
            Err(e) => {
                assert!(e.message.contains(needle), "{src}: {e} lacks {needle:?}");
                e
            }
        }
    }

    #[test]
    fn literals() {
        let s = scope();
        check("3", &s, json!(3));
        check("2.5", &s, json!(2.5));
        check("1e3", &s, json!(1000.0));
        check("1.5E-1", &s, json!(0.15));
        check("9223372036854775808", &s, json!(9223372036854775808.0));
        check(r#""a\"b\\c\n\t'""#, &s, json!("a\"b\\c\n\t'"));
        check(r"'it\'s'", &s, json!("it's"));
        check("'ünï'", &s, json!("ünï"));
        check("true", &s, json!(true));
        check("false", &s, json!(false));
        check("null", &s, json!(null));
        check("[1, 'x', input.n, [], {}]", &s, json!([1, "x", 3, [], {}]));
        check(
            r#"{"k": 1, k2: input.name, 'k3': [2]}"#,
            &s,
            json!({"k": 1, "k2": "Ada", "k3": [2]}),
        );
        check("  \n\t 1 ", &s, json!(1));
    }

    #[test]
    fn paths_and_null_on_missing() {
        let s = scope();
        check("input.name", &s, json!("Ada"));
        check("input.tags[0]", &s, json!("a"));
        check("input.tags[-1]", &s, json!("c"));
        check("input.tags[-3]", &s, json!("a"));
        check("input.tags[-4]", &s, json!(null));
        check("input.tags[3]", &s, json!(null));
        check("input.tags[1.0]", &s, json!("b"));
        check("input.tags[0.5]", &s, json!(null));
        check(r#"input["name"]"#, &s, json!("Ada"));
        check("input[vars.key]", &s, json!("Ada"));
        check("input.nested.k[1].deep", &s, json!(true));
        check("steps.fetch.result.status", &s, json!(200));
        check("input.missing", &s, json!(null));
        check("input.missing.deeper[0].x", &s, json!(null));
        check("input.name.length", &s, json!(null));
        check("input.tags.x", &s, json!(null));
        check("input[0]", &s, json!(null));
        check("input[input.missing]", &s, json!(null));
        check("nobody", &s, json!(null));
        check("nobody.x", &json!(42), json!(null));
        check("x.null", &json!({"x": {"null": 1}}), json!(1));
        check("[10, 20, 30][index]", &s, json!(30));
        check("(vars.obj).a", &s, json!(1));
        check("keys(vars.obj)[0]", &s, json!("a"));
        check_err("input[true]", &s, "an index must be a string or number, got bool");
        check_err("input[[1]]", &s, "got array");
    }

    #[test]
    fn arithmetic() {
        let s = scope();
        check("2 + 3", &s, json!(5));
        check("2 - 5", &s, json!(-3));
        check("4 * 5", &s, json!(20));
        check("6 / 2", &s, json!(3));
        check("7 / 2", &s, json!(3.5));
        check("7 % 3", &s, json!(1));
        check("-7 % 3", &s, json!(-1));
        check("7.5 % 2", &s, json!(1.5));
        check("2.0 + 3", &s, json!(5.0));
        check("input.f * 2", &s, json!(5.0));
        check("-input.n", &s, json!(-3));
        check("--3", &s, json!(3));
        check("- 2.5", &s, json!(-2.5));
        check("9223372036854775807 + 1", &s, json!(9223372036854775808.0));
        check("-9223372036854775807 - 2", &s, json!(-9223372036854775809.0));
        check("(-9223372036854775807 - 1) / -1", &s, json!(9223372036854775808.0));
        check("-(-9223372036854775807 - 1)", &s, json!(9223372036854775808.0));
        check("'ab' + \"cd\"", &s, json!("abcd"));
        check("[1] + [2, 3]", &s, json!([1, 2, 3]));
        check("{a: 1, b: 2} + {b: 3, c: 4}", &s, json!({"a": 1, "b": 3, "c": 4}));
        check_err("'a' - 1", &s, "`-` needs numbers, got string and number");
        check_err(
            "'a' + 1",
            &s,
            "`+` needs two numbers, strings, arrays or objects, got string and number",
        );
        check_err("null + 1", &s, "got null and number");
        check_err("[] * 2", &s, "`*` needs numbers");
        check_err("-'a'", &s, "`-` needs a number, got string");
        check_err("1 / 0", &s, "division by zero");
        check_err("1 % 0", &s, "division by zero");
        check_err("1.5 / 0.0", &s, "division by zero");
        check_err("1e308 * 10", &s, "not a finite number");
    }

    #[test]
    fn comparison_and_equality() {
        let s = scope();
        check("1 < 2", &s, json!(true));
        check("2 <= 2", &s, json!(true));
        check("3 > 2.5", &s, json!(true));
        check("2 >= 3", &s, json!(false));
        check("'abc' < 'abd'", &s, json!(true));
        check("'b' > 'a'", &s, json!(true));
        check("'é' > 'z'", &s, json!(true));
        check("1 == 1.0", &s, json!(true));
        check("[1, {a: 2}] == [1.0, {a: 2.0}]", &s, json!(true));
        check("{a: 1, b: 2} == {b: 2, a: 1}", &s, json!(true));
        check("{a: 1} == {a: 1, b: null}", &s, json!(false));
        check("'1' == 1", &s, json!(false));
        check("null == input.missing", &s, json!(true));
        check("input.name != 'Ada'", &s, json!(false));
        check("[1, 2] != [1]", &s, json!(true));
        check_err("1 < '2'", &s, "`<` needs two numbers or two strings, got number and string");
        check_err("null >= 1", &s, "`>=` needs two numbers or two strings");
        check_err("true > false", &s, "got bool and bool");
    }

    #[test]
    fn logic_and_conditional() {
        let s = scope();
        check("true && false", &s, json!(false));
        check("true || false", &s, json!(true));
        check("!true", &s, json!(false));
        check("!!true", &s, json!(true));
        // Short-circuit: the right side would fail.
        check("false && 1 / 0 == 1", &s, json!(false));
        check("true || 1 / 0 == 1", &s, json!(true));
        check("true ? 'y' : 'n'", &s, json!("y"));
        check("false ? 1 / 0 : 2", &s, json!(2));
        check("input.n > 5 ? 'big' : input.n > 2 ? 'mid' : 'small'", &s, json!("mid"));
        check("false ? 1 : false ? 2 : 3", &s, json!(3));
        check_err("1 && true", &s, "`&&` needs bools, got number");
        check_err("true && 'x'", &s, "`&&` needs bools, got string");
        check_err("false || null", &s, "`||` needs bools, got null");
        check_err("!5", &s, "`!` needs a bool, got number");
        check_err("input.n ? 1 : 2", &s, "`? :` needs a bool condition, got number");
    }

    #[test]
    fn precedence() {
        let s = scope();
        check("1 + 2 * 3", &s, json!(7));
        check("(1 + 2) * 3", &s, json!(9));
        check("10 - 4 - 3", &s, json!(3));
        check("24 / 4 / 2", &s, json!(3));
        check("2 * 3 % 4", &s, json!(2));
        check("-2 * 3", &s, json!(-6));
        check("-2 + 3", &s, json!(1));
        check("1 + 1 == 2 && 2 < 3", &s, json!(true));
        check("true || false && false", &s, json!(true));
        check("!false == true", &s, json!(true));
        check("1 < 2 == 2 < 3", &s, json!(true));
        check("true ? 1 : 2 + 10", &s, json!(1));
        check("false ? 1 : 2 + 10", &s, json!(12));
        check("false || true ? 'a' : 'b'", &s, json!("a"));
        check("-vars.list[0]", &s, json!(-3));
        check("'a' + 'b' == 'ab'", &s, json!(true));
    }

    #[test]
    fn string_functions() {
        let s = scope();
        check("len('héllo')", &s, json!(5));
        check("len(input.tags)", &s, json!(3));
        check("len(vars.obj)", &s, json!(2));
        check("upper('abé')", &s, json!("ABÉ"));
        check("lower('AbÉ')", &s, json!("abé"));
        check("trim('  x y \n')", &s, json!("x y"));
        check("contains('hello', 'ell')", &s, json!(true));
        check("contains(input.tags, 'b')", &s, json!(true));
        check("contains([1, 2], 2.0)", &s, json!(true));
        check("contains(vars.obj, 'a')", &s, json!(true));
        check("contains(vars.obj, 'z')", &s, json!(false));
        check("starts_with('hello', 'he')", &s, json!(true));
        check("ends_with('hello', 'lo')", &s, json!(true));
        check("ends_with('hello', 'he')", &s, json!(false));
        check("split('a,b,,c', ',')", &s, json!(["a", "b", "", "c"]));
        check("split('aé', '')", &s, json!(["a", "é"]));
        check("join(['a', 1, null, true, {k: 1}], '-')", &s, json!("a-1-null-true-{\"k\":1}"));
        check("join([], ',')", &s, json!(""));
        check("slice('héllo', 1, 3)", &s, json!("él"));
        check("slice('héllo', -3)", &s, json!("llo"));
        check("slice(item, 1, 2)", &s, json!("—"));
        check("slice('abc', 2, 1)", &s, json!(""));
        check("slice('abc', -10, 10)", &s, json!("abc"));
        check("slice([1, 2, 3, 4], 1, -1)", &s, json!([2, 3]));
        check("slice([1, 2, 3], 5)", &s, json!([]));
        check("slice([1, 2, 3], 1.0, 2)", &s, json!([2]));
        check_err("len(3)", &s, "`len` needs a string, array or object, got number");
        check_err("len(null)", &s, "got null");
        check_err("upper(1)", &s, "`upper` needs a string, got number");
        check_err("trim([])", &s, "`trim` needs a string, got array");
        check_err("contains('abc', 1)", &s, "`contains` needs a string as argument 2");
        check_err("contains(1, 1)", &s, "`contains` needs a string, array or object as argument 1");
        check_err("starts_with('a', 1)", &s, "argument 2, got number");
        check_err("split(1, ',')", &s, "`split` needs a string as argument 1");
        check_err("join('a', ',')", &s, "`join` needs an array as argument 1");
        check_err("slice(1, 0)", &s, "`slice` needs a string or array as argument 1");
        check_err("slice('abc', 0.5)", &s, "`slice` needs an integer as argument 2");
    }

    #[test]
    fn collection_and_number_functions() {
        let s = scope();
        check("keys(vars.obj)", &s, json!(["a", "b"]));
        check("values(vars.obj)", &s, json!([1, 2]));
        check("min(3, 1, 2)", &s, json!(1));
        check("max(3, 1.5, 2)", &s, json!(3));
        check("min(vars.list)", &s, json!(1));
        check("max([2.5, 1])", &s, json!(2.5));
        check("min(7)", &s, json!(7));
        check("min(1, 1.0)", &s, json!(1));
        check("abs(-3)", &s, json!(3));
        check("abs(-2.5)", &s, json!(2.5));
        check("abs(-9223372036854775807 - 1)", &s, json!(9223372036854775808.0));
        check("round(2.5)", &s, json!(3));
        check("round(-2.5)", &s, json!(-3));
        check("round(7)", &s, json!(7));
        check("floor(2.7)", &s, json!(2));
        check("floor(-2.1)", &s, json!(-3));
        check("ceil(2.1)", &s, json!(3));
        check("round(1e300)", &s, json!(1e300));
        check("sum([1, 2, 3])", &s, json!(6));
        check("sum([1, 2.5])", &s, json!(3.5));
        check("sum([])", &s, json!(0));
        check("range(3)", &s, json!([0, 1, 2]));
        check("range(2, 5)", &s, json!([2, 3, 4]));
        check("range(-2)", &s, json!([]));
        check("range(5, 2)", &s, json!([]));
        check("len(range(10000))", &s, json!(10000));
        check("get(vars.obj, 'a', 9)", &s, json!(1));
        check("get(vars.obj, 'z', 9)", &s, json!(9));
        check("get(input.tags, -1, 'none')", &s, json!("c"));
        check("get(input.tags, 7, 'none')", &s, json!("none"));
        check("get(input, 'nothing', 'd')", &s, json!("d"));
        check("get(input, 'zz')", &s, json!(null));
        check("get(42, 'a', 'd')", &s, json!("d"));
        check("get(vars.obj, 'a', 1 / 0)", &s, json!(1));
        check_err("min()", &s, "parse: at 0: `min` takes at least 1 argument, got 0");
        check_err("min([])", &s, "`min` needs at least one number");
        check_err("max(1, 'a')", &s, "`max` needs numbers, got string");
        check_err("min([1], 2)", &s, "`min` needs numbers, got array");
        check_err("abs('x')", &s, "`abs` needs a number, got string");
        check_err(
            "sum([1, 'a'])",
            &s,
            "`sum` needs an array of numbers, got an element of type string",
        );
        check_err("range(2.5)", &s, "`range` needs an integer as argument 1, got 2.5");
        check_err("range('a')", &s, "`range` needs a number as argument 1, got string");
        check_err("range(10001)", &s, "more than 10000");
        check_err("range(-9223372036854775807 - 1, 9223372036854775807)", &s, "more than 10000");
        check_err("keys([])", &s, "`keys` needs an object, got array");
        check_err(
            "get(vars.obj, true)",
            &s,
            "`get` needs a string or number as argument 2, got bool",
        );
    }

    #[test]
    fn conversion_functions() {
        let s = scope();
        check("str('x')", &s, json!("x"));
        check("str(1)", &s, json!("1"));
        check("str(2.5)", &s, json!("2.5"));
        check("str(null)", &s, json!("null"));
        check("str({b: [1, 'x'], a: true})", &s, json!(r#"{"a":true,"b":[1,"x"]}"#));
        check("num(4)", &s, json!(4));
        check("num(' 42 ')", &s, json!(42));
        check("num('2.5')", &s, json!(2.5));
        check("num('-1e2')", &s, json!(-100.0));
        check("num(true)", &s, json!(1));
        check("num(false)", &s, json!(0));
        check_err("num('abc')", &s, "`num` cannot read \"abc\" as a number");
        check_err("num('inf')", &s, "cannot read");
        check_err("num(null)", &s, "`num` needs a number, string or bool, got null");
        check_err("num([])", &s, "got array");
        for (src, want) in [
            ("null", false),
            ("false", false),
            ("0", false),
            ("0.0", false),
            ("''", false),
            ("[]", false),
            ("{}", false),
            ("true", true),
            ("-1", true),
            ("0.5", true),
            ("' '", true),
            ("[0]", true),
            ("{a: null}", true),
        ] {
            check(&format!("bool({src})"), &s, json!(want));
        }
        check("default(input.missing, 'd')", &s, json!("d"));
        check("default(input.nothing, 1)", &s, json!(1));
        check("default(input.zero, 1)", &s, json!(0));
        check("default(input.name, 1 / 0)", &s, json!("Ada"));
        check("type(null)", &s, json!("null"));
        check("type(true)", &s, json!("bool"));
        check("type(1.5)", &s, json!("number"));
        check("type('')", &s, json!("string"));
        check("type([])", &s, json!("array"));
        check("type({})", &s, json!("object"));
        check("not_null(input.name)", &s, json!(true));
        check("not_null(input.missing)", &s, json!(false));
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_err("foo(1)", "unknown function `foo`").at, 0);
        parse_err("len(1, 2)", "`len` takes 1 argument, got 2");
        parse_err("range()", "`range` takes 1 to 2 arguments, got 0");
        parse_err("contains('a')", "`contains` takes 2 arguments, got 1");
        assert_eq!(parse_err("1 +", "expected an expression, found the end").at, 3);
        parse_err("(1", "expected `)`");
        parse_err("[1 2]", "expected `,` or `]`, found number `2`");
        parse_err("{a 1}", "expected `:`");
        parse_err("{a: 1 b: 2}", "expected `,` or `}`");
        parse_err("{1: 2}", "expected an object key");
        parse_err("{a: 1, 'a': 2}", "duplicate key `a`");
        parse_err("[1,]", "expected an expression");
        parse_err("1 2", "expected an operator or the end of the expression, found number `2`");
        parse_err("a.", "expected a field name after `.`");
        parse_err("a.1", "expected a field name");
        assert_eq!(parse_err("a = 1", "unexpected character `=`").at, 2);
        parse_err("a & b", "unexpected character `&`");
        parse_err("'abc", "unterminated string");
        parse_err("'a\\x'", "unknown escape `\\x`");
        parse_err("1e999", "out of range");
        parse_err("é", "unexpected character `é`");
        parse_err("true ? 1", "expected `:`");
        parse_err("", "expected an expression");
        let e = Expr::parse("1 + )").unwrap_err();
        assert_eq!(e.to_string(), "at 4: expected an expression, found `)`");
    }

    #[test]
    fn limits() {
        let s = scope();
        // Depth bombs of any length within the length limit parse to an error, not a crash.
        for unit in ["(", "[", "!", "-", "{a:", "len(", "a[", "true ? 1 : "] {
            let bomb = unit.repeat(EXPR_LEN_MAX / unit.len());
            parse_err(&bomb, "nests deeper than 64 levels");
        }
        let chain = vec!["1"; 100].join(" + ");
        parse_err(&chain, "nests deeper");
        let ok_chain = vec!["1"; 60].join(" + ");
        check(&ok_chain, &s, json!(60));
        let ok_parens = format!("{}1{}", "(".repeat(60), ")".repeat(60));
        check(&ok_parens, &s, json!(1));
        let bad_parens = format!("{}1{}", "(".repeat(64), ")".repeat(64));
        parse_err(&bad_parens, "nests deeper");
        // Long paths do not nest.
        let path = format!("input{}", ".x".repeat(1000));
        check(&path, &s, json!(null));
        let long = format!("'{}'", "a".repeat(EXPR_LEN_MAX));
        assert_eq!(parse_err(&long, "longer than 4096 bytes").at, EXPR_LEN_MAX);
        let fits = format!("'{}'", "a".repeat(EXPR_LEN_MAX - 2));
        check(&fits, &s, json!("a".repeat(EXPR_LEN_MAX - 2)));
        // Values built by expressions are bounded.
        let big =
            json!({"s": "x".repeat(VALUE_LEN_MAX / 2 + 1), "a": vec![0; VALUE_LEN_MAX / 2 + 1]});
        check_err("s + s", &big, "would exceed the limit");
        check_err("a + a", &big, "would exceed the limit");
        check_err("join([s, s], '')", &big, "would exceed the limit");
        check_err("str([s, s])", &big, "would exceed the limit");
        check_err("range(1000000)", &s, "more than 10000");
    }

    #[test]
    fn unicode_is_safe() {
        let s = scope();
        check("len(item)", &s, json!(3));
        check("upper(item)", &s, json!("É—X"));
        check("split(item, '—')", &s, json!(["é", "x"]));
        check("slice(item, -1)", &s, json!("x"));
        check("'日本' + '語'", &s, json!("日本語"));
        parse_err("'日本' + 語", "unexpected character `語`");
    }

    #[test]
    fn roots_and_fields() {
        let e = Expr::parse("vars.x + input.y * vars.total + len(steps['fetch'].result)").unwrap();
        assert_eq!(e.roots(), vec!["input", "steps", "vars"]);
        assert_eq!(e.fields_of("vars"), vec!["total", "x"]);
        assert_eq!(e.fields_of("steps"), vec!["fetch"]);
        assert_eq!(e.fields_of("item"), Vec::<String>::new());
        let e = Expr::parse("item ? {k: index, j: [x.a]} : default(vars[k], vars.n)").unwrap();
        assert_eq!(e.roots(), vec!["index", "item", "k", "vars", "x"]);
        assert_eq!(e.fields_of("vars"), vec!["n"]);
        assert_eq!(e.fields_of("x"), vec!["a"]);
        let e = Expr::parse("true && len('abc') > null").unwrap();
        assert!(e.roots().is_empty());
        assert_eq!(Expr::parse("[1, 2][0].a").unwrap().roots(), Vec::<String>::new());
    }

    fn types(name: &str) -> Type {
        match name {
            "n" => Type::Number,
            "s" => Type::String,
            "b" => Type::Bool,
            "a" => Type::Array,
            "o" => Type::Object,
            "z" => Type::Null,
            _ => Type::Any,
        }
    }

    fn type_of(src: &str) -> Type {
        Expr::parse(src).unwrap().static_type(&types)
    }

    fn type_err(src: &str) -> Option<String> {
        Expr::parse(src).unwrap().type_error(&types)
    }

    #[test]
    fn static_types() {
        assert_eq!(type_of("1"), Type::Number);
        assert_eq!(type_of("'x'"), Type::String);
        assert_eq!(type_of("null"), Type::Null);
        assert_eq!(type_of("n"), Type::Number);
        assert_eq!(type_of("x"), Type::Any);
        assert_eq!(type_of("o.f"), Type::Any);
        assert_eq!(type_of("[x]"), Type::Array);
        assert_eq!(type_of("{k: x}"), Type::Object);
        assert_eq!(type_of("x == y"), Type::Bool);
        assert_eq!(type_of("x < y"), Type::Bool);
        assert_eq!(type_of("x && y"), Type::Bool);
        assert_eq!(type_of("!x"), Type::Bool);
        assert_eq!(type_of("-x"), Type::Number);
        assert_eq!(type_of("x + 1"), Type::Any);
        assert_eq!(type_of("n + 1"), Type::Number);
        assert_eq!(type_of("s + s"), Type::String);
        assert_eq!(type_of("a + [1]"), Type::Array);
        assert_eq!(type_of("o + {}"), Type::Object);
        assert_eq!(type_of("x - 1"), Type::Number);
        assert_eq!(type_of("x % y"), Type::Number);
        assert_eq!(type_of("b ? 1 : 2"), Type::Number);
        assert_eq!(type_of("b ? 1 : 's'"), Type::Any);
        assert_eq!(type_of("len(x)"), Type::Number);
        assert_eq!(type_of("upper(x)"), Type::String);
        assert_eq!(type_of("contains(x, y)"), Type::Bool);
        assert_eq!(type_of("keys(x)"), Type::Array);
        assert_eq!(type_of("str(x)"), Type::String);
        assert_eq!(type_of("bool(x)"), Type::Bool);
        assert_eq!(type_of("default(x, 1)"), Type::Any);
        assert_eq!(type_of("default(s, 1)"), Type::String);
        assert_eq!(type_of("default(z, 1)"), Type::Number);
        assert_eq!(type_of("slice(s, 1)"), Type::String);
        assert_eq!(type_of("slice(a, 1)"), Type::Array);
        assert_eq!(type_of("slice(x, 1)"), Type::Any);
        assert_eq!(type_of("get(o, 'k')"), Type::Any);
        assert_eq!(type_of("type(x)"), Type::String);
        assert_eq!(type_of("not_null(x)"), Type::Bool);
        assert_eq!(type_of("range(3)"), Type::Array);
    }

    #[test]
    fn type_errors() {
        let s = scope();
        for (src, needle) in [
            ("'a' - 1", "`-` needs numbers, got string and number"),
            ("!5", "`!` needs a bool, got number"),
            ("-s", "`-` needs a number, got string"),
            ("len(3)", "`len` needs a string, array or object, got number"),
            ("n && b", "`&&` needs bools, got number"),
            ("b || s", "`||` needs bools, got string"),
            ("n < s", "`<` needs two numbers or two strings, got number and string"),
            ("b < x", "got bool and any"),
            ("s + n", "`+` needs two numbers, strings, arrays or objects, got string and number"),
            ("z + x", "got null and any"),
            ("n ? 1 : 2", "`? :` needs a bool condition, got number"),
            ("o[b]", "an index must be a string or number, got bool"),
            ("upper(n)", "`upper` needs a string, got number"),
            ("join(a, 1)", "`join` needs a string as argument 2, got number"),
            ("min(1, 's')", "`min` needs numbers"),
            ("num(a)", "`num` needs a number, string or bool, got array"),
            ("get(o, true)", "`get` needs a string or number as argument 2, got bool"),
            ("[1, {k: !'x'}]", "`!` needs a bool, got string"),
        ] {
            let got = type_err(src);
            assert!(got.as_deref().is_some_and(|m| m.contains(needle)), "{src}: {got:?}");
            // Literal-only cases fail the same way at run time.
            if Expr::parse(src).unwrap().roots().is_empty() {
                check_err(src, &s, needle);
            }
        }
        // Innermost first, as evaluation would meet it.
        assert_eq!(type_err("!('a' - 1)").unwrap(), "`-` needs numbers, got string and number");
        for src in [
            "x + 1",
            "x - 1",
            "!x",
            "n + n",
            "s + s",
            "x < 1",
            "len(x)",
            "o.k + 1",
            "n == s",
            "b ? n : s",
            "default(x, 1) * 2",
            "contains(a, 1)",
            "get(x, n, 1)",
            "vars.x[k]",
            "z == null",
        ] {
            assert_eq!(type_err(src), None, "{src}");
        }
    }

    #[test]
    fn templates_render() {
        let s = scope();
        let render_ok = |t: Value| render(&t, &s).unwrap();
        assert_eq!(render_ok(json!("${input.n}")), json!(3));
        assert_eq!(render_ok(json!("${ input.tags }")), json!(["a", "b", "c"]));
        assert_eq!(render_ok(json!("${input.missing}")), json!(null));
        assert_eq!(render_ok(json!("n=${input.n}")), json!("n=3"));
        assert_eq!(
            render_ok(json!(
                "${input.name} has ${len(input.tags)} tags: ${input.tags}, ${input.nothing}"
            )),
            json!("Ada has 3 tags: [\"a\",\"b\",\"c\"], null")
        );
        assert_eq!(render_ok(json!("${input.name}${input.n}")), json!("Ada3"));
        assert_eq!(render_ok(json!("$${input.n}")), json!("${input.n}"));
        assert_eq!(
            render_ok(json!("cost: $5, $${x} and ${input.n}$")),
            json!("cost: $5, ${x} and 3$")
        );
        assert_eq!(render_ok(json!("${ {'a': '}'}.a }")), json!("}"));
        assert_eq!(render_ok(json!("${ {a: {b: 1}}.a }")), json!({"b": 1}));
        assert_eq!(render_ok(json!("${'it\\'s }'}")), json!("it's }"));
        assert_eq!(render_ok(json!("plain")), json!("plain"));
        assert_eq!(render_ok(json!("")), json!(""));
        assert_eq!(render_ok(json!(5)), json!(5));
        assert_eq!(render_ok(json!(null)), json!(null));
        assert_eq!(
            render_ok(json!({
                "${key}": "${vars.total * 2}",
                "list": ["${index}", "i=${index}", 7, {"deep": "${steps.fetch.result.body}"}],
                "flag": true
            })),
            json!({"${key}": 20, "list": [2, "i=2", 7, {"deep": "ok"}], "flag": true})
        );
        let e = render(&json!({"a": [1, {"b": "${1 / 0}"}]}), &s).unwrap_err();
        assert_eq!(e.0, "at /a/1/b: division by zero");
        let e = render(&json!("${1 +}"), &s).unwrap_err();
        assert!(e.0.contains("invalid expression at 5: expected an expression"), "{e}");
        let big = json!({"s": "x".repeat(VALUE_LEN_MAX)});
        assert!(render(&json!("${s}!${s}"), &big).unwrap_err().0.contains("would exceed"));
    }

    #[test]
    fn templates_parse() {
        let t = json!({
            "message": {"text": "Hi ${input.name}, ${vars.n}"},
            "items": ["${item}", "plain", 3],
            "a/b~c": "${x}",
            "escaped": "$${not.parsed(}"
        });
        let found = parse_template(&t).unwrap();
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["/a~1b~0c", "/items/0", "/message/text", "/message/text"]);
        assert_eq!(found[2].1.roots(), vec!["input"]);
        assert_eq!(found[3].1, Expr::parse("vars.n").unwrap());
        assert_eq!(parse_template(&json!("${a}")).unwrap()[0].0, "");
        assert!(parse_template(&json!(1)).unwrap().is_empty());

        let (path, e) = parse_template(&json!({"message": {"text": "Hi ${foo(1)}"}})).unwrap_err();
        assert_eq!(path, "/message/text");
        assert_eq!(e.at, 5);
        assert!(e.message.contains("unknown function `foo`"));
        let (path, e) = parse_template(&json!({"list": ["ok", "x ${a"]})).unwrap_err();
        assert_eq!(path, "/list/1");
        assert_eq!(e.at, 2);
        assert!(e.message.contains("no matching `}`"));
        let (_, e) = parse_template(&json!("${}")).unwrap_err();
        assert!(e.message.contains("expected an expression"));
        let long = format!("${{'{}'}}", "a".repeat(EXPR_LEN_MAX));
        let (_, e) = parse_template(&json!(long)).unwrap_err();
        assert!(e.message.contains("longer than"));
    }

    #[test]
    fn eval_is_repeatable_and_does_not_touch_scope() {
        let s = scope();
        let e = Expr::parse("values(vars.obj) + keys(input)").unwrap();
        let first = e.eval(&s).unwrap();
        assert_eq!(
            first,
            json!([1, 2, "empty", "f", "n", "name", "nested", "nothing", "tags", "zero"])
        );
        assert_eq!(e.eval(&s).unwrap(), first);
        assert_eq!(s, scope());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
            if let Ok(e) = Expr::parse(&src) {
                let _ = e.eval(&scope());
                let _ = e.static_type(&types);
                let _ = e.type_error(&types);
            }
            let _ = render(&Value::String(src.clone()), &scope());
            let _ = parse_template(&Value::String(src));
        }

        #[test]
        fn expression_like_text_never_panics(
            src in "([a-z_]{1,6}|[0-9]{1,3}(\\.[0-9])?|'[a-zé]{0,3}'|[-+*/%!<>=&|?:.,()\\[\\]{} ]|len\\(|range\\(|slice\\(|min\\(|get\\(|-9223372036854775808){0,60}"
        ) {
            if let Ok(e) = Expr::parse(&src) {
                let _ = e.eval(&scope());
                let _ = e.roots();
                let _ = e.fields_of("vars");
                let _ = e.static_type(&types);
                let _ = e.type_error(&types);
            }
        }
    }
}
