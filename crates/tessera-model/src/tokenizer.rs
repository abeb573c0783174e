//! Tokenizers: a Hugging Face `tokenizer.json` through the `tokenizers` crate, or the byte-level
//! tokenizer that dummy models use so that the engine runs with no files at all.

use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};

/// Byte-level tokenizer ids: 0..=255 are bytes, then begin- and end-of-text.
pub const BYTE_BOS: u32 = 256;
pub const BYTE_EOS: u32 = 257;
/// Dummy models have vocabularies far larger than 258; ids from here on decode to one printable
/// ASCII character each, so that random output is readable rather than a stream of broken bytes.
const BYTE_FIRST_FILLER: u32 = 258;

pub enum Tokenizer {
    HuggingFace { inner: Box<tokenizers::Tokenizer>, path: PathBuf },
    Bytes,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer { path: path.into(), message: e.to_string() })?;
        Ok(Tokenizer::HuggingFace { inner: Box::new(inner), path: path.into() })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (usually a begin-of-text token).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match self {
            Tokenizer::HuggingFace { inner, path } => inner
                .encode(text, add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ModelError::Tokenizer { path: path.clone(), message: e.to_string() }),
            Tokenizer::Bytes => {
                let bos = add_special_tokens.then_some(BYTE_BOS);
                Ok(bos.into_iter().chain(text.bytes().map(u32::from)).collect())
            }
        }
    }

    /// Text of `ids`. Incomplete UTF-8 sequences decode to U+FFFD; streaming callers hold those
    /// back until the rest of the character arrives.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        match self {
            Tokenizer::HuggingFace { inner, path } => inner
                .decode(ids, skip_special_tokens)
                .map_err(|e| ModelError::Tokenizer { path: path.clone(), message: e.to_string() }),
            Tokenizer::Bytes => {
                let mut bytes = Vec::with_capacity(ids.len());
                for &id in ids {
                    match id {
                        0..=255 => bytes.push(id as u8),
                        BYTE_BOS | BYTE_EOS if skip_special_tokens => {}
                        BYTE_BOS => bytes.extend_from_slice(b"<|begin_of_text|>"),
                        BYTE_EOS => bytes.extend_from_slice(b"<|end_of_text|>"),
                        _ => bytes.push(b' ' + ((id - BYTE_FIRST_FILLER) % 95) as u8),
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// Number of ids the tokenizer knows, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::HuggingFace { inner, .. } => inner.get_vocab_size(true),
            Tokenizer::Bytes => BYTE_FIRST_FILLER as usize,
        }
    }

    /// The id of a special token spelled `token`, if the tokenizer has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Tokenizer::HuggingFace { inner, .. } => inner.token_to_id(token),
            Tokenizer::Bytes => match token {
                "<|begin_of_text|>" => Some(BYTE_BOS),
                "<|end_of_text|>" => Some(BYTE_EOS),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_utf8() {
        let tok = Tokenizer::Bytes;
        let text = "héllo 🦀 世界";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], BYTE_BOS);
        assert_eq!(ids.len(), 1 + text.len());
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        assert_eq!(tok.decode(&[BYTE_EOS], false).unwrap(), "<|end_of_text|>");
        assert_eq!(tok.decode(&[BYTE_FIRST_FILLER + 33], true).unwrap(), "A");
    }
}
