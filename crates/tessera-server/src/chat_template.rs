//! Chat templates: the model's Jinja template from `tokenizer_config.json` (rendered with
//! minijinja and Python string methods), or a plain built-in one for models without a template.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;
use std::path::Path;
use tessera_core::openai::ChatMessage;

const FALLBACK: &str = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The model's own template (which adds its special tokens itself) rather than the fallback.
    pub from_model: bool,
}

#[derive(Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// The template text: a string, or a list of named templates of which "default" is taken.
fn template_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(String::from)),
        _ => None,
    }
}

impl ChatTemplate {
    /// Reads `dir/tokenizer_config.json` when there is one; a broken template fails here, at
    /// startup, rather than on the first request.
    pub fn load(model_dir: Option<&Path>) -> Result<Self, String> {
        let config = model_dir
            .map(|d| d.join("tokenizer_config.json"))
            .filter(|p| p.exists())
            .map(|p| {
                let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("{}: {e}", p.display()))
            })
            .transpose()?
            .unwrap_or_default();
        let model_template = config.get("chat_template").and_then(template_text);
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        let from_model = model_template.is_some();
        env.add_template_owned("chat", model_template.unwrap_or_else(|| FALLBACK.to_string()))
            .map_err(|e| format!("chat_template in tokenizer_config.json: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            from_model,
        })
    }

    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let messages: Vec<Message> =
            messages.iter().map(|m| Message { role: m.role.as_str(), content: m.content.text() }).collect();
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| format!("rendering the chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_template_renders_roles_and_the_generation_prompt() {
        let template = ChatTemplate::load(None).unwrap();
        assert!(!template.from_model);
        let text = template.render(&[ChatMessage::system("be brief"), ChatMessage::user("hi")]).unwrap();
        assert_eq!(text, "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n");
    }

    #[test]
    fn model_template_from_tokenizer_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
        let template = ChatTemplate::load(Some(&dir)).unwrap();
        assert!(template.from_model);
        let text = template.render(&[ChatMessage::user("Hello")]).unwrap();
        assert_eq!(text, "<|begin_of_text|>user: Hello<|end_of_text|>\nassistant:");
    }
}
