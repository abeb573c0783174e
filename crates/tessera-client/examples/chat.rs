//! One chat completion against a running server.
//!
//! ```sh
//! tessera serve --dummy tiny &
//! TESSERA_URL=http://127.0.0.1:8000 TESSERA_MODEL=tiny cargo run -p tessera-client --example chat
//! ```

use std::time::Duration;
use tessera_client::{ChatCompletionRequest, Client};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TESSERA_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let model = std::env::var("TESSERA_MODEL").unwrap_or_else(|_| "tiny".into());
    let mut builder = Client::builder(url).timeout(Duration::from_secs(60));
    if let Ok(key) = std::env::var("TESSERA_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.build()?;

    let request = ChatCompletionRequest::new(model)
        .system("You are a concise assistant.")
        .user_message("Name three colours.")
        .max_tokens(32)
        .temperature(0.0);
    let response = client.chat(request).await?;
    for choice in &response.choices {
        println!("{}", choice.message.content.as_deref().unwrap_or(""));
        println!("(finish_reason: {})", choice.finish_reason.as_deref().unwrap_or("none"));
    }
    if let Some(usage) = response.usage {
        println!("(tokens: {} prompt + {} completion)", usage.prompt_tokens, usage.completion_tokens);
    }
    Ok(())
}
