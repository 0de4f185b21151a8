//! Which pages of a linear memory were written since the last look, without
//! reading all of it.
//!
//! On Linux ≥ 6.7 a userfaultfd in asynchronous write-protect mode marks the
//! memory read-only in the page tables; the kernel itself resolves the first
//! write to each page (no signal, no fault message, ~1 µs) and clears the
//! mark, and one `PAGEMAP_SCAN` ioctl lists the written pages and marks
//! them again. A 64 MiB memory is scanned in well under a millisecond,
//! whatever the guest does. wasmtime uses the same scan to reset pooled
//! instances.
//!
//! Where that is unavailable (other systems, an older kernel, no permission
//! for userfaultfd) a shadow copy stands in: each round compares the memory
//! with the copy page by page, which costs a read of both but no hashing.

use wmig_proto::wire::live::PAGE_SIZE;

/// Tracks the writes to one linear memory of a paused-and-resumed task.
pub(crate) enum DirtyTracker {
    #[cfg(target_os = "linux")]
    Uffd(uffd::WriteTracker),
    Shadow(Vec<u8>),
}

impl DirtyTracker {
    /// Start tracking `memory`; every page counts as written until the
    /// first [`DirtyTracker::take`].
    pub(crate) fn start(memory: &[u8]) -> DirtyTracker {
        #[cfg(target_os = "linux")]
        match uffd::WriteTracker::new(memory) {
            Ok(t) => return DirtyTracker::Uffd(t),
            Err(e) => {
                tracing::debug!(error = %e, "userfaultfd write tracking unavailable; comparing with a copy")
            }
        }
        DirtyTracker::Shadow(memory.to_vec())
    }

    /// Which tracker runs: `pagemap` or `compare`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            DirtyTracker::Uffd(_) => "pagemap",
            DirtyTracker::Shadow(_) => "compare",
        }
    }

    /// Pages of `memory` written since the last call (or since `start`),
    /// as sorted page indices; tracking carries on from now. Pages past the
    /// tracked length (the memory grew) all count as written.
    pub(crate) fn take(&mut self, memory: &[u8], out: &mut Vec<u32>) -> std::io::Result<()> {
        out.clear();
        match self {
            #[cfg(target_os = "linux")]
            DirtyTracker::Uffd(t) => t.take(memory, out),
            DirtyTracker::Shadow(shadow) => {
                let old = shadow.len().min(memory.len());
                for (i, (now, was)) in memory[..old]
                    .chunks_exact(PAGE_SIZE)
                    .zip(shadow[..old].chunks_exact_mut(PAGE_SIZE))
                    .enumerate()
                {
                    if now != was {
                        was.copy_from_slice(now);
                        out.push(i as u32);
                    }
                }
                if memory.len() > shadow.len() {
                    let from = shadow.len() / PAGE_SIZE;
                    shadow.extend_from_slice(&memory[shadow.len()..]);
                    out.extend(from as u32..(memory.len() / PAGE_SIZE) as u32);
                }
                Ok(())
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod uffd {
    //! userfaultfd (`UFFD_FEATURE_WP_ASYNC`) + `PAGEMAP_SCAN`; the structs
    //! and numbers are those of `linux/userfaultfd.h` and `linux/fs.h`.

    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::PAGE_SIZE;

    const UFFD_API: u64 = 0xAA;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    const PAGE_IS_WRITTEN: u64 = 1 << 1;
    const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
    const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

    const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
        ((3u64 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64) as libc::c_ulong
    }

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRange {
        start: u64,
        len: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        range: UffdioRange,
        mode: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioWriteprotect {
        range: UffdioRange,
        mode: u64,
    }
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }

    const UFFDIO_API: libc::c_ulong = iowr(0xAA, 0x3F, std::mem::size_of::<UffdioApi>());
    const UFFDIO_REGISTER: libc::c_ulong = iowr(0xAA, 0x00, std::mem::size_of::<UffdioRegister>());
    const UFFDIO_WRITEPROTECT: libc::c_ulong =
        iowr(0xAA, 0x06, std::mem::size_of::<UffdioWriteprotect>());
    const PAGEMAP_SCAN: libc::c_ulong = iowr(b'f', 16, std::mem::size_of::<PmScanArg>());

    pub(crate) struct WriteTracker {
        uffd: OwnedFd,
        pagemap: File,
        base: usize,
        /// Bytes registered and write-protected.
        len: usize,
        regions: Vec<PageRegion>,
    }

    fn ioctl<T>(fd: &impl AsRawFd, request: libc::c_ulong, arg: &mut T) -> io::Result<i64> {
        // SAFETY: `arg` is the repr(C) struct `request` expects, alive for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as i64)
        }
    }

    impl WriteTracker {
        pub(crate) fn new(memory: &[u8]) -> io::Result<WriteTracker> {
            let base = memory.as_ptr() as usize;
            if !base.is_multiple_of(PAGE_SIZE) {
                return Err(io::Error::other("memory is not page-aligned"));
            }
            // SAFETY: a plain syscall; the result is checked.
            let fd =
                unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut api = UffdioApi {
                api: UFFD_API,
                features: UFFD_FEATURE_WP_ASYNC,
                ioctls: 0,
            };
            ioctl(&uffd, UFFDIO_API, &mut api)?;
            let pagemap = File::open("/proc/self/pagemap")?;
            let mut t = WriteTracker {
                uffd,
                pagemap,
                base,
                len: 0,
                regions: vec![PageRegion::default(); 256],
            };
            t.protect_to(memory.len())?;
            Ok(t)
        }

        /// Register and write-protect `[len, new_len)`.
        fn protect_to(&mut self, new_len: usize) -> io::Result<()> {
            if new_len <= self.len {
                return Ok(());
            }
            let range = || UffdioRange {
                start: (self.base + self.len) as u64,
                len: (new_len - self.len) as u64,
            };
            let mut reg = UffdioRegister {
                range: range(),
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            ioctl(&self.uffd, UFFDIO_REGISTER, &mut reg)?;
            let mut wp = UffdioWriteprotect {
                range: range(),
                mode: UFFDIO_WRITEPROTECT_MODE_WP,
            };
            ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp)?;
            self.len = new_len;
            Ok(())
        }

        pub(crate) fn take(&mut self, memory: &[u8], out: &mut Vec<u32>) -> io::Result<()> {
            if memory.as_ptr() as usize != self.base {
                return Err(io::Error::other("the memory moved"));
            }
            let tracked = self.len.min(memory.len());
            let mut start = self.base;
            let end = self.base + tracked;
            while start < end {
                let mut arg = PmScanArg {
                    size: std::mem::size_of::<PmScanArg>() as u64,
                    flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                    start: start as u64,
                    end: end as u64,
                    walk_end: 0,
                    vec: self.regions.as_mut_ptr() as u64,
                    vec_len: self.regions.len() as u64,
                    max_pages: 0,
                    category_inverted: 0,
                    category_mask: PAGE_IS_WRITTEN,
                    category_anyof_mask: 0,
                    return_mask: PAGE_IS_WRITTEN,
                };
                let n = ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg)? as usize;
                for r in &self.regions[..n.min(self.regions.len())] {
                    let first = (r.start as usize - self.base) / PAGE_SIZE;
                    let last = (r.end as usize - self.base) / PAGE_SIZE;
                    out.extend(first as u32..last as u32);
                }
                if arg.walk_end as usize <= start {
                    break;
                }
                start = arg.walk_end as usize;
            }
            if memory.len() > self.len {
                let from = self.len / PAGE_SIZE;
                self.protect_to(memory.len())?;
                out.extend(from as u32..(memory.len() / PAGE_SIZE) as u32);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page-aligned anonymous memory, as wasmtime's linear memories are.
    struct Mapping(*mut u8, usize);
    impl Mapping {
        fn new(len: usize) -> Mapping {
            // SAFETY: an anonymous private mapping; checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Mapping(p.cast(), len)
        }
        fn slice(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is ours and `len` long.
            unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
        }
    }
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping what `new` mapped.
            unsafe { libc::munmap(self.0.cast(), self.1) };
        }
    }

    fn check(tracker_for: impl Fn(&[u8]) -> DirtyTracker) {
        let mut m = Mapping::new(64 * PAGE_SIZE);
        let mem = m.slice();
        for p in (0..64).step_by(3) {
            mem[p * PAGE_SIZE] = 1;
        }
        let mut t = tracker_for(&mem[..32 * PAGE_SIZE]);
        let mut out = Vec::new();
        t.take(&mem[..32 * PAGE_SIZE], &mut out).expect("take");
        assert!(out.is_empty(), "{}: nothing written yet: {out:?}", t.kind());
        mem[5 * PAGE_SIZE + 17] = 9;
        mem[6 * PAGE_SIZE] = 9;
        mem[31 * PAGE_SIZE + 4095] = 9;
        t.take(&mem[..32 * PAGE_SIZE], &mut out).expect("take");
        assert_eq!(out, [5, 6, 31], "{}", t.kind());
        t.take(&mem[..32 * PAGE_SIZE], &mut out).expect("take");
        assert!(out.is_empty(), "{}: rounds start afresh: {out:?}", t.kind());
        // The memory grows: its new pages all count once, then only writes.
        mem[7 * PAGE_SIZE] = 3;
        t.take(&mem[..40 * PAGE_SIZE], &mut out).expect("take");
        assert_eq!(out, [7, 32, 33, 34, 35, 36, 37, 38, 39], "{}", t.kind());
        mem[39 * PAGE_SIZE] = 2;
        t.take(&mem[..40 * PAGE_SIZE], &mut out).expect("take");
        assert_eq!(out, [39], "{}", t.kind());
    }

    #[test]
    fn the_shadow_tracker_finds_exactly_the_written_pages() {
        check(|m| DirtyTracker::Shadow(m.to_vec()));
    }

    #[test]
    fn the_page_table_tracker_finds_exactly_the_written_pages() {
        let probe = Mapping::new(PAGE_SIZE);
        // SAFETY: reading the probe mapping we own.
        let ok = uffd::WriteTracker::new(unsafe { std::slice::from_raw_parts(probe.0, PAGE_SIZE) });
        if let Err(e) = ok {
            eprintln!("skipped: userfaultfd write tracking is unavailable here ({e})");
            return;
        }
        check(|m| DirtyTracker::Uffd(uffd::WriteTracker::new(m).expect("tracker")));
    }
}
