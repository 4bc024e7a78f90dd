//! The turn order of a pool's keys, per model, at a cost that does not grow with the pool.
//!
//! Stride scheduling: each key has a *pass* (its next turn on a virtual clock) and advances by
//! `STRIDE / weight` each time it serves, so over any run a key of weight 2 serves twice as often
//! as one of weight 1, evenly interleaved (ties go to the key listed first). Per model:
//!
//! - `ready`: the keys believed to have headroom, smallest pass first. A pick pops the first and
//!   asks the store to admit (and count) the request on that key alone.
//! - `waiting`: keys the store answered "not until `t`" (at a limit, resting), earliest first.
//!   A pick first moves those whose time has come back to `ready`, at the current virtual time
//!   (a key that was away gets no burst of turns to catch up).
//! - keys the store answered "never" (invalid, disabled) are dropped from both until the store's
//!   [`generation`](super::KeyStateStore::generation) changes (an operator enabled a key, another
//!   replica's state arrived), which rebuilds the model's queues from every enabled key.
//!
//! A replay's pick (keys already tried excluded) moves the excluded keys back by the step of
//! the key it picked, so relative to them that turn was free (as in smooth weighted round robin,
//! where excluded keys sit out the round): a key that keeps failing is tried first only for its
//! share of requests.
//!
//! So a pick looks at one key when it has headroom, and each key without headroom is looked at
//! once per time it runs out, however many keys the pool has.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, HashMap};

use tokio::time::Instant;

use super::{Admission, PickError};

/// The virtual time a key of weight 1 advances per turn.
const STRIDE: u128 = 1 << 32;
/// Models with a queue at most; a client inventing model names cannot grow this past it (the
/// queues are then rebuilt on first use, which only costs fairness for one turn).
const MAX_MODELS: usize = 256;

/// Every model's queues for one pool.
#[derive(Debug)]
pub(super) struct Queues {
    /// Per key, in pool order: enabled in the config, and its stride.
    keys: Vec<(bool, u128)>,
    by_model: HashMap<Box<str>, ModelQueue, foldhash::fast::RandomState>,
    /// Keys set aside during one pick (excluded by the caller), put back at its end.
    skipped: Vec<(u128, usize)>,
}

#[derive(Debug)]
struct ModelQueue {
    /// The store's generation this queue was built at; `None`: rebuilt on every pick.
    generation: Option<u64>,
    /// Per key: its pass.
    pass: Vec<u128>,
    /// The pass at which the last key served.
    now: u128,
    ready: BinaryHeap<Reverse<(u128, usize)>>,
    waiting: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Queues {
    /// Queues for keys given as `(enabled, weight)`, in pool order.
    pub(super) fn new(keys: Vec<(bool, u64)>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|(enabled, w)| (enabled, STRIDE / u128::from(w.max(1))))
                .collect(),
            by_model: HashMap::default(),
            skipped: Vec::new(),
        }
    }

    /// The next key for `model` that `admit` takes: `admit(i, now)` is `None` to skip key `i`
    /// for this pick (already tried), else the store's answer (the request counted on `Yes`).
    /// `generation` is the store's (see [`super::KeyStateStore::generation`]).
    pub(super) fn pick(
        &mut self,
        model: &str,
        generation: Option<u64>,
        now: Instant,
        excluded: &[usize],
        mut admit: impl FnMut(usize, Instant) -> Option<Admission>,
    ) -> Result<usize, PickError> {
        if !self.by_model.contains_key(model) && self.by_model.len() >= MAX_MODELS {
            self.by_model.clear();
        }
        let keys = &self.keys;
        let q = match self.by_model.get_mut(model) {
            Some(q) => q,
            None => self
                .by_model
                .entry(model.into())
                .or_insert_with(|| ModelQueue::new(keys.len())),
        };
        if q.generation.is_none() || q.generation != generation {
            q.rebuild(keys, generation);
        }
        while let Some(&Reverse((t, i))) = q.waiting.peek() {
            if t > now {
                break;
            }
            q.waiting.pop();
            q.pass[i] = q.pass[i].max(q.virtual_now());
            q.ready.push(Reverse((q.pass[i], i)));
        }
        let mut picked = None;
        // The first key is looked at in place: one that serves gets its next pass there (one
        // sift down, not a pop and a push); only one that cannot serve leaves `ready`.
        while let Some(mut first) = q.ready.peek_mut() {
            let Reverse((pass, i)) = *first;
            if pass < q.pass[i] {
                // Moved back by a replay's pick (below) since it was queued.
                *first = Reverse((q.pass[i], i));
                continue;
            }
            match admit(i, now) {
                None => {
                    PeekMut::pop(first);
                    self.skipped.push((pass, i));
                }
                Some(Admission::Yes) => {
                    q.now = pass;
                    q.pass[i] = pass + keys[i].1;
                    *first = Reverse((q.pass[i], i));
                    drop(first);
                    // A replay (the caller excluded keys already tried) moves those keys back
                    // by the same step: relative to them the turn was free, so a failing key is
                    // still tried first for only its share of requests.
                    for &e in excluded {
                        if e != i && e < q.pass.len() {
                            q.pass[e] += keys[i].1;
                        }
                    }
                    picked = Some(i);
                    break;
                }
                Some(Admission::NotUntil(t)) => {
                    PeekMut::pop(first);
                    q.waiting.push(Reverse((t, i)));
                }
                // Back when the store's generation changes.
                Some(Admission::Never) => {
                    PeekMut::pop(first);
                }
            }
        }
        let skipped = &self.skipped;
        let result = match picked {
            Some(i) => Ok(i),
            None => {
                // Only when no key can serve: the earliest one that is not skipped.
                let earliest = q
                    .waiting
                    .iter()
                    .filter(|Reverse((_, i))| !skipped.iter().any(|(_, s)| s == i))
                    .map(|Reverse((t, _))| *t)
                    .min();
                match earliest {
                    Some(t) => Err(PickError::Exhausted {
                        retry_after: t.saturating_duration_since(now),
                    }),
                    None => Err(PickError::NoUsableKey),
                }
            }
        };
        for (pass, i) in self.skipped.drain(..) {
            q.ready.push(Reverse((pass, i)));
        }
        result
    }
}

impl ModelQueue {
    fn new(n: usize) -> Self {
        Self {
            generation: None,
            pass: vec![0; n],
            now: 0,
            ready: BinaryHeap::with_capacity(n),
            waiting: BinaryHeap::new(),
        }
    }

    /// The next turn: the first ready key's pass (else the last key's that served). A key that
    /// comes back joins at it.
    fn virtual_now(&self) -> u128 {
        self.ready
            .peek()
            .map_or(self.now, |Reverse((pass, _))| *pass)
    }

    /// Every enabled key back in `ready` (at the current virtual time at the earliest).
    fn rebuild(&mut self, keys: &[(bool, u128)], generation: Option<u64>) {
        self.generation = generation;
        self.waiting.clear();
        let now = self.virtual_now();
        let pass = &mut self.pass;
        let ready: Vec<_> = keys
            .iter()
            .enumerate()
            .filter(|(_, (enabled, _))| *enabled)
            .map(|(i, _)| {
                pass[i] = pass[i].max(now);
                Reverse((pass[i], i))
            })
            .collect();
        self.ready = BinaryHeap::from(ready);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A pool of `n` keys of weight 1 where key 0 has no headroom until `back`, counting how
    /// often the store is asked.
    #[tokio::test(start_paused = true)]
    async fn a_pick_asks_about_one_key_whatever_the_pool_size() {
        for n in [3usize, 1000] {
            let mut q = Queues::new(vec![(true, 1); n]);
            let start = Instant::now();
            let back = start + Duration::from_secs(10);
            let mut asked = 0;
            let mut served = vec![0u32; n];
            for round in 0..(3 * n) {
                let now = start + Duration::from_millis(round as u64);
                let i = q
                    .pick("m", Some(1), now, &[], |i, now| {
                        asked += 1;
                        Some(if i == 0 && now < back {
                            Admission::NotUntil(back)
                        } else {
                            Admission::Yes
                        })
                    })
                    .unwrap();
                served[i] += 1;
            }
            // Key 0 is asked once, then waits; every other pick asks one key.
            assert_eq!(asked, 3 * n + 1, "{n} keys");
            assert_eq!(served[0], 0);
            let (min, max) = (served[1..].iter().min(), served[1..].iter().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "{n} keys: {served:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_back_from_waiting_takes_its_turn_without_catching_up() {
        let mut q = Queues::new(vec![(true, 1), (true, 1)]);
        let start = Instant::now();
        let back = start + Duration::from_secs(1);
        let mut picks = Vec::new();
        for s in 0..20u64 {
            let now = start + Duration::from_millis(100 * s);
            picks.push(
                q.pick("m", Some(1), now, &[], |i, now| {
                    Some(if i == 0 && now < back {
                        Admission::NotUntil(back)
                    } else {
                        Admission::Yes
                    })
                })
                .unwrap(),
            );
        }
        // Until 1 s only key 1; then they alternate, with no run of key 0.
        assert!(picks[..10].iter().all(|&i| i == 1), "{picks:?}");
        assert!(picks[10..].windows(2).all(|w| w[0] != w[1]), "{picks:?}");
    }

    #[test]
    fn a_key_answered_never_comes_back_when_the_generation_changes() {
        let mut q = Queues::new(vec![(true, 1), (true, 1)]);
        let now = Instant::now();
        let mut invalid = true;
        let pick = |q: &mut Queues, generation, invalid: bool| {
            q.pick("m", Some(generation), now, &[], |i, _| {
                Some(if i == 0 && invalid {
                    Admission::Never
                } else {
                    Admission::Yes
                })
            })
            .unwrap()
        };
        assert_eq!(
            (0..4).map(|_| pick(&mut q, 1, invalid)).collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        invalid = false;
        // Same generation: the store was not asked about key 0 again.
        assert_eq!(pick(&mut q, 1, invalid), 1);
        let after: Vec<usize> = (0..4).map(|_| pick(&mut q, 2, invalid)).collect();
        assert_eq!(after.iter().filter(|&&i| i == 0).count(), 2, "{after:?}");
    }

    #[test]
    fn no_key_without_headroom_says_when_the_first_one_has_some() {
        let mut q = Queues::new(vec![(true, 1), (true, 1), (false, 1)]);
        let now = Instant::now();
        let got = q.pick("m", None, now, &[], |i, now| {
            Some(Admission::NotUntil(
                now + Duration::from_secs(10 + i as u64),
            ))
        });
        assert_eq!(
            got,
            Err(PickError::Exhausted {
                retry_after: Duration::from_secs(10)
            })
        );
        // Key 0 skipped (already tried): key 1's time.
        let got = q.pick("m", None, now, &[], |i, now| {
            (i != 0).then(|| Admission::NotUntil(now + Duration::from_secs(10 + i as u64)))
        });
        assert_eq!(
            got,
            Err(PickError::Exhausted {
                retry_after: Duration::from_secs(11)
            })
        );
        let got = q.pick("m", None, now, &[], |_, _| Some(Admission::Never));
        assert_eq!(got, Err(PickError::NoUsableKey));
    }

    #[test]
    fn a_key_that_keeps_failing_is_tried_first_for_only_its_share_of_requests() {
        // Two keys of weight 1; key 0 fails every time, so each request it gets first is
        // replayed with key 0 excluded.
        let mut q = Queues::new(vec![(true, 1), (true, 1)]);
        let now = Instant::now();
        let mut first_on_key0 = 0;
        for _ in 0..10 {
            let i = q
                .pick("m", None, now, &[], |_, _| Some(Admission::Yes))
                .unwrap();
            if i == 0 {
                first_on_key0 += 1;
                let j = q
                    .pick("m", None, now, &[0], |i, _| {
                        (i != 0).then_some(Admission::Yes)
                    })
                    .unwrap();
                assert_eq!(j, 1);
            }
        }
        assert_eq!(first_on_key0, 5, "every other request, as without failures");
    }
}
