//! The kernel's own record of executable mappings as processes make them: a dummy software perf
//! event on every CPU with `mmap2` records, whose ring the kernel fills synchronously inside
//! `mmap`. A library loaded, leaked through and unloaded (dlclose) between two drains is gone
//! from /proc/PID/maps before leaktrace could read it; its mapping record is not. This is how
//! `perf record` names code that was unmapped before the report.
//!
//! Owns the perf rings and their decoding; what to do with a mapping is the symbolizer's.
//! Where perf events cannot be opened, there is no watcher and /proc/PID/maps alone is read.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering, fence},
};

/// Pages of each CPU's ring (a power of two), besides its header page.
const RING_PAGES: usize = 64;

// perf_event_attr (include/uapi/linux/perf_event.h, Linux 6.18), the fields used, at
// PERF_ATTR_SIZE_VER5 (112 bytes).
const ATTR_SIZE: usize = 112;
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const FLAG_MMAP: u64 = 1 << 8;
const FLAG_MMAP2: u64 = 1 << 23;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_MMAP2: u32 = 10;
// struct perf_event_mmap_page: data_head, data_tail, data_offset, data_size.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

/// One executable mapping a process made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRecord {
    pub pid: u32,
    pub start: u64,
    pub len: u64,
    pub pgoff: u64,
    /// The path as the process sees it.
    pub path: String,
}

struct CpuRing {
    _fd: OwnedFd,
    base: *mut u8,
    len: usize,
    data_size: usize,
}

pub struct MapWatch {
    rings: Vec<CpuRing>,
    /// Records the kernel dropped because a ring was full.
    pub lost: u64,
}

impl MapWatch {
    /// A watcher on every online CPU, or None where perf events are refused (the caller goes
    /// on with /proc/PID/maps alone).
    pub fn open() -> Option<Self> {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as i32;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut rings = Vec::new();
        for cpu in 0..cpus {
            let mut attr = [0u8; ATTR_SIZE];
            attr[0..4].copy_from_slice(&PERF_TYPE_SOFTWARE.to_ne_bytes());
            attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
            attr[8..16].copy_from_slice(&PERF_COUNT_SW_DUMMY.to_ne_bytes());
            attr[40..48].copy_from_slice(&(FLAG_MMAP | FLAG_MMAP2).to_ne_bytes());
            // SAFETY: attr is a valid perf_event_attr of the size it declares.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_ptr(),
                    -1 as libc::pid_t,
                    cpu,
                    -1 as libc::c_int,
                    PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                // An offline CPU: skip it. Anything else: no watcher.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODEV) {
                    continue;
                }
                return None;
            }
            // SAFETY: a descriptor we own from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let len = page * (1 + RING_PAGES);
            // SAFETY: mapping a perf event's ring as the kernel documents (header + 2^n pages).
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            rings.push(CpuRing {
                _fd: fd,
                base: base as *mut u8,
                len,
                data_size: page * RING_PAGES,
            });
        }
        (!rings.is_empty()).then_some(MapWatch { rings, lost: 0 })
    }

    /// Every mapping recorded since the last call, per CPU in the order made.
    pub fn drain(&mut self, mut each: impl FnMut(MapRecord)) {
        for i in 0..self.rings.len() {
            let r = &self.rings[i];
            // SAFETY: the header page is mapped for the ring's life; data_head is written by
            // the kernel, data_tail by us, both u64-aligned.
            let (head_ptr, tail_ptr) = unsafe {
                (
                    &*(r.base.add(DATA_HEAD) as *const AtomicU64),
                    &*(r.base.add(DATA_TAIL) as *const AtomicU64),
                )
            };
            let head = head_ptr.load(Ordering::Acquire);
            let mut tail = tail_ptr.load(Ordering::Relaxed);
            // SAFETY: the data area follows the header page and is data_size bytes.
            let data = unsafe {
                std::slice::from_raw_parts(r.base.add(r.len - r.data_size), r.data_size)
            };
            let mut rec = Vec::new();
            while tail < head {
                let at = |off: u64| data[(off % r.data_size as u64) as usize];
                let hdr: Vec<u8> = (0..8).map(|k| at(tail + k)).collect();
                let kind = u32::from_ne_bytes(hdr[0..4].try_into().unwrap_or_default());
                let size = u16::from_ne_bytes(hdr[6..8].try_into().unwrap_or_default()) as u64;
                if size < 8 {
                    // A corrupt header: skip what is there rather than loop.
                    tail = head;
                    break;
                }
                rec.clear();
                rec.extend((0..size).map(|k| at(tail + k)));
                match kind {
                    PERF_RECORD_MMAP2 => {
                        if let Some(m) = decode_mmap2(&rec) {
                            each(m);
                        }
                    }
                    PERF_RECORD_LOST if rec.len() >= 24 => {
                        self.lost += u64::from_ne_bytes(rec[16..24].try_into().unwrap_or_default());
                    }
                    _ => {}
                }
                tail += size;
            }
            fence(Ordering::Release);
            tail_ptr.store(tail, Ordering::Release);
        }
    }
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        for r in &self.rings {
            // SAFETY: unmapping what open() mapped, once.
            unsafe { libc::munmap(r.base as *mut libc::c_void, r.len) };
        }
    }
}

/// PERF_RECORD_MMAP2: header (8), pid u32, tid u32, addr u64, len u64, pgoff u64, maj/min/ino/
/// ino_generation (24), prot u32, flags u32, filename NUL-terminated and padded.
fn decode_mmap2(rec: &[u8]) -> Option<MapRecord> {
    let u32_at = |o: usize| Some(u32::from_ne_bytes(rec.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(rec.get(o..o + 8)?.try_into().ok()?));
    let name = rec.get(72..)?;
    let end = name.iter().position(|&c| c == 0)?;
    let path = String::from_utf8_lossy(&name[..end]).into_owned();
    if !path.starts_with('/') {
        return None;
    }
    Some(MapRecord {
        pid: u32_at(8)?,
        start: u64_at(16)?,
        len: u64_at(24)?,
        pgoff: u64_at(32)?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap2_records_decode() {
        let mut rec = vec![0u8; 72];
        rec[0..4].copy_from_slice(&PERF_RECORD_MMAP2.to_ne_bytes());
        rec[8..12].copy_from_slice(&42u32.to_ne_bytes());
        rec[16..24].copy_from_slice(&0x7000u64.to_ne_bytes());
        rec[24..32].copy_from_slice(&0x1000u64.to_ne_bytes());
        rec[32..40].copy_from_slice(&0x2000u64.to_ne_bytes());
        rec.extend_from_slice(b"/lib/x.so\0\0\0\0\0\0\0");
        let m = decode_mmap2(&rec).unwrap();
        assert_eq!(
            m,
            MapRecord { pid: 42, start: 0x7000, len: 0x1000, pgoff: 0x2000, path: "/lib/x.so".into() }
        );
        // No terminator, an anonymous name, a short record: nothing.
        assert!(decode_mmap2(&rec[..78]).is_none());
        assert!(decode_mmap2(&rec[..40]).is_none());
    }

    #[test]
    fn sees_a_mapping_of_its_own() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED sees_a_mapping_of_its_own: needs root for system-wide perf events");
            return;
        }
        let mut w = MapWatch::open().expect("perf events open as root");
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        // SAFETY: mapping one page of our own executable read+exec, then unmapping it.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE, f.as_raw_fd(), 0)
        };
        assert_ne!(p, libc::MAP_FAILED);
        unsafe { libc::munmap(p, 4096) };
        let mut seen = false;
        w.drain(|m| seen |= m.pid == std::process::id() && m.start == p as u64);
        assert!(seen, "the mapping was not recorded");
    }
}
