//! The backend's collectives over NCCL on 2 and 4 GPUs, exactly: all-reduce sums and the
//! vocab-parallel gather's rank-major column layout, with values that bf16 holds exactly (small
//! integers), so any misplaced or missing element shows. Run with TESSERA_GPU_TESTS=1.

#![cfg(feature = "cuda")]

mod common;

use common::group::{run_group, tp_sizes};
use common::*;
use tessera_model::Backend;

/// Rank `rank`'s value at flat index `i`: small integers, so every sum is exact in bf16.
fn value(rank: usize, i: usize) -> f32 {
    ((i * 7) % 16 + 32 * rank) as f32
}

#[test]
fn all_reduce_sums_exactly_on_every_rank() {
    if !gpu_tests_enabled("all_reduce_sums_exactly_on_every_rank") {
        return;
    }
    for world in tp_sizes("all_reduce_sums_exactly_on_every_rank") {
        // One decode row, a batch of rows, and a prefill-sized tensor.
        for (rows, cols) in [(1, 8192), (64, 4096), (2048, 1024)] {
            let results = run_group(world, |b| {
                let rank = b.tp_rank().rank;
                let values: Vec<f32> = (0..rows * cols).map(|i| value(rank, i)).collect();
                let mut x = activation(b, rows, cols, &values);
                b.all_reduce(&mut x).unwrap();
                b.to_host(&x).unwrap()
            });
            let want: Vec<f32> = (0..rows * cols).map(|i| (0..world).map(|r| value(r, i)).sum()).collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got, &want, "TP={world} rank {rank} {rows}x{cols}");
            }
            eprintln!("all-reduce TP={world} {rows}x{cols}: exact on every rank");
        }
    }
}

#[test]
fn all_gather_cols_lays_ranks_side_by_side() {
    if !gpu_tests_enabled("all_gather_cols_lays_ranks_side_by_side") {
        return;
    }
    for world in tp_sizes("all_gather_cols_lays_ranks_side_by_side") {
        // Logits rows of a vocabulary shard: one row, and a batch with an odd width.
        for (rows, cols) in [(1, 96), (37, 1001)] {
            let results = run_group(world, |b| {
                let rank = b.tp_rank().rank;
                let values: Vec<f32> = (0..rows * cols).map(|i| value(rank, i)).collect();
                let x = activation(b, rows, cols, &values);
                b.to_host(&b.all_gather_cols(&x).unwrap()).unwrap()
            });
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    (0..world).flat_map(move |rank| (0..cols).map(move |c| value(rank, r * cols + c)))
                })
                .collect();
            for (rank, got) in results.iter().enumerate() {
                assert_eq!(got, &want, "TP={world} rank {rank} {rows}x{cols}");
            }
            eprintln!("all-gather TP={world} {rows}x{cols} per rank: rank-major columns on every rank");
        }
    }
}
