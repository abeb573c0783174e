//! An in-process tensor-parallel group: ranks are threads of one process that meet at a shared
//! exchange. Every collective has a deadline, and a group can be poisoned (by a rank that failed),
//! so a dead or stuck peer turns into an error on every other rank instead of a hang.

use crate::collective::Collective;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The group; `ranks()` hands out one `LocalComm` per rank.
pub struct LocalGroup {
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Completed collectives; a rank waiting on collective `g` wakes when this passes `g`.
    generation: u64,
    deposits: Vec<Option<Vec<f32>>>,
    arrived: usize,
    /// Every rank's deposit of the last completed collective, in rank order. It stays until the
    /// next one completes, which needs every rank, so no rank can miss it.
    last: Arc<Vec<Vec<f32>>>,
    poisoned: Option<String>,
}

impl LocalGroup {
    /// A group of `world` ranks whose collectives fail after `timeout` without all peers.
    pub fn new(world: usize, timeout: Duration) -> Self {
        assert!(world >= 1, "a group has at least one rank");
        let state = State {
            generation: 0,
            deposits: vec![None; world],
            arrived: 0,
            last: Arc::new(Vec::new()),
            poisoned: None,
        };
        LocalGroup {
            shared: Arc::new(Shared { world, timeout, state: Mutex::new(state), changed: Condvar::new() }),
        }
    }

    pub fn ranks(&self) -> Vec<LocalComm> {
        (0..self.shared.world).map(|rank| LocalComm { rank, shared: self.shared.clone() }).collect()
    }
}

/// One rank's handle on a `LocalGroup`.
#[derive(Clone)]
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    /// Makes every current and future collective of the group fail with `reason`.
    pub fn poison(&self, reason: &str) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.poisoned.get_or_insert_with(|| reason.to_string());
        self.shared.changed.notify_all();
    }

    /// Deposits `data` and waits until every rank has; returns all deposits in rank order.
    fn exchange(&self, data: &[f32], op: &str) -> Result<Arc<Vec<Vec<f32>>>, String> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &state.poisoned {
            return Err(format!("group is failed: {reason}"));
        }
        let generation = state.generation;
        assert!(state.deposits[self.rank].is_none(), "rank {} entered {op} twice", self.rank);
        state.deposits[self.rank] = Some(data.to_vec());
        state.arrived += 1;
        if state.arrived == self.shared.world {
            let deposits =
                state.deposits.iter_mut().map(|d| d.take().expect("every rank deposited")).collect();
            state.last = Arc::new(deposits);
            state.arrived = 0;
            state.generation += 1;
            self.shared.changed.notify_all();
            return Ok(state.last.clone());
        }
        let deadline = Instant::now() + self.shared.timeout;
        while state.generation == generation {
            if let Some(reason) = &state.poisoned {
                return Err(format!("group is failed: {reason}"));
            }
            let now = Instant::now();
            if now >= deadline {
                let reason = format!(
                    "rank {} waited {} ms for its peers in {op}",
                    self.rank,
                    self.shared.timeout.as_millis()
                );
                state.poisoned.get_or_insert_with(|| reason.clone());
                self.shared.changed.notify_all();
                return Err(reason);
            }
            state =
                self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(state.last.clone())
    }
}

impl Collective for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), String> {
        let all = self.exchange(data, "all_reduce")?;
        // Summing in rank order on every rank gives bitwise identical results everywhere.
        data.fill(0.0);
        for part in all.iter() {
            assert_eq!(part.len(), data.len(), "all_reduce of different lengths across ranks");
            data.iter_mut().zip(part).for_each(|(d, p)| *d += p);
        }
        Ok(())
    }

    fn all_gather(&self, data: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        Ok(self.exchange(data, "all_gather")?.as_ref().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_ranks<T: Send>(comms: Vec<LocalComm>, f: impl Fn(LocalComm) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = comms.into_iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_and_gather_over_four_threads_many_times() {
        let group = LocalGroup::new(4, Duration::from_secs(10));
        let results = run_ranks(group.ranks(), |comm| {
            let mut sums = Vec::new();
            for round in 0..200 {
                let mut data = vec![comm.rank() as f32 + round as f32, 1.0];
                comm.all_reduce_sum(&mut data).unwrap();
                sums.push(data);
                let gathered = comm.all_gather(&[comm.rank() as f32]).unwrap();
                assert_eq!(gathered, vec![vec![0.0], vec![1.0], vec![2.0], vec![3.0]]);
            }
            sums
        });
        for sums in &results {
            for (round, data) in sums.iter().enumerate() {
                assert_eq!(data, &vec![6.0 + 4.0 * round as f32, 4.0]);
            }
        }
    }

    #[test]
    fn a_missing_peer_times_out_and_poisons_the_group() {
        let group = LocalGroup::new(2, Duration::from_millis(100));
        let comms = group.ranks();
        let start = Instant::now();
        let err = comms[0].all_reduce_sum(&mut [1.0]).unwrap_err();
        assert!(err.contains("waited 100 ms"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let err = comms[1].all_reduce_sum(&mut [1.0]).unwrap_err();
        assert!(err.contains("group is failed"), "{err}");
    }

    #[test]
    fn poisoning_wakes_a_waiting_rank() {
        let group = LocalGroup::new(2, Duration::from_secs(60));
        let comms = group.ranks();
        let waiter = comms[0].clone();
        let handle = std::thread::spawn(move || waiter.all_gather(&[1.0]));
        std::thread::sleep(Duration::from_millis(50));
        comms[1].poison("rank 1 panicked");
        let err = handle.join().unwrap().unwrap_err();
        assert!(err.contains("rank 1 panicked"), "{err}");
    }
}
