//! The reader's hand-off of batches to the worker: a bounded queue whose sender wakes the
//! worker only after letting go of the queue's lock, and only when the worker waits.
//!
//! Why not `std::sync::mpsc::sync_channel`: its sender wakes the receiver while holding the
//! channel's waker lock, and the woken receiver takes that lock at once to unregister. On
//! this 2-vCPU host under a connect storm the worker spun there (`lock_contended`, 12 % of
//! the daemon's CPU by perf); crossbeam's channel wakes the same way.

use std::{
    collections::VecDeque,
    sync::{
        mpsc::{RecvTimeoutError, SendError, TryRecvError, TrySendError},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

struct State<T> {
    items: VecDeque<T>,
    /// The worker sleeps on `ready`: a send must wake it.
    receiver_waits: bool,
    /// The reader sleeps on `room`: a receive must wake it.
    sender_waits: bool,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    room: Condvar,
    cap: usize,
}

impl<T> Inner<T> {
    /// The lock, even after a panic elsewhere: the state is a queue and flags, each
    /// changed in one step, so a poisoned lock still guards a consistent one.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One end each; the queue holds at most `cap` items.
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_waits: false,
            sender_waits: false,
            sender_gone: false,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        cap: cap.max(1),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`, waiting for room; gives it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let mut st = self.inner.lock();
        while st.items.len() >= self.inner.cap && !st.receiver_gone {
            st.sender_waits = true;
            st = self.inner.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.sender_waits = false;
        if st.receiver_gone {
            return Err(SendError(item));
        }
        self.push(st, item);
        Ok(())
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let st = self.inner.lock();
        if st.receiver_gone {
            return Err(TrySendError::Disconnected(item));
        }
        if st.items.len() >= self.inner.cap {
            return Err(TrySendError::Full(item));
        }
        self.push(st, item);
        Ok(())
    }

    fn push(&self, mut st: MutexGuard<'_, State<T>>, item: T) {
        st.items.push_back(item);
        let wake = st.receiver_waits;
        drop(st);
        if wake {
            self.inner.ready.notify_one();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.inner.lock().sender_gone = true;
        self.inner.ready.notify_one();
    }
}

pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// The next item, waiting at most `wait`; `Disconnected` once the sender is gone and
    /// the queue is empty.
    pub fn recv_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + wait;
        let mut st = self.inner.lock();
        loop {
            if let Some(item) = self.pop(&mut st) {
                return Ok(item);
            }
            if st.sender_gone {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            st.receiver_waits = true;
            st = match self.inner.ready.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
            st.receiver_waits = false;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.inner.lock();
        match self.pop(&mut st) {
            Some(item) => Ok(item),
            None if st.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    fn pop(&self, st: &mut MutexGuard<'_, State<T>>) -> Option<T> {
        let item = st.items.pop_front()?;
        if st.sender_waits {
            // Woken with the lock still held: the sender waits on it only until our
            // caller lets go, a few instructions later. Rare: the queue was full.
            self.inner.room.notify_one();
        }
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.receiver_gone = true;
        // What was queued goes with the receiver, not with the last Arc (the sender's).
        st.items.clear();
        drop(st);
        self.inner.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_and_a_full_queue_refuses_without_waiting() {
        let (tx, rx) = bounded(2);
        tx.send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv_timeout(Duration::ZERO), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    /// Waits (at most 10 s) until the queue's state shows `f`: a test reaches the blocked
    /// or waiting state it means to test, not just a sleep that may come too early.
    fn until<T>(inner: &Inner<T>, f: impl Fn(&State<T>) -> bool) {
        let at = Instant::now();
        while !f(&inner.lock()) {
            assert!(
                at.elapsed() < Duration::from_secs(10),
                "state never reached"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_blocked_send_goes_through_once_the_worker_takes_one() {
        let (tx, rx) = bounded(1);
        tx.send(0).unwrap();
        let inner = tx.inner.clone();
        let t = std::thread::spawn(move || {
            for i in 1..=100 {
                tx.send(i).unwrap();
            }
        });
        until(&inner, |s| s.sender_waits);
        // A lost wakeup of the sender shows as a receive that times out.
        let got: Vec<i32> = (0..=100)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, (0..=100).collect::<Vec<_>>());
        t.join().unwrap();
        // The sender is gone and the queue empty.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn a_waiting_worker_is_woken_by_a_send_and_sees_the_sender_go() {
        let (tx, rx) = bounded::<u32>(4);
        let inner = tx.inner.clone();
        // A lost wakeup would show as a wait that ran to its 30 s timeout.
        let t = std::thread::spawn(move || {
            let at = Instant::now();
            let first = rx.recv_timeout(Duration::from_secs(30));
            let end = rx.recv_timeout(Duration::from_secs(30));
            (first, end, at.elapsed())
        });
        until(&inner, |s| s.receiver_waits);
        tx.send(7).unwrap();
        // Waiting again, for what comes after 7: the drop must wake it.
        until(&inner, |s| s.items.is_empty() && s.receiver_waits);
        drop(tx);
        let (first, end, took) = t.join().unwrap();
        assert_eq!(first, Ok(7));
        assert_eq!(end, Err(RecvTimeoutError::Disconnected));
        assert!(took < Duration::from_secs(15), "woken late: {took:?}");
    }

    #[test]
    fn a_send_to_a_gone_worker_gives_the_item_back_even_when_full() {
        let (tx, rx) = bounded(1);
        tx.send(1).unwrap();
        let inner = tx.inner.clone();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(tx.send(2)));
        until(&inner, |s| s.sender_waits);
        drop(rx);
        // Never woken, the sender would block for good: bounded, so the test fails instead.
        let r = result.recv_timeout(Duration::from_secs(10));
        assert_eq!(r, Ok(Err(SendError(2))));
    }
}
