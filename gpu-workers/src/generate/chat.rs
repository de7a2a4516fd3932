//! ChatML prompt rendering, as SmolLM2-Instruct's embedded chat template does it.
//!
//! The template in the GGUF is Jinja; rather than embed a Jinja engine for one fixed format we
//! render the same text directly: every message becomes
//! `<|im_start|>{role}\n{content}<|im_end|>\n`, a default system message is put first when the
//! conversation has none (the template does that too), and the generation prompt
//! `<|im_start|>assistant\n` closes the prompt. No BOS token: SmolLM2 does not add one.
//! A test checks this against transformers' `apply_chat_template` output.

/// ChatML start-of-turn marker.
pub const IM_START: &str = "<|im_start|>";
/// ChatML end-of-turn marker (also the EOS token of SmolLM2-Instruct).
pub const IM_END: &str = "<|im_end|>";
/// The system message SmolLM2's template inserts when the conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person asking.
    User,
    /// The model's earlier replies.
    Assistant,
}

impl Role {
    /// The role name written into the prompt.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Text, inserted verbatim (special-token strings in it are not escaped, as in the original
    /// template; the worker's caller decides whether to allow them).
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Renders `messages` as a ChatML prompt. With `add_generation_prompt` the text ends with the
/// opening of an assistant turn, which is what generation continues from.
pub fn render_chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    let push = |out: &mut String, role: &str, content: &str| {
        out.push_str(IM_START);
        out.push_str(role);
        out.push('\n');
        out.push_str(content);
        out.push_str(IM_END);
        out.push('\n');
    };
    if messages.first().map(|m| m.role) != Some(Role::System) {
        push(&mut out, Role::System.as_str(), DEFAULT_SYSTEM_PROMPT);
    }
    for m in messages {
        push(&mut out, m.role.as_str(), &m.content);
    }
    if add_generation_prompt {
        out.push_str(IM_START);
        out.push_str(Role::Assistant.as_str());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_prompt_is_inserted() {
        let s = render_chatml(&[ChatMessage::user("Hi")], true);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn explicit_system_prompt_is_kept() {
        let s = render_chatml(
            &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            false,
        );
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }
}
