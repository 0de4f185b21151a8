//! The guest's stdin.
//!
//! A local `wmig run` hands the guest its own stdin: a read blocks in the
//! kernel, which is fine for a task that never moves. A cluster task's stdin
//! arrives over the network while the task runs, possibly on another
//! machine by then, so it is an [`InputPipe`] the host fills as bytes
//! arrive: a read that finds it empty waits on the task's [`Interrupt`],
//! where a cancel ends it at once and a pause (rewriter 4) unwinds from
//! inside the call with nothing consumed, so the read simply runs again
//! wherever the task resumes.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::Interrupt;

/// Where a guest's stdin bytes come from.
pub enum Stdin {
    /// A blocking reader (the process's stdin, a file, nothing at all).
    Reader(Box<dyn Read + Send>),
    /// Bytes the host delivers as they arrive (see the module docs).
    Pipe(Arc<InputPipe>),
}

impl Stdin {
    /// End of file at once: what a guest sees when it has no input.
    pub fn empty() -> Self {
        Stdin::Reader(Box::new(std::io::empty()))
    }

    pub fn reader(r: impl Read + Send + 'static) -> Self {
        Stdin::Reader(Box::new(r))
    }
}

/// A byte queue between a host that receives a task's input and the guest
/// that reads it.
#[derive(Default)]
pub struct InputPipe {
    state: Mutex<PipeState>,
    /// The reading task's interrupt, woken when bytes or EOF arrive.
    reader: Mutex<Option<Arc<Interrupt>>>,
    /// Called after the guest took bytes, so a producer holding back for
    /// [`InputPipe::buffered`] can go on.
    on_take: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

#[derive(Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    eof: bool,
}

impl InputPipe {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Append input and wake the guest if it waits for it.
    pub fn push(&self, bytes: &[u8]) {
        self.lock().bytes.extend(bytes);
        self.wake_reader();
    }

    /// No more input will come: once the queue is drained, reads return 0.
    pub fn close(&self) {
        self.lock().eof = true;
        self.wake_reader();
    }

    /// Bytes received and not yet read by the guest.
    pub fn buffered(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Call `f` whenever the guest has taken bytes.
    pub fn on_take(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.on_take.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// Whether a read would return at once (bytes or end of file).
    pub(crate) fn ready(&self) -> bool {
        let s = self.lock();
        s.eof || !s.bytes.is_empty()
    }

    /// Move up to `out.len()` bytes out: `Some(0)` at end of file, `None`
    /// if nothing has arrived yet.
    pub(crate) fn take(&self, out: &mut [u8]) -> Option<usize> {
        let n = {
            let mut s = self.lock();
            if s.bytes.is_empty() {
                return s.eof.then_some(0);
            }
            let n = out.len().min(s.bytes.len());
            for (dst, src) in out.iter_mut().zip(s.bytes.drain(..n)) {
                *dst = src;
            }
            n
        };
        if let Some(f) = &*self.on_take.lock().unwrap_or_else(|p| p.into_inner()) {
            f();
        }
        Some(n)
    }

    /// The context that reads this pipe (the last one built with it).
    pub(crate) fn attach(&self, interrupt: Arc<Interrupt>) {
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(interrupt);
    }

    fn wake_reader(&self) {
        // The reader checks `ready` under the interrupt's lock, and `notify`
        // takes that lock: bytes pushed between its check and its wait
        // still wake it.
        if let Some(i) = &*self.reader.lock().unwrap_or_else(|p| p.into_inner()) {
            i.notify();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Wake;
    use std::time::Duration;

    #[test]
    fn a_reader_waits_for_bytes_then_sees_end_of_file() {
        let pipe = InputPipe::new();
        let interrupt = Arc::new(Interrupt::default());
        pipe.attach(interrupt.clone());
        let mut buf = [0u8; 4];
        assert_eq!(pipe.take(&mut buf), None);

        let producer = pipe.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            producer.push(b"hello");
            producer.close();
        });
        // An hour, unless the push wakes it.
        let p = pipe.clone();
        assert_eq!(
            interrupt.wait(Duration::from_secs(3600), || p.ready(), false),
            Wake::Ready
        );
        t.join().expect("producer");
        assert_eq!(pipe.take(&mut buf), Some(4));
        assert_eq!(&buf, b"hell");
        assert_eq!(pipe.take(&mut buf), Some(1));
        assert_eq!(buf[0], b'o');
        assert_eq!(pipe.take(&mut buf), Some(0));
    }

    #[test]
    fn a_pause_ends_a_pausable_wait_and_not_another() {
        let interrupt = Arc::new(Interrupt::default());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        interrupt.arm_pause(flag);
        assert_eq!(
            interrupt.wait(Duration::from_secs(3600), || false, true),
            Wake::Pause
        );
        // Not pausable: the wait runs to its timeout despite the flag.
        assert_eq!(
            interrupt.wait(Duration::from_millis(30), || false, false),
            Wake::Timeout
        );
    }
}
