//! One slice of the sharded buffer: two fixed buffers behind one lock.
//!
//! Writers fill the *active* buffer. When a frame does not fit, the writer swaps: the full
//! buffer is *sealed* for the flusher and the *standby* buffer becomes active. The flusher
//! `take`s a sealed buffer (or, to honour the linger time, swaps out a partly filled active one),
//! writes and syncs it **without holding the lock**, and `restore`s it as the new standby. A
//! writer that finds the active buffer full while the other one is still with the flusher waits
//! (or, in the non-blocking modes, is told so; [`DoubleBuffer::poll_push`] registers a waker):
//! memory never grows beyond the two buffers.
//!
//! This file depends only on `std` and `crate::sync`, so that the loom test can compile it
//! against loom's primitives. For the same reason its unit tests live in `log.rs`: a test
//! module here would also be compiled into the loom binary and run outside the model.

use std::fmt;
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};

use crate::sync::{Condvar, Mutex, MutexGuard, TryLockError};

/// A double buffer: the unit of locking of a [`SpillLog`](crate::SpillLog), usable on its own.
///
/// Each frame pushed carries a *tag* (the spill log uses the record id) that must increase from
/// one push to the next; a [`Batch`] reports the last tag it holds, which is how the spill log
/// knows which waiting writers a flush covered.
///
/// ```
/// use double_buffer::{DoubleBuffer, PushMode};
///
/// let slice = DoubleBuffer::new(16);
/// slice.push(10, PushMode::Block, |frame| { frame.fill(1); (1, ()) }).unwrap();
/// // Does not fit beside the first frame: the writer swaps and carries on in the other buffer.
/// let pushed = slice.push(10, PushMode::Block, |frame| { frame.fill(2); (2, ()) }).unwrap();
/// assert!(pushed.sealed);
/// // A third frame must wait for the flusher: the non-blocking form says so.
/// assert!(slice.push(10, PushMode::Try, |frame| { frame.fill(3); (3, ()) }).is_err());
///
/// let batch = slice.take().unwrap();          // the flusher takes the sealed buffer ...
/// assert_eq!((batch.bytes(), batch.last_tag()), (&[1u8; 10][..], 1));
/// slice.restore(batch);                       // ... writes it outside the lock, gives it back
/// slice.push(10, PushMode::Try, |frame| { frame.fill(3); (3, ()) }).unwrap();
/// ```
pub struct DoubleBuffer {
    state: Mutex<State>,
    /// Signalled when a buffer comes back from the flusher or the slice shuts.
    space: Condvar,
    capacity: usize,
}

struct State {
    active: Vec<u8>,
    active_frames: u32,
    active_last: u64,
    /// The empty second buffer, when neither sealed nor with the flusher.
    standby: Option<Vec<u8>>,
    /// A full buffer waiting for the flusher.
    sealed: Option<Batch>,
    /// The tag of the last frame ever pushed.
    last_tag: u64,
    shut: bool,
    /// Tasks that found both buffers full in [`DoubleBuffer::poll_push`]: woken, like the
    /// condition variable's waiters, when a buffer comes back or the buffer shuts.
    space_wakers: Vec<Waker>,
}

/// How [`DoubleBuffer::push`] behaves when it cannot append at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// Wait for the lock and, if both buffers are full, for the flusher to return one.
    Block,
    /// Wait for the lock, but fail with [`PushError::Full`] instead of waiting for the flusher.
    Try,
    /// Fail with [`PushError::Contended`] if another thread holds the lock, and with
    /// [`PushError::Full`] if both buffers are full: used to fall over to another slice.
    Uncontended,
}

/// Why a push appended nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Both buffers are full (non-blocking modes only).
    Full,
    /// Another thread holds the lock ([`PushMode::Uncontended`] only).
    Contended,
    /// The buffer was shut ([`DoubleBuffer::shut`]).
    Shut,
    /// The frame is larger than one buffer.
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The capacity of one buffer.
        capacity: usize,
    },
    /// The tag `write` returned is not above the last one pushed: the frame was taken back out
    /// of the buffer (whatever else `write` did stays done).
    TagNotIncreasing {
        /// The tag returned.
        tag: u64,
        /// The last tag pushed.
        last: u64,
    },
}

/// What a successful push reports.
#[derive(Debug)]
#[must_use]
pub struct Pushed<T> {
    /// What the `write` closure returned.
    pub value: T,
    /// The frame is the first in its buffer (a flusher waiting for data may want to know).
    pub first_in_buffer: bool,
    /// This push sealed a full buffer for the flusher, which should be told.
    pub sealed: bool,
}

/// A buffer taken by the flusher: its bytes, frame count and last tag.
pub struct Batch {
    buf: Vec<u8>,
    frames: u32,
    last_tag: u64,
}

impl Batch {
    /// The frames, back to back.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
    /// How many frames the batch holds.
    pub fn frames(&self) -> u32 {
        self.frames
    }
    /// The tag of the last frame in the batch.
    pub fn last_tag(&self) -> u64 {
        self.last_tag
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("bytes", &self.buf.len())
            .field("frames", &self.frames)
            .field("last_tag", &self.last_tag)
            .finish()
    }
}

impl fmt::Debug for DoubleBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoubleBuffer")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl DoubleBuffer {
    /// Two buffers of `capacity` bytes each, allocated now and never again.
    pub fn new(capacity: usize) -> Self {
        DoubleBuffer {
            state: Mutex::new(State {
                active: Vec::with_capacity(capacity),
                active_frames: 0,
                active_last: 0,
                standby: Some(Vec::with_capacity(capacity)),
                sealed: None,
                last_tag: 0,
                shut: false,
                space_wakers: Vec::new(),
            }),
            space: Condvar::new(),
            capacity,
        }
    }

    /// The capacity of each of the two buffers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends one frame of `len` bytes: `write` fills the frame — it is handed exactly those
    /// `len` bytes of the buffer (zeroed), while the lock is held — and returns the frame's tag
    /// and a value passed back to the caller. Swaps buffers when the active one cannot hold the
    /// frame. `write` cannot touch other frames nor grow the buffer; a tag that does not
    /// increase is [`PushError::TagNotIncreasing`].
    pub fn push<T>(
        &self,
        len: usize,
        mode: PushMode,
        write: impl FnOnce(&mut [u8]) -> (u64, T),
    ) -> Result<Pushed<T>, PushError> {
        self.push_inner(len, mode, None, write)
    }

    /// The asynchronous form of [`PushMode::Try`]: when both buffers are full, nothing is
    /// pushed, `cx`'s waker is registered — atomically with the check, under the lock — and
    /// `Poll::Pending` is returned; the waker is woken when the flusher gives a buffer back
    /// ([`restore`](Self::restore)) or the buffer shuts. `write` is not called then: poll again
    /// with the same frame. Never waits for the flusher, only (briefly) for the lock.
    pub fn poll_push<T>(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> (u64, T),
    ) -> Poll<Result<Pushed<T>, PushError>> {
        match self.push_inner(len, PushMode::Try, Some(cx.waker()), write) {
            Err(PushError::Full) => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    /// [`push`](Self::push); with `waker`, a push that finds both buffers full registers it.
    pub(crate) fn push_inner<T>(
        &self,
        len: usize,
        mode: PushMode,
        waker: Option<&Waker>,
        write: impl FnOnce(&mut [u8]) -> (u64, T),
    ) -> Result<Pushed<T>, PushError> {
        if len > self.capacity {
            return Err(PushError::TooLarge {
                len,
                capacity: self.capacity,
            });
        }
        let mut st = match mode {
            PushMode::Uncontended => match self.state.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => return Err(PushError::Contended),
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            },
            PushMode::Block | PushMode::Try => self.lock(),
        };
        let mut sealed = false;
        loop {
            if st.shut {
                return Err(PushError::Shut);
            }
            if st.active.len() + len <= self.capacity {
                let before = st.active.len();
                // Within the capacity allocated at construction: no allocation.
                st.active.resize(before + len, 0);
                let (tag, value) = write(&mut st.active[before..]);
                if tag <= st.last_tag && st.last_tag != 0 {
                    st.active.truncate(before);
                    return Err(PushError::TagNotIncreasing {
                        tag,
                        last: st.last_tag,
                    });
                }
                st.active_frames += 1;
                st.active_last = tag;
                st.last_tag = tag;
                return Ok(Pushed {
                    value,
                    first_in_buffer: before == 0,
                    sealed,
                });
            }
            if let Some(spare) = st.standby.take() {
                // The swap: the full buffer goes to the flusher, the empty one takes writes.
                let full = std::mem::replace(&mut st.active, spare);
                st.sealed = Some(Batch {
                    buf: full,
                    frames: st.active_frames,
                    last_tag: st.active_last,
                });
                st.active_frames = 0;
                sealed = true;
                continue;
            }
            match mode {
                PushMode::Block => st = self.space.wait(st).unwrap_or_else(PoisonError::into_inner),
                PushMode::Try | PushMode::Uncontended => {
                    if let Some(w) = waker
                        && !st.space_wakers.iter().any(|x| x.will_wake(w))
                    {
                        st.space_wakers.push(w.clone());
                    }
                    return Err(PushError::Full);
                }
            }
        }
    }

    /// For the flusher: the sealed buffer if there is one, otherwise the partly filled active
    /// buffer (swapped out for the standby), otherwise `None`. At most one buffer is out at a time.
    pub fn take(&self) -> Option<Batch> {
        let mut st = self.lock();
        if let Some(batch) = st.sealed.take() {
            return Some(batch);
        }
        if st.active.is_empty() {
            return None;
        }
        let spare = st.standby.take()?;
        let partial = std::mem::replace(&mut st.active, spare);
        let batch = Batch {
            buf: partial,
            frames: st.active_frames,
            last_tag: st.active_last,
        };
        st.active_frames = 0;
        Some(batch)
    }

    /// For the flusher: gives a taken buffer back, emptied, and wakes writers waiting for room
    /// (blocked in [`push`](Self::push) or registered by [`poll_push`](Self::poll_push)).
    pub fn restore(&self, mut batch: Batch) {
        batch.buf.clear();
        let mut st = self.lock();
        debug_assert!(
            st.standby.is_none() && st.sealed.is_none(),
            "restore: a third buffer"
        );
        st.standby = Some(batch.buf);
        let wakers = std::mem::take(&mut st.space_wakers);
        drop(st);
        self.space.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether frames wait to be taken: `None` if not, `Some(true)` if a sealed (full) buffer
    /// waits, `Some(false)` if only the active buffer holds frames.
    pub fn pending(&self) -> Option<bool> {
        let st = self.lock();
        if st.sealed.is_some() {
            Some(true)
        } else if st.active.is_empty() {
            None
        } else {
            Some(false)
        }
    }

    /// The tag of the last frame pushed, 0 before the first.
    pub fn last_tag(&self) -> u64 {
        self.lock().last_tag
    }

    /// Refuses further pushes ([`PushError::Shut`]) and wakes writers waiting for room (blocked
    /// or registered). Frames already pushed can still be taken.
    pub fn shut(&self) {
        let mut st = self.lock();
        st.shut = true;
        let wakers = std::mem::take(&mut st.space_wakers);
        drop(st);
        self.space.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
