//! Chat messages and the checkpoint's own Jinja chat template.
//!
//! The template is rendered by minijinja with the settings transformers uses
//! (`trim_blocks`, `lstrip_blocks`, no trailing newline kept) and Python string methods
//! available, so a conversation renders to exactly the text `apply_chat_template` produces.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{ValueKind, ValueOrKwargs};
use minijinja::{Environment, Value};
use serde::Serialize;

use crate::error::EchoError;

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The person asking.
    User,
    /// The model.
    Assistant,
}

/// One item of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Content {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image (its pixels travel separately, in order).
    Image,
    /// A video or cine loop (its frames travel separately, in order).
    Video,
}

/// A chat message: a role and a list of items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// Items, rendered in order.
    pub content: Vec<Content>,
}

impl Message {
    /// A message of these items.
    pub fn new(role: Role, content: Vec<Content>) -> Self {
        Self { role, content }
    }

    /// A message holding one text item.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![Content::Text { text: text.into() }],
        }
    }

    /// Number of image items.
    pub fn images(&self) -> usize {
        self.content
            .iter()
            .filter(|c| matches!(c, Content::Image))
            .count()
    }

    /// Number of video items.
    pub fn videos(&self) -> usize {
        self.content
            .iter()
            .filter(|c| matches!(c, Content::Video))
            .count()
    }
}

/// Upper bound on template execution steps, so that a hostile template cannot loop forever.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// The filter every value assigned to a namespace attribute passes through (a name templates
/// cannot define: filters come from the environment only).
const STORE_GUARD: &str = "__echovlm_storable";

/// Deepest nesting of lists and maps a template may store in a namespace or print.
const MAX_NESTING: usize = 128;

/// Most values one check of a stored or printed value visits.
const MAX_VISITED: usize = 1_000_000;

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("len", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a template source.
    ///
    /// Values a template stores in `namespace()` attributes are checked as they are stored:
    /// a namespace or `loop` object (or a list or map holding one) and values nested deeper
    /// than 128 levels are refused with [`EchoError::Template`], and lazy sequences are stored
    /// as lists. A namespace that holds itself would otherwise be printed, compared or
    /// serialised recursively until the stack overflows, which aborts the process.
    pub fn new(source: impl Into<String>) -> Result<Self, EchoError> {
        let source = source.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| EchoError::Template(e.to_string()))?;
        env.set_syntax(syntax.clone());
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("namespace", |defaults: Option<ValueOrKwargs>| {
            let defaults = match defaults {
                Some(d) => Some(ValueOrKwargs::from(storable(&d.into_value())?)),
                None => None,
            };
            let ns = minijinja::functions::namespace(defaults)?;
            NAMESPACES.with(|n| {
                if let Some(list) = n.borrow_mut().as_mut() {
                    list.push(ns.clone());
                }
            });
            Ok(ns)
        });
        env.add_filter(STORE_GUARD, |value: Value| storable(&value));
        env.set_formatter(|out, state, value| {
            check_printable(value)?;
            minijinja::escape_formatter(out, state, value)
        });
        env.add_template_owned("chat", guard_namespace_assignments(&source, syntax))
            .map_err(|e| EchoError::Template(e.to_string()))?;
        Ok(Self { env, source })
    }

    /// Finds the template of a model directory: `chat_template.json` (key `chat_template`), else
    /// the `chat_template` entry of `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, EchoError> {
        for (file, key) in [
            ("chat_template.json", "chat_template"),
            ("tokenizer_config.json", "chat_template"),
        ] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| {
                EchoError::Load(echovlm_core::LoadError::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                EchoError::Load(echovlm_core::LoadError::config(
                    &path,
                    format!("not valid JSON: {e}"),
                ))
            })?;
            match json.get(key) {
                Some(serde_json::Value::String(t)) => return Self::new(t.clone()),
                // a list of named templates: take the default one
                Some(serde_json::Value::Array(items)) => {
                    let default = items.iter().find(|i| i["name"] == "default");
                    if let Some(t) = default.and_then(|d| d["template"].as_str()) {
                        return Self::new(t);
                    }
                }
                _ => {}
            }
        }
        Err(EchoError::Template(format!(
            "no chat template in {} (chat_template.json or tokenizer_config.json)",
            dir.display()
        )))
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders messages given as JSON in the transformers format (`[{"role": …, "content": …}]`,
    /// content a string or a list of `{"type": "text" | "image" | "video", …}` items).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        add_vision_id: bool,
    ) -> Result<String, EchoError> {
        self.render_value(
            Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt,
            add_vision_id,
        )
    }

    /// Renders a conversation. `add_vision_id` prefixes images and videos with
    /// `Picture n:` / `Video n:` (templates that support it).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        add_vision_id: bool,
    ) -> Result<String, EchoError> {
        self.render_value(
            Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt,
            add_vision_id,
        )
    }

    fn render_value(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        add_vision_id: bool,
    ) -> Result<String, EchoError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EchoError::Template(e.to_string()))?;
        let _sweep = NamespaceSweep::start();
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            add_vision_id => add_vision_id,
        })
        .map_err(|e| EchoError::Template(e.to_string()))
    }
}

thread_local! {
    /// The namespaces created by the render running on this thread, while a
    /// [`NamespaceSweep`] is alive.
    static NAMESPACES: RefCell<Option<Vec<Value>>> = const { RefCell::new(None) };
}

/// Breaks the reference cycles a template can build out of `namespace()` objects.
///
/// `{% set ns.me = ns %}` (or `a.b = b` with `b` holding `a`) makes minijinja's reference-counted
/// namespaces own each other, so they and everything they hold (strings of up to 100 MB) would
/// never be freed: a hostile chat template could leak memory on every request. Assigning a
/// namespace attribute is the only way a template mutates a value, so every cycle passes through
/// one; once the render is over, every namespace attribute that holds a container is reset to
/// `none`.
struct NamespaceSweep;

impl NamespaceSweep {
    fn start() -> Self {
        NAMESPACES.with(|n| *n.borrow_mut() = Some(Vec::new()));
        NamespaceSweep
    }
}

impl Drop for NamespaceSweep {
    fn drop(&mut self) {
        let namespaces = NAMESPACES
            .with(|n| n.borrow_mut().take())
            .unwrap_or_default();
        let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for ns in &namespaces {
            let Ok(keys) = ns.try_iter() else { continue };
            for key in keys {
                let Some(k) = key.as_str() else { continue };
                let container = ns.get_attr(k).is_ok_and(|v| {
                    !matches!(
                        v.kind(),
                        ValueKind::Undefined
                            | ValueKind::None
                            | ValueKind::Bool
                            | ValueKind::Number
                            | ValueKind::String
                            | ValueKind::Bytes
                    )
                });
                // only identifiers can be assignment targets, so only they can close a cycle
                let mut chars = k.chars();
                let identifier = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                    && chars.all(|c| c.is_alphanumeric() || c == '_');
                if container && identifier {
                    by_key.entry(k.to_owned()).or_default().push(ns.clone());
                }
            }
        }
        if by_key.is_empty() {
            return;
        }
        // The sweep is our own template: no fuel, and its work is bounded by what the
        // (fuelled) render created.
        let env = Environment::new();
        let sweep = |entries: &[(&String, &Vec<Value>)]| {
            let mut source = String::new();
            let mut ctx = BTreeMap::new();
            for (i, (key, list)) in entries.iter().enumerate() {
                source.push_str(&format!(
                    "{{% for n in l{i} %}}{{% set n.{key} = none %}}{{% endfor %}}"
                ));
                ctx.insert(format!("l{i}"), Value::from((*list).clone()));
            }
            env.render_str(&source, ctx).is_ok()
        };
        let entries: Vec<(&String, &Vec<Value>)> = by_key.iter().collect();
        if !sweep(&entries) {
            // a key the template syntax does not accept: sweep the others one by one
            for entry in &entries {
                sweep(std::slice::from_ref(entry));
            }
        }
    }
}

/// The type name minijinja gives the objects a template can change after creating them:
/// `namespace()` objects (their attributes) and `loop` (it moves on: `loop.nextitem`).
fn mutable_type_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut env = Environment::new();
        let sink = names.clone();
        env.add_function("probe", move |v: Value| {
            if let (Some(o), Ok(mut names)) = (v.as_object(), sink.lock()) {
                names.push(o.type_name());
            }
            String::new()
        });
        // an error leaves the list short; the names found are still refused
        let _ = env.render_str(
            "{{ probe(namespace()) }}{% for x in [1] %}{{ probe(loop) }}{% endfor %}",
            (),
        );
        names.lock().map(|n| n.clone()).unwrap_or_default()
    })
}

fn is_mutable_object(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| mutable_type_names().contains(&o.type_name()))
}

fn template_error(msg: String) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg)
}

fn is_container(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
    )
}

/// What a namespace attribute may hold: `value` with every lazy sequence in it (`|reverse`,
/// `|select`, `.items()`, …) made a list, so that nothing it holds can change afterwards. A
/// `namespace()` or `loop` object anywhere inside it is refused, so no chain of namespace
/// attributes can ever lead back to where it started: minijinja would print, compare or
/// serialise such a cycle recursively until the stack overflows, which aborts the process.
/// Values nested deeper than [`MAX_NESTING`] are refused for the same reason.
fn storable(value: &Value) -> Result<Value, minijinja::Error> {
    let mut visited = 0;
    Ok(snapshot(value, 0, &mut visited)?.unwrap_or_else(|| value.clone()))
}

/// [`storable`]'s walk; `None` when `value` can be kept as it is. Recursion is bounded by
/// [`MAX_NESTING`], the work by [`MAX_VISITED`].
fn snapshot(
    value: &Value,
    depth: usize,
    visited: &mut usize,
) -> Result<Option<Value>, minijinja::Error> {
    if is_mutable_object(value) {
        return Err(template_error(
            "a namespace or loop object cannot be stored in a namespace attribute (the \
             namespace could end up holding itself)"
                .into(),
        ));
    }
    if !is_container(value) {
        return Ok(None);
    }
    *visited += 1;
    if *visited > MAX_VISITED {
        return Err(template_error(format!(
            "value too large to store in a namespace (more than {MAX_VISITED} items)"
        )));
    }
    if depth >= MAX_NESTING {
        return Err(template_error(format!(
            "value nested deeper than {MAX_NESTING} levels"
        )));
    }
    let Ok(items) = value.try_iter() else {
        return Ok(None);
    };
    let kind = value.kind();
    let mut changed = kind == ValueKind::Iterable;
    let mut out = Vec::new();
    for key in items {
        let item = if kind == ValueKind::Map {
            value.get_item(&key)?
        } else {
            key.clone()
        };
        let new = snapshot(&item, depth + 1, visited)?;
        changed |= new.is_some();
        out.push((key, new.unwrap_or(item)));
    }
    Ok(changed.then(|| match kind {
        ValueKind::Map => Value::from_pairs(out),
        _ => out.into_iter().map(|(_, v)| v).collect(),
    }))
}

/// Refuses to print values nested deeper than [`MAX_NESTING`] (minijinja formats them
/// recursively). Walks without recursion, at most [`MAX_VISITED`] values.
fn check_printable(value: &Value) -> Result<(), minijinja::Error> {
    if !is_container(value) {
        return Ok(());
    }
    let mut stack = vec![(value.clone(), 0usize)];
    let mut visited = 0usize;
    while let Some((v, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_VISITED {
            return Err(template_error(format!(
                "value too large to print (more than {MAX_VISITED} items)"
            )));
        }
        if depth >= MAX_NESTING {
            return Err(template_error(format!(
                "value nested deeper than {MAX_NESTING} levels"
            )));
        }
        let kind = v.kind();
        let Ok(items) = v.try_iter() else { continue };
        for item in items {
            let item = if kind == ValueKind::Map {
                v.get_item(&item)?
            } else {
                item
            };
            if is_container(&item) {
                stack.push((item, depth + 1));
            }
        }
    }
    Ok(())
}

/// Routes every value a template assigns to a namespace attribute (`{% set ns.attr = … %}`,
/// `{% set a, ns.b = … %}`, `{% set ns.attr %}…{% endset %}`) through the [`STORE_GUARD`]
/// filter. minijinja offers no hook on namespace assignment, so the template source is
/// rewritten: the right-hand side becomes `(…)|guard`, a block assignment gets `|guard` after
/// its filters. The insertions stay inside `{% %}` tags, so whitespace handling is unchanged.
/// A source the lexer rejects is returned as is (compiling it reports the error).
fn guard_namespace_assignments(source: &str, syntax: minijinja::syntax::SyntaxConfig) -> String {
    use minijinja::machinery::{Token, tokenize};
    let Ok(tokens) = tokenize(source, false, syntax).collect::<Result<Vec<_>, _>>() else {
        return source.to_owned();
    };
    let guard = format!("|{STORE_GUARD}");
    let mut inserts: Vec<(usize, String)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_set = matches!(tokens[i].0, Token::BlockStart)
            && matches!(tokens.get(i + 1), Some((Token::Ident("set"), _)));
        if !is_set {
            i += 1;
            continue;
        }
        let start = i + 2;
        let Some(end) = tokens[start..]
            .iter()
            .position(|(t, _)| matches!(t, Token::BlockEnd))
            .map(|p| p + start)
        else {
            break;
        };
        let body = &tokens[start..end];
        let split = body
            .iter()
            .position(|(t, _)| matches!(t, Token::Assign | Token::Pipe))
            .unwrap_or(body.len());
        let dotted = body[..split].iter().any(|(t, _)| matches!(t, Token::Dot));
        if let (true, Some((_, last))) = (dotted, body.last()) {
            let last = last.end_offset as usize;
            match body.get(split) {
                Some((Token::Assign, eq)) => {
                    inserts.push((eq.end_offset as usize, "(".into()));
                    inserts.push((last, format!("){guard}")));
                }
                _ => inserts.push((last, guard.clone())),
            }
        }
        i = end + 1;
    }
    let mut out = source.to_owned();
    for (at, text) in inserts.into_iter().rev() {
        if out.is_char_boundary(at) {
            out.insert_str(at, &text);
        }
    }
    out
}
