//! The memory-bandwidth and compute bounds of one model step, from the model's shape alone. A
//! decode step must at least read every weight it uses once and every sequence's KV cache once
//! (an untied input embedding table is not among them: a step reads only its batch's rows of it,
//! which are negligible); a prefill must at least do its matrix FLOPs. Measured times divided into these give the achieved
//! fraction: how close the engine is to what the hardware allows.

use serde::Serialize;
use tessera_model::ModelSpec;

/// The hardware, per device; a tensor-parallel group has `tp` of them working at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Hardware {
    pub bandwidth_gbps: f64,
    pub matrix_tflops: f64,
    pub tp: usize,
}

/// What one benchmark shape moves and computes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepCost {
    pub weight_bytes: f64,
    /// The weights a decode step reads: all but an untied input embedding table.
    pub decode_weight_bytes: f64,
    /// KV bytes read by one decode step at the run's mean context.
    pub kv_bytes_per_decode_step: f64,
    pub prefill_flops: f64,
}

/// `weight_elem_bytes`: 4 on CPU (weights are converted to f32 at load), the dtype's size on a
/// GPU; `kv_elem_bytes` likewise for the KV cache.
pub fn step_cost(
    spec: &ModelSpec,
    batch_size: usize,
    input_len: usize,
    output_len: usize,
    weight_elem_bytes: usize,
    kv_elem_bytes: usize,
) -> StepCost {
    let (b, i) = (batch_size as f64, input_len as f64);
    // Decode step k (1..output_len) attends over input_len + k tokens; their mean is this.
    let mean_context = i + output_len as f64 / 2.0;
    let kv_per_token = (2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * kv_elem_bytes) as f64;
    let h = spec.hidden_size as f64;
    let embed = (spec.vocab_size * spec.hidden_size) as f64;
    // Every weight but the embedding table is a matrix each token goes through; the lm_head runs
    // on each sequence's last prompt token only.
    let lm_head = embed;
    let body = spec.num_params() as f64 - embed - if spec.tie_word_embeddings { 0.0 } else { lm_head } - h;
    // Of the last layer, only K and V are needed for every prompt token; its q_proj, attention,
    // o_proj and MLP matter for the token whose logits are wanted (the engine skips o_proj and
    // the MLP for the others: `Model::forward`).
    let (q, inter) = (spec.q_size() as f64, spec.intermediate_size as f64);
    let last_token_only = if spec.num_layers > 0 { 2.0 * h * q + 3.0 * h * inter } else { 0.0 };
    // Causal attention: QK^T and PV, 2 FLOPs per multiply-add, over i (i + 1) / 2 pairs in every
    // layer but the last, where one query row sees i keys.
    let full_layers = spec.num_layers.saturating_sub(1) as f64;
    let last_layer = if spec.num_layers > 0 { 4.0 * q * i } else { 0.0 };
    let attention = 4.0 * full_layers * q * i * (i + 1.0) / 2.0 + last_layer;
    let unread_embedding = if spec.tie_word_embeddings { 0.0 } else { embed };
    StepCost {
        weight_bytes: (spec.num_params() * weight_elem_bytes) as f64,
        decode_weight_bytes: (spec.num_params() as f64 - unread_embedding) * weight_elem_bytes as f64,
        kv_bytes_per_decode_step: b * mean_context * kv_per_token,
        prefill_flops: b * (2.0 * body * i - 2.0 * last_token_only * (i - 1.0) + 2.0 * lm_head + attention),
    }
}

/// Lower bounds in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bounds {
    pub decode_step_s: f64,
    pub prefill_s: f64,
}

pub fn bounds(cost: &StepCost, hw: &Hardware) -> Bounds {
    let bytes_per_s = hw.bandwidth_gbps * 1e9 * hw.tp as f64;
    let flops_per_s = hw.matrix_tflops * 1e12 * hw.tp as f64;
    Bounds {
        decode_step_s: (cost.decode_weight_bytes + cost.kv_bytes_per_decode_step) / bytes_per_s,
        // A prefill is bound by whichever is slower: its FLOPs or one read of the weights.
        prefill_s: (cost.prefill_flops / flops_per_s).max(cost.weight_bytes / bytes_per_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::shapes::dummy_spec;

    #[test]
    fn llama_3_8b_decode_bound_on_an_h100() {
        let spec = dummy_spec("llama-3-8b").unwrap();
        assert_eq!(spec.num_params(), 8_030_261_248, "Llama 3 8B's published count");
        let cost = step_cost(&spec, 1, 1024, 128, 2, 2);
        assert_eq!(cost.weight_bytes, 16_060_522_496.0);
        // Less the 128256 x 4096 input embedding, of which a step reads one row per sequence.
        assert_eq!(cost.decode_weight_bytes, 16_060_522_496.0 - 2.0 * 128_256.0 * 4096.0);
        // 32 layers * 8 kv heads * 128 dims * 2 (K and V) * 2 bytes = 128 KiB per token, at a
        // mean context of 1024 + 64 tokens.
        assert_eq!(cost.kv_bytes_per_decode_step, 1088.0 * 131_072.0);
        let hw = Hardware { bandwidth_gbps: 3350.0, matrix_tflops: 989.0, tp: 1 };
        let b = bounds(&cost, &hw);
        let want = (cost.decode_weight_bytes + 1088.0 * 131_072.0) / 3.35e12;
        assert!((b.decode_step_s - want).abs() < 1e-12, "{b:?}");
        // About 4.5 ms at the datasheet bandwidth (4.8 ms counting the unread embedding table).
        assert!((0.0044..0.0046).contains(&b.decode_step_s), "{b:?}");
        // Two ranks halve it.
        let b2 = bounds(&cost, &Hardware { tp: 2, ..hw });
        assert!((b2.decode_step_s * 2.0 - b.decode_step_s).abs() < 1e-12);
    }

    #[test]
    fn a_tied_embedding_is_read_by_decode_as_the_lm_head() {
        let spec = dummy_spec("llama-3.2-1b").unwrap();
        assert!(spec.tie_word_embeddings);
        let cost = step_cost(&spec, 1, 16, 4, 2, 2);
        assert_eq!(cost.decode_weight_bytes, cost.weight_bytes);
    }

    #[test]
    fn prefill_flops_are_two_per_weight_per_token_plus_attention() {
        let spec = dummy_spec("tiny").unwrap();
        let cost = step_cost(&spec, 2, 16, 4, 4, 4);
        // 2 layers, hidden 64, q 8 x 8, k and v 4 x 8 each, intermediate 128, vocab 512.
        let (h, v) = (64.0, 512.0);
        let (qkv, o, mlp) = (h * (64.0 + 2.0 * 32.0), 64.0 * h, 3.0 * h * 128.0);
        // The first layer for all 16 tokens; the last layer's k and v projections for all of
        // them, its q, o_proj and MLP for the last one; the two norms of each layer count as
        // weights every token goes through.
        let norms = 16.0 * 2.0 * 2.0 * h;
        let matrices = 16.0 * (qkv + o + mlp) + 16.0 * h * 64.0 + (h * 64.0 + o + mlp) + norms;
        // Causal pairs in the first layer; one query over 16 keys in the last.
        let attention = 4.0 * 64.0 * (16.0 * 17.0 / 2.0 + 16.0);
        assert_eq!(cost.prefill_flops, 2.0 * (2.0 * matrices + 2.0 * v * h + attention));
        // Compute-bound with a fast memory and slow matrix unit; memory-bound the other way round.
        let slow_math = Hardware { bandwidth_gbps: 1e6, matrix_tflops: 1e-6, tp: 1 };
        assert_eq!(bounds(&cost, &slow_math).prefill_s, cost.prefill_flops / 1e6);
        let slow_memory = Hardware { bandwidth_gbps: 1e-6, matrix_tflops: 1e6, tp: 1 };
        assert_eq!(bounds(&cost, &slow_memory).prefill_s, cost.weight_bytes / 1e3);
    }
}
