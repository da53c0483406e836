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
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// Items, rendered in order.
    pub content: Vec<Content>,
}

impl Message {
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

/// A compiled chat template.
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
    pub fn new(source: impl Into<String>) -> Result<Self, EchoError> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .expect("default delimiters are valid"),
        );
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
            let ns = minijinja::functions::namespace(defaults)?;
            NAMESPACES.with(|n| {
                if let Some(list) = n.borrow_mut().as_mut() {
                    list.push(ns.clone());
                }
            });
            Ok(ns)
        });
        env.add_template_owned("chat", source.clone())
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
