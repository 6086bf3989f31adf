//! The cap on executions handed to the backend at once, with a first-come, first-served queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Slots for running executions. A [`Slot`] frees its place when dropped, handing it straight to
/// the oldest waiter.
#[derive(Clone)]
pub struct Capacity {
    inner: Arc<Mutex<State>>,
}

struct State {
    max: usize,
    in_use: usize,
    next_waiter: u64,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// One taken place; dropping it frees the place.
pub struct Slot {
    inner: Arc<Mutex<State>>,
}

impl Capacity {
    /// Creates a capacity of `max` slots.
    pub fn new(max: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(State { max, in_use: 0, next_waiter: 0, waiters: VecDeque::new() })) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Takes a slot when one is free and no waiter is queued.
    pub fn try_acquire(&self) -> Option<Slot> {
        let mut state = self.lock();
        if state.in_use < state.max && state.waiters.is_empty() {
            state.in_use += 1;
            return Some(Slot { inner: Arc::clone(&self.inner) });
        }
        None
    }

    /// Takes a slot even beyond the cap; for executions that already run on the backend, such
    /// as the ones a restarted host reattaches to.
    pub fn force_acquire(&self) -> Slot {
        self.lock().in_use += 1;
        Slot { inner: Arc::clone(&self.inner) }
    }

    /// Waits for a slot, behind every earlier waiter. Cancel-safe: a dropped wait frees its place
    /// in the queue, or the slot it was just given.
    pub async fn acquire(&self) -> Slot {
        let receiver = {
            let mut state = self.lock();
            if state.in_use < state.max && state.waiters.is_empty() {
                state.in_use += 1;
                return Slot { inner: Arc::clone(&self.inner) };
            }
            let id = state.next_waiter;
            state.next_waiter += 1;
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back((id, sender));
            Waiter { inner: Arc::clone(&self.inner), id, receiver, granted: false }
        };
        let mut waiter = receiver;
        // The sender is only dropped after a successful send or when the waiter left the queue.
        let _ = (&mut waiter.receiver).await;
        waiter.granted = true;
        Slot { inner: Arc::clone(&self.inner) }
    }

    /// Returns the number of waiters.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Returns the number of slots in use.
    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }
}

fn lock(inner: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change under the lock completes or changes nothing, so a poisoned state is consistent.
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands a freed place to the oldest waiter still waiting, or returns it. A place above the cap
/// (taken by [`Capacity::force_acquire`]) is returned.
fn release(state: &mut State) {
    if state.in_use > state.max {
        state.in_use -= 1;
        return;
    }
    while let Some((_, sender)) = state.waiters.pop_front() {
        if sender.send(()).is_ok() {
            return;
        }
    }
    state.in_use -= 1;
}

impl Drop for Slot {
    fn drop(&mut self) {
        release(&mut lock(&self.inner));
    }
}

struct Waiter {
    inner: Arc<Mutex<State>>,
    id: u64,
    receiver: oneshot::Receiver<()>,
    granted: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut state = lock(&self.inner);
        if let Some(position) = state.waiters.iter().position(|(id, _)| *id == self.id) {
            state.waiters.remove(position);
        } else if self.receiver.try_recv().is_ok() {
            // A slot was handed over under the lock just before this wait was dropped.
            release(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_get_slots_in_order() {
        let capacity = Capacity::new(1);
        let first = capacity.try_acquire().unwrap();
        assert!(capacity.try_acquire().is_none());
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let capacity = capacity.clone();
            let order_tx = order_tx.clone();
            tokio::spawn(async move {
                let slot = capacity.acquire().await;
                order_tx.send(n).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(capacity.queued(), 3);
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(order_rx.recv().await.unwrap());
        }
        assert_eq!(order, [0, 1, 2]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(capacity.in_use(), 0);
    }

    #[tokio::test]
    async fn cancelled_wait_leaves_queue() {
        let capacity = Capacity::new(1);
        let slot = capacity.try_acquire().unwrap();
        let wait = tokio::time::timeout(Duration::from_millis(10), capacity.acquire()).await;
        assert!(wait.is_err());
        assert_eq!(capacity.queued(), 0);
        drop(slot);
        assert_eq!(capacity.in_use(), 0);
        assert!(capacity.try_acquire().is_some());
    }

    #[test]
    fn forced_slot_exceeds_cap_and_is_returned() {
        let capacity = Capacity::new(1);
        let first = capacity.force_acquire();
        let second = capacity.force_acquire();
        assert_eq!(capacity.in_use(), 2);
        assert!(capacity.try_acquire().is_none());
        drop(first);
        drop(second);
        assert_eq!(capacity.in_use(), 0);
    }
}
