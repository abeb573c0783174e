use super::*;
use crate::local_group::LocalGroup;

const TOKEN: u64 = 0x5eed;

/// Starts a group of `world` ranks on loopback, one thread each, and runs `f` on every rank.
fn run_group<T: Send>(world: usize, timeout: Duration, f: impl Fn(TcpComm) -> T + Sync) -> Vec<T> {
    let hub = TcpHub::bind("127.0.0.1:0").unwrap();
    let addr = hub.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::scope(|s| {
        let f = &f;
        let mut handles =
            vec![s.spawn(move || f(hub.accept(world, TOKEN, timeout, deadline, TcpPoison::new()).unwrap()))];
        for rank in 1..world {
            handles.push(s.spawn(move || {
                f(tcp_connect(addr, rank, world, TOKEN, timeout, deadline, TcpPoison::new()).unwrap())
            }));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn results_are_bitwise_equal_to_the_in_process_group() {
    // Values whose float sum depends on the order, so a different order would show.
    let part = |rank: usize, round: usize| -> Vec<f32> {
        (0..257)
            .map(|i| ((i * 31 + rank * 7 + round) as f32).sin() * 10f32.powi((i % 7) as i32 - 3))
            .collect()
    };
    let tcp = run_group(4, Duration::from_secs(10), |comm| {
        (0..20)
            .map(|round| {
                let mut data = part(comm.rank(), round);
                comm.all_reduce_sum(&mut data).unwrap();
                let gathered = comm.all_gather(&part(comm.rank(), round)[..comm.rank() + 1]).unwrap();
                (data, gathered)
            })
            .collect::<Vec<_>>()
    });
    let local = LocalGroup::new(4, Duration::from_secs(10));
    let expected: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = local
            .ranks()
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    (0..20)
                        .map(|round| {
                            let mut data = part(comm.rank(), round);
                            comm.all_reduce_sum(&mut data).unwrap();
                            data
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).next().unwrap()
    });
    for rank_results in &tcp {
        for (round, (sum, gathered)) in rank_results.iter().enumerate() {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(sum), bits(&expected[round]), "round {round}");
            let want: Vec<Vec<f32>> = (0..4).map(|r| part(r, round)[..r + 1].to_vec()).collect();
            assert_eq!(gathered, &want);
        }
    }
}

#[test]
fn a_peer_that_dies_fails_every_rank_quickly() {
    let start = Instant::now();
    let results = run_group(3, Duration::from_secs(30), |comm| {
        let mut data = vec![1.0f32; 8];
        comm.all_reduce_sum(&mut data).unwrap();
        if comm.rank() == 2 {
            // Dropping the communicator closes its socket, as a killed process would.
            drop(comm);
            return Err("left".to_string());
        }
        comm.all_reduce_sum(&mut data)
    });
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    for (rank, result) in results.iter().enumerate().take(2) {
        let err = result.as_ref().unwrap_err();
        assert!(err.contains("rank"), "rank {rank}: {err}");
    }
}

#[test]
fn a_silent_peer_times_out_and_poisons_the_group() {
    let results = run_group(2, Duration::from_millis(200), |comm| {
        if comm.rank() == 1 {
            // Alive but never joins the collective; it sees the poison afterwards.
            std::thread::sleep(Duration::from_millis(600));
            return comm.all_reduce_sum(&mut [1.0]);
        }
        comm.all_reduce_sum(&mut [1.0])
    });
    let hub_err = results[0].as_ref().unwrap_err();
    assert!(hub_err.contains("deadline"), "{hub_err}");
    assert!(results[1].is_err(), "the silent rank fails once it tries");
}

#[test]
fn poison_from_another_thread_wakes_a_blocked_rank() {
    let hub = TcpHub::bind("127.0.0.1:0").unwrap();
    let addr = hub.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let peer_poison = TcpPoison::new();
    let hub_thread =
        std::thread::spawn(move || hub.accept(2, TOKEN, Duration::from_secs(60), deadline, TcpPoison::new()));
    let peer =
        tcp_connect(addr, 1, 2, TOKEN, Duration::from_secs(60), deadline, peer_poison.clone()).unwrap();
    let _hub = hub_thread.join().unwrap().unwrap();
    // The hub never joins: the peer blocks until poisoned.
    let waiting = std::thread::spawn(move || peer.all_reduce_sum(&mut [1.0]));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    peer_poison.poison("rank 1's step failed");
    let err = waiting.join().unwrap().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(err.contains("rank 1's step failed"), "{err}");
}

#[test]
fn a_peer_of_another_group_is_refused() {
    let hub = TcpHub::bind("127.0.0.1:0").unwrap();
    let addr = hub.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    let hub_thread =
        std::thread::spawn(move || hub.accept(2, TOKEN, Duration::from_secs(1), deadline, TcpPoison::new()));
    let err =
        tcp_connect(addr, 1, 2, TOKEN + 1, Duration::from_secs(1), deadline, TcpPoison::new()).err().unwrap();
    assert!(err.contains("refused"), "{err}");
    let hub_err = hub_thread.join().unwrap().err().unwrap();
    assert!(hub_err.contains("token mismatch") && hub_err.contains("ranks 1"), "{hub_err}");
}
