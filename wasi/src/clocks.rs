//! Clocks and `poll_oneoff`.
//!
//! The monotonic clock is "nanoseconds since this task started", like
//! wasmtime-wasi's, except that it starts at the snapshot's value after a
//! restore: a migrated task never sees its monotonic clock jump backwards (or
//! to another machine's boot time). Realtime is the host's wall clock.
//!
//! `poll_oneoff` follows wasmtime-wasi: a single relative clock subscription
//! is a plain sleep; otherwise fd subscriptions (files, stdio) are always
//! ready, and clock subscriptions wake when their deadline passes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::errno::{Errno, WasiResult};
use crate::memory::GuestMemory;
use crate::table::Desc;
use crate::WasiCtx;

/// A deadline that never comes (a year): for a subscription only input ends.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;
const CLOCK_PROCESS_CPUTIME: u32 = 2;
const CLOCK_THREAD_CPUTIME: u32 = 3;

const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBCLOCK_ABSTIME: u16 = 1;
const EVENTRW_HANGUP: u16 = 1;
const SUBSCRIPTION_SIZE: u32 = 48;
const EVENT_SIZE: u32 = 32;

/// The guest's monotonic clock: a base plus host time elapsed since start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MonotonicClock {
    base_ns: u64,
    start: Instant,
}

impl MonotonicClock {
    pub fn starting_at(base_ns: u64) -> Self {
        MonotonicClock {
            base_ns,
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }

    /// The host instant at which this clock reads `guest_ns`.
    fn instant_at(&self, guest_ns: u64) -> Instant {
        let now = Instant::now();
        now + Duration::from_nanos(guest_ns.saturating_sub(self.now()))
    }
}

fn realtime_ns() -> WasiResult<u64> {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Errno::OVERFLOW)?;
    Ok(u64::try_from(d.as_nanos())?)
}

fn resolution(clock: libc::clockid_t) -> WasiResult<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_getres(clock, &mut ts) } != 0 {
        return Err(Errno::from(std::io::Error::last_os_error()));
    }
    let secs = u64::try_from(ts.tv_sec)?;
    let nanos = u64::try_from(ts.tv_nsec)?;
    secs.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .ok_or(Errno::OVERFLOW)
}

/// wasmtime-wasi has no CPU-time clocks: they are `EBADF`; unknown ids
/// are `EINVAL`.
fn check_clock_id(id: u32) -> WasiResult {
    match id {
        CLOCK_REALTIME | CLOCK_MONOTONIC => Ok(()),
        CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME => Err(Errno::BADF),
        _ => Err(Errno::INVAL),
    }
}

/// One parsed `subscription`.
#[derive(Clone, Copy, Debug)]
enum Sub {
    Clock {
        id: u32,
        timeout: u64,
        abstime: bool,
    },
    FdRead(u32),
    FdWrite(u32),
}

fn read_sub(mem: &GuestMemory<'_>, at: u32) -> WasiResult<(u64, Sub)> {
    let field = |off: u32| at.checked_add(off).ok_or(Errno::FAULT);
    let userdata = mem.read_u64(at)?;
    let sub = match mem.read_u8(field(8)?)? {
        EVENTTYPE_CLOCK => {
            let id = mem.read_u32(field(16)?)?;
            let timeout = mem.read_u64(field(24)?)?;
            let flags = mem.read_u16(field(40)?)?;
            if id > CLOCK_THREAD_CPUTIME || flags & !SUBCLOCK_ABSTIME != 0 {
                return Err(Errno::INVAL);
            }
            Sub::Clock {
                id,
                timeout,
                abstime: flags & SUBCLOCK_ABSTIME != 0,
            }
        }
        EVENTTYPE_FD_READ => Sub::FdRead(mem.read_u32(field(16)?)?),
        EVENTTYPE_FD_WRITE => Sub::FdWrite(mem.read_u32(field(16)?)?),
        _ => return Err(Errno::INVAL),
    };
    Ok((userdata, sub))
}

/// Write one `event` field by field (padding untouched, as wasmtime does).
fn write_event(
    mem: &mut GuestMemory<'_>,
    at: u32,
    userdata: u64,
    kind: u8,
    nbytes: u64,
    flags: u16,
) -> WasiResult {
    mem.check(at, EVENT_SIZE)?;
    mem.write_u64(at, userdata)?;
    mem.write_u16(at + 8, 0)?; // errno: success
    mem.write_u8(at + 10, kind)?;
    mem.write_u64(at + 16, nbytes)?;
    mem.write_u16(at + 24, flags)
}

impl WasiCtx {
    pub(crate) fn clock_res_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        id: u32,
        out: u32,
    ) -> WasiResult {
        check_clock_id(id)?;
        mem.check(out, 8)?;
        let res = match id {
            CLOCK_REALTIME => resolution(libc::CLOCK_REALTIME)?,
            _ => resolution(libc::CLOCK_MONOTONIC)?,
        };
        mem.write_u64(out, res)
    }

    pub(crate) fn clock_time_get(
        &mut self,
        mem: &mut GuestMemory<'_>,
        id: u32,
        out: u32,
    ) -> WasiResult {
        check_clock_id(id)?;
        mem.check(out, 8)?;
        let now = match id {
            CLOCK_REALTIME => realtime_ns()?,
            _ => self.clock.now(),
        };
        mem.write_u64(out, now)
    }

    /// The guest's monotonic clock now, in ns (for snapshots).
    pub(crate) fn monotonic_ns(&self) -> u64 {
        self.clock.now()
    }

    /// A pause ends this sleep early: rewrite each relative clock
    /// subscription (at `at`, `left` to go) as an absolute deadline on the
    /// same clock, so that the call, run again when the task resumes, here
    /// or on another machine, sleeps only the time that was left (the
    /// monotonic clock continues across a restore). The guest never reads
    /// its subscriptions back; they are the call's input.
    fn pause_in_poll(&mut self, mem: &mut GuestMemory<'_>, left: &[(u32, Duration)]) -> WasiResult {
        for &(at, left) in left {
            let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
            let deadline = match mem.read_u32(at + 16)? {
                CLOCK_REALTIME => realtime_ns()?.saturating_add(left),
                _ => self.clock.now().saturating_add(left),
            };
            mem.write_u64(at + 24, deadline)?;
            mem.write_u16(at + 40, SUBCLOCK_ABSTIME)?;
        }
        self.paused_in_call = true;
        Ok(())
    }

    pub(crate) fn poll_oneoff(
        &mut self,
        mem: &mut GuestMemory<'_>,
        subs_ptr: u32,
        events_ptr: u32,
        nsubs: u32,
        nevents_out: u32,
    ) -> WasiResult {
        if nsubs == 0 {
            // Indefinite sleeping is not supported in preview1.
            return Err(Errno::INVAL);
        }
        mem.check(nevents_out, 4)?;
        mem.check(
            subs_ptr,
            nsubs.checked_mul(SUBSCRIPTION_SIZE).ok_or(Errno::FAULT)?,
        )?;
        mem.check(
            events_ptr,
            nsubs.checked_mul(EVENT_SIZE).ok_or(Errno::FAULT)?,
        )?;
        let mut subs = Vec::with_capacity(nsubs as usize);
        for i in 0..nsubs {
            subs.push(read_sub(mem, subs_ptr + i * SUBSCRIPTION_SIZE)?);
        }

        // wasmtime's fast path: one relative timer is just a sleep.
        if let [(
            userdata,
            Sub::Clock {
                timeout,
                abstime: false,
                ..
            },
        )] = subs[..]
        {
            let start = Instant::now();
            match self.interrupt.sleep(Duration::from_nanos(timeout)) {
                crate::Wake::Stopped => return Ok(()), // the dispatcher traps
                crate::Wake::Pause => {
                    let left = Duration::from_nanos(timeout).saturating_sub(start.elapsed());
                    return self.pause_in_poll(mem, &[(subs_ptr, left)]);
                }
                // A plain sleep waits for nothing but time.
                crate::Wake::Timeout | crate::Wake::Ready => {}
            }
            write_event(mem, events_ptr, userdata, EVENTTYPE_CLOCK, 1, 0)?;
            return mem.write_u32(nevents_out, 1);
        }

        // Work out each subscription's readiness: fds now, clocks at a deadline.
        let now = Instant::now();
        let stdin_pipe = match &self.stdin {
            crate::Stdin::Pipe(p) => Some(p.clone()),
            crate::Stdin::Reader(_) => None,
        };
        let mut deadlines: Vec<Option<Instant>> = Vec::with_capacity(subs.len());
        for &(_, sub) in &subs {
            deadlines.push(match sub {
                Sub::Clock {
                    id,
                    timeout,
                    abstime,
                } => Some(match (id, abstime) {
                    (CLOCK_MONOTONIC, true) => self.clock.instant_at(timeout),
                    (CLOCK_MONOTONIC, false) | (CLOCK_REALTIME, false) => {
                        now + Duration::from_nanos(timeout)
                    }
                    (CLOCK_REALTIME, true) => {
                        now + Duration::from_nanos(timeout.saturating_sub(realtime_ns()?))
                    }
                    _ => return Err(Errno::INVAL),
                }),
                Sub::FdRead(fd) => match self.table.get(fd)? {
                    // A pipe with nothing in it yet: ready when input comes.
                    Desc::Stdin if stdin_pipe.as_ref().is_some_and(|p| !p.ready()) => {
                        Some(now + NEVER)
                    }
                    Desc::Stdin | Desc::File(_) => None,
                    _ => return Err(Errno::BADF),
                },
                Sub::FdWrite(fd) => match self.table.get(fd)? {
                    Desc::Stdout | Desc::Stderr | Desc::File(_) => None,
                    _ => return Err(Errno::BADF),
                },
            });
        }
        let any_fd = deadlines.iter().any(Option::is_none);
        let woke = if any_fd {
            now
        } else {
            let earliest = deadlines.iter().flatten().min().copied().unwrap_or(now);
            let wait = earliest.saturating_duration_since(Instant::now());
            let input = || stdin_pipe.as_ref().is_some_and(|p| p.ready());
            let woke = self.interrupt.wait(wait, input, true);
            match woke {
                crate::Wake::Stopped => return Ok(()), // the dispatcher traps
                crate::Wake::Pause => {
                    let woke = Instant::now();
                    let left: Vec<(u32, Duration)> = subs
                        .iter()
                        .zip(&deadlines)
                        .enumerate()
                        .filter(|(_, ((_, sub), _))| {
                            matches!(sub, Sub::Clock { abstime: false, .. })
                        })
                        .filter_map(|(i, (_, d))| {
                            let at = subs_ptr + u32::try_from(i).ok()? * SUBSCRIPTION_SIZE;
                            Some((
                                at,
                                d.map_or(Duration::ZERO, |d| d.saturating_duration_since(woke)),
                            ))
                        })
                        .collect();
                    return self.pause_in_poll(mem, &left);
                }
                crate::Wake::Ready => {
                    // Input arrived: stdin subscriptions are ready now.
                    for (d, (_, sub)) in deadlines.iter_mut().zip(&subs) {
                        if let Sub::FdRead(fd) = sub {
                            if matches!(self.table.get(*fd)?, Desc::Stdin) {
                                *d = None;
                            }
                        }
                    }
                }
                crate::Wake::Timeout => {}
            }
            if woke == crate::Wake::Timeout {
                Instant::now().max(earliest)
            } else {
                Instant::now()
            }
        };

        let mut count = 0u32;
        for (&(userdata, sub), deadline) in subs.iter().zip(&deadlines) {
            if deadline.is_some_and(|d| d > woke) {
                continue;
            }
            let at = events_ptr + count * EVENT_SIZE;
            match sub {
                Sub::Clock { .. } => write_event(mem, at, userdata, EVENTTYPE_CLOCK, 0, 0)?,
                Sub::FdRead(fd) => {
                    let flags = match self.table.get(fd)? {
                        Desc::File(f) => {
                            let size = f.file.metadata().map_err(Errno::from)?.len();
                            if size.saturating_sub(f.offset) == 0 {
                                EVENTRW_HANGUP
                            } else {
                                0
                            }
                        }
                        _ => 0,
                    };
                    write_event(mem, at, userdata, EVENTTYPE_FD_READ, 1, flags)?
                }
                Sub::FdWrite(_) => write_event(mem, at, userdata, EVENTTYPE_FD_WRITE, 1, 0)?,
            }
            count += 1;
        }
        mem.write_u32(nevents_out, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_continues_from_base() {
        let c = MonotonicClock::starting_at(5_000_000_000);
        let a = c.now();
        let b = c.now();
        assert!(a >= 5_000_000_000 && b >= a);
        assert!(c.instant_at(0) <= Instant::now());
    }

    #[test]
    fn clock_ids_match_wasmtime() {
        assert_eq!(check_clock_id(CLOCK_MONOTONIC), Ok(()));
        assert_eq!(check_clock_id(CLOCK_PROCESS_CPUTIME), Err(Errno::BADF));
        assert_eq!(check_clock_id(9), Err(Errno::INVAL));
    }
}
