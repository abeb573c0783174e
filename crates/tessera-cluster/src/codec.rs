//! The wire codec: every value that crosses a cluster session is encoded here, and only here, so
//! the format can be swapped in one place. bincode 2 (pinned `=2.0.1`: upstream is frozen) over
//! serde, with a size limit so a corrupt or hostile frame cannot make a node allocate without
//! bound.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded value accepted (ractor_cluster's frame limit is 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodecError {
    #[error("encoding a cluster message: {0}")]
    Encode(String),
    #[error("decoding a cluster message: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a whole message; trailing bytes are an error (a sign of a mismatched type).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Decode(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::step::{NewSequence, StepPlan, StepResult};
    use tessera_core::{BlockId, RequestId, SamplingParams};

    #[test]
    fn a_step_plan_round_trips() {
        let plan = StepPlan {
            step_id: 7,
            new_sequences: vec![NewSequence {
                request_id: RequestId(3),
                prompt_token_ids: vec![1, 2, 3],
                output_token_ids: vec![],
                sampling_params: SamplingParams { seed: Some(9), ..Default::default() },
                block_table: vec![BlockId(4)],
                num_computed_tokens: 0,
                num_scheduled_tokens: 3,
                sample: true,
            }],
            ..Default::default()
        };
        let bytes = encode(&plan).unwrap();
        assert_eq!(decode::<StepPlan>(&bytes).unwrap(), plan);
        let result: Result<Option<StepResult>, String> = Err("rank 2: boom".into());
        assert_eq!(decode::<Result<Option<StepResult>, String>>(&encode(&result).unwrap()).unwrap(), result);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<StepPlan>(&[0xff; 3]).is_err());
        let mut bytes = encode(&5u64).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u64>(&bytes), Err(CodecError::Decode(m)) if m.contains("trailing")));
    }
}
