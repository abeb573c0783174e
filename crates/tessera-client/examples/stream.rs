//! Streams a completion token by token; Ctrl-C (dropping the stream) aborts it on the server.
//!
//! ```sh
//! TESSERA_URL=http://127.0.0.1:8000 TESSERA_MODEL=tiny cargo run -p tessera-client --example stream
//! ```

use futures_util::StreamExt;
use std::io::Write;
use std::time::Duration;
use tessera_client::{Client, CompletionRequest, StreamOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TESSERA_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let model = std::env::var("TESSERA_MODEL").unwrap_or_else(|_| "tiny".into());
    let client = Client::builder(url)
        .timeout(Duration::from_secs(30))
        .stream_idle_timeout(Duration::from_secs(30))
        .build()?;

    let request = CompletionRequest::new(model, "Once upon a time")
        .max_tokens(64)
        .stream_options(StreamOptions { include_usage: Some(true) });
    let mut stream = client.completions_stream(request).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        for choice in &chunk.choices {
            write!(out, "{}", choice.text)?;
            if let Some(reason) = &choice.finish_reason {
                write!(out, "\n(finish_reason: {reason})")?;
            }
        }
        if let Some(usage) = chunk.usage {
            write!(
                out,
                "\n(tokens: {} prompt + {} completion)",
                usage.prompt_tokens, usage.completion_tokens
            )?;
        }
        out.flush()?;
    }
    println!();
    Ok(())
}
