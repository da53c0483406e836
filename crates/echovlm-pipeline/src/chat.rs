//! Chat messages and the checkpoint's own Jinja chat template.
//!
//! The template is rendered by minijinja with the settings transformers uses
//! (`trim_blocks`, `lstrip_blocks`, no trailing newline kept) and Python string methods
//! available, so a conversation renders to exactly the text `apply_chat_template` produces.

use std::path::Path;

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
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            add_vision_id => add_vision_id,
        })
        .map_err(|e| EchoError::Template(e.to_string()))
    }
}
