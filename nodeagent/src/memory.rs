//! Giving back the pages of the agent's own code that it does not run all the time:
//! once start-up is done, then (in the static build, which lays that code out) every
//! minute.
//!
//! The agent parses its arguments, reads and validates its config, restores its state,
//! sets up TLS and logging, starts its processes and announces itself once; the code
//! all that ran stays resident for the agent's whole life unless given back, because
//! each page fault of a file mapping maps up to 64 KiB around it and the kernel reads
//! ahead of it. The same holds for the code of each command served. The calls below are
//! advice to the kernel: they change nothing the agent can observe but its resident
//! size, and a page needed again comes back on its next touch. What the idle agent runs
//! all the time is laid out together in the static build (scripts/link-hot.sh), between
//! `hot_code_start` and `hot_code_end`: after the first page-out those pages stay,
//! so the idle agent reads nothing back from disk.

use std::ffi::c_void;
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use nix::sys::mman::{madvise, MmapAdvise};

/// How long after start-up (commands served, processes started, the first announcement
/// sent) the agent first gives its code back: the start-up work that runs in tasks of
/// its own (the first spawns, the first heartbeat and stats sample) is over by then.
pub const AFTER_START: Duration = Duration::from_secs(2);

/// How often the agent gives its code back after that: the code it ran once since (a
/// command served, a reconnection, the end of start-up tasks) goes back too, and the
/// code it runs all the time comes back at its next touch.
pub const EVERY: Duration = Duration::from_secs(60);

/// Waits [`AFTER_START`], then pages the agent's code and read-only data out
/// ([`page_out_own_code`]), and again every [`EVERY`] its code outside the hot span,
/// in a build that laid the hot code out (the static one, scripts/link-hot.sh).
/// In this task, not on a blocking thread: it is about 2 ms of system calls a minute,
/// and a thread started for it and ending would itself leave code resident.
pub async fn give_back_code() {
    tokio::time::sleep(AFTER_START).await;
    page_out_own_code(None);
    let Some(hot) = hot_code() else {
        // Without the layout the code the agent runs lies scattered over the whole
        // binary: paging it out again would only have it read back from disk.
        return;
    };
    loop {
        tokio::time::sleep(EVERY).await;
        page_out_own_code(Some(hot));
    }
}

/// Asks the kernel to reclaim now (`madvise(MADV_PAGEOUT)`, Linux 5.4 and later) the
/// resident pages of the agent's own executable: its read-only mappings of the file
/// /proc/self/exe points to (code, read-only data, unwind tables, the relocations the
/// dynamic linker read once), or with `keep` its code outside that span. The
/// kernel's reclaim would take them under memory pressure anyway; done early, it takes
/// the pages only start-up used (argument parsing, the config's parser and checks, TLS
/// and logging set-up, the state restore) or a command used, and the pages the running
/// agent touches again come back at their next touch, from the page cache or the disk.
/// The file's pages then left in the page cache and mapped by no process are dropped
/// (`POSIX_FADV_DONTNEED`), so that the next fault nearby does not map them back.
///
/// The kernel reclaims only pages no other process maps: with several agents of the
/// same binary on a host, the pages they share stay resident (each counts once in
/// memory, and in every agent's RSS). On kernels without MADV_PAGEOUT (EINVAL) it does
/// nothing.
///
/// `keep` is `None` the first time: everything goes, the hot code too, because
/// start-up read the file in large blocks (folios), which the kernel cannot reclaim in
/// part while the hot part stays mapped; the hot pages come back a few at a time. Every
/// later time it is the hot span ([`hot_code`]), left resident with the read-only data:
/// the data the agent reads all the time lies scattered (tables of the allocator, the
/// formatter, the JSON writer), and what it has read once since start-up is a few
/// pages.
pub fn page_out_own_code(keep: Option<(usize, usize)>) {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return;
    };
    let mut bytes = 0usize;
    let pieces = exe_mappings(&maps, &exe, STATIC_MUSL)
        .into_iter()
        .filter(|m| m.code || keep.is_none())
        .flat_map(|m| outside(m, keep));
    for Mapping { start, len, code } in pieces {
        let Some(addr) = NonNull::new(std::ptr::without_provenance_mut::<c_void>(start)) else {
            continue;
        };
        #[allow(unsafe_code)]
        // SAFETY: [start, start + len) is a read-only, file-backed mapping of this
        // process, page-aligned, as /proc/self/maps lists it; nothing in the agent
        // unmaps its own executable (were it gone, madvise fails with ENOMEM).
        // MADV_RANDOM and MADV_PAGEOUT are advice: they change when pages are read and
        // reclaimed, never what the program reads at an address: a reclaimed page is
        // read back from the same file at its next touch.
        let done = unsafe {
            // Read-only data is read a page at a time from now on, not with the 128
            // KiB or more around it (the kernel ignores this advice for code).
            let random = if code {
                Ok(())
            } else {
                madvise(addr, len, MmapAdvise::MADV_RANDOM)
            };
            random.and_then(|()| madvise(addr, len, MmapAdvise::MADV_PAGEOUT))
        };
        if let Err(e) = done {
            // EINVAL: a kernel older than 5.4. Nothing to do either way.
            tracing::debug!("memory: madvise(MADV_PAGEOUT): {e}");
            return;
        }
        bytes = bytes.saturating_add(len);
    }
    // The pages of the file that start-up read ahead but never touched stay in the page
    // cache, where the next fault nearby would map them (fault-around): drop those no
    // process maps.
    if let Ok(file) = std::fs::File::open(&exe) {
        let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
        if let Err(e) = nix::fcntl::posix_fadvise(&file, 0, 0, advice) {
            tracing::debug!("memory: posix_fadvise(DONTNEED): {e}");
        }
    }
    tracing::debug!(bytes, "memory: own code paged out");
}

/// Whether this is the static musl build (`x86_64-unknown-linux-musl`, crt-static):
/// there, GNU ld puts the read-only data (.rodata, unwind tables, .gcc_except_table)
/// after the code (LLD puts it before), and nothing makes a read-only mapping of
/// relocated data: musl's static start-up relocates .data.rel.ro in place and leaves it
/// in the writable mapping.
const STATIC_MUSL: bool = cfg!(all(target_env = "musl", target_feature = "crt-static"));

/// The first function of the code the agent runs all the time, when the build laid
/// that code out together: scripts/link-hot.sh places it first, then the functions of
/// nodeagent/hot-code.txt, then [`hot_code_end`]. Without that layout the
/// two lie wherever the linker puts them, most likely side by side. They return
/// different values so that no optimisation merges them into one.
#[inline(never)]
fn hot_code_start() -> u32 {
    0x686f_7431
}

/// The function after the code the agent runs all the time: see
/// [`hot_code_start`].
#[inline(never)]
fn hot_code_end() -> u32 {
    0x686f_7432
}

/// The span the hot code may take: the idle agent's functions take about 230 KiB. Two
/// markers nearer (side by side) or further apart than this were not laid out by the
/// link.
const HOT_MIN: usize = 16 << 10;
const HOT_MAX: usize = 2 << 20;

/// The pages of the code the agent runs all the time, [start, end) page-aligned, when
/// the build laid it out together (the markers around it in order, between
/// [`HOT_MIN`] and [`HOT_MAX`] apart). Paging those out would only make the agent read
/// them back from disk at its next tick.
fn hot_code() -> Option<(usize, usize)> {
    let start = hot_code_start as fn() -> u32 as usize;
    let end = hot_code_end as fn() -> u32 as usize;
    hot_span(start, end)
}

fn hot_span(start: usize, end: usize) -> Option<(usize, usize)> {
    const PAGE: usize = 4096;
    if end <= start || !(HOT_MIN..=HOT_MAX).contains(&(end - start)) {
        return None;
    }
    let end = end.checked_add(PAGE)? & !(PAGE - 1);
    Some((start & !(PAGE - 1), end))
}

/// The parts of `m` outside `hot` (code mappings only: data is never skipped).
fn outside(m: Mapping, hot: Option<(usize, usize)>) -> Vec<Mapping> {
    let Some((lo, hi)) = hot.filter(|_| m.code) else {
        return vec![m];
    };
    let end = m.start.saturating_add(m.len);
    if hi <= m.start || lo >= end {
        return vec![m];
    }
    let mut out = vec![];
    if lo > m.start {
        out.push(Mapping {
            start: m.start,
            len: lo - m.start,
            code: true,
        });
    }
    if hi < end {
        out.push(Mapping {
            start: hi,
            len: end - hi,
            code: true,
        });
    }
    out
}

/// A read-only mapping of the agent's executable.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    len: usize,
    /// Executable (code), not data.
    code: bool,
}

/// The mappings of the file `exe` in /proc/self/maps text `maps` that hold its pages as
/// they are in the file: (start address, length), the read-only ones up to the last
/// code mapping (headers, relocations, read-only data, unwind tables, code), and with
/// `static_exe` the read-only ones after it too. In a dynamically linked executable,
/// the read-only mapping after the code is the data the dynamic linker relocated
/// (RELRO); in a static one ([`STATIC_MUSL`]) it is the file's read-only data. The
/// writable ones are .data and .bss (and a static executable's relocated data): their
/// pages are private copies, which reclaim would write to swap; they are left alone.
fn exe_mappings(maps: &str, exe: &Path, static_exe: bool) -> Vec<Mapping> {
    let exe = exe.as_os_str().to_string_lossy();
    let mut out = vec![];
    let mut past_code = false;
    for line in maps.lines() {
        // start-end perms offset dev inode path (the path may hold spaces)
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(_), Some(_), Some(_), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if path.trim_start() != exe {
            continue;
        }
        let code = perms.starts_with("r-x");
        if past_code && !code && !static_exe {
            continue;
        }
        past_code = code;
        if !code && !perms.starts_with("r--") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if end > start {
            out.push(Mapping {
                start,
                len: end - start,
                code,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro(start: usize, len: usize, code: bool) -> Mapping {
        Mapping { start, len, code }
    }

    #[test]
    fn only_the_file_pages_of_the_executable_are_chosen() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:00 42    /usr/bin/nodeagent
55d0c0100000-55d0c0500000 r-xp 00100000 fe:00 42    /usr/bin/nodeagent
55d0c0500000-55d0c0600000 r--p 00500000 fe:00 42    /usr/bin/nodeagent
55d0c0600000-55d0c0610000 rw-p 00600000 fe:00 42    /usr/bin/nodeagent
55d0c0610000-55d0c0620000 rw-p 00000000 00:00 0 
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7    /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 r-xp 00000000 fe:00 43    /usr/bin/nodeagent-old
";
        let got = exe_mappings(maps, Path::new("/usr/bin/nodeagent"), false);
        assert_eq!(
            got,
            vec![
                ro(0x55d0_c000_0000, 0x10_0000, false),
                ro(0x55d0_c010_0000, 0x40_0000, true)
            ]
        );
    }

    #[test]
    fn a_static_executable_gives_its_read_only_data_after_the_code_too() {
        // A static-pie musl build: headers and relocations, code, then .rodata and the
        // unwind tables; the relocated data stays in the writable mapping.
        let maps = "\
7fa352e00000-7fa352e53000 r--p 00000000 fe:00 42    /usr/bin/nodeagent
7fa352e53000-7fa353259000 r-xp 00053000 fe:00 42    /usr/bin/nodeagent
7fa353259000-7fa353411000 r--p 00459000 fe:00 42    /usr/bin/nodeagent
7fa353411000-7fa353456000 rw-p 00610000 fe:00 42    /usr/bin/nodeagent
7fa353456000-7fa353458000 rw-p 00000000 00:00 0 
";
        let got = exe_mappings(maps, Path::new("/usr/bin/nodeagent"), true);
        assert_eq!(
            got,
            vec![
                ro(0x7fa3_52e0_0000, 0x5_3000, false),
                ro(0x7fa3_52e5_3000, 0x40_6000, true),
                ro(0x7fa3_5325_9000, 0x1b_8000, false)
            ]
        );
    }

    #[test]
    fn the_hot_code_is_left_out_of_the_code_mapping_only() {
        let hot = hot_span(0x10_0100, 0x13_8000);
        assert_eq!(hot, Some((0x10_0000, 0x13_9000)));
        assert_eq!(
            outside(ro(0xf_0000, 0x10_0000, true), hot),
            vec![ro(0xf_0000, 0x1_0000, true), ro(0x13_9000, 0xb_7000, true)]
        );
        // Hot code at the very start of the mapping, data beside it, a mapping away.
        assert_eq!(
            outside(ro(0x10_0000, 0x4_0000, true), hot),
            vec![ro(0x13_9000, 0x7000, true)]
        );
        assert_eq!(
            outside(ro(0x10_0000, 0x4_0000, false), hot),
            vec![ro(0x10_0000, 0x4_0000, false)]
        );
        assert_eq!(
            outside(ro(0x20_0000, 0x1000, true), hot),
            vec![ro(0x20_0000, 0x1000, true)]
        );
        // Markers out of order, side by side or far apart: no hot span.
        assert_eq!(hot_span(0x13_8000, 0x10_0000), None);
        assert_eq!(hot_span(0x10_0000, 0x10_0010), None);
        assert_eq!(hot_span(0x10_0000, 0x10_0000 + (4 << 20)), None);
    }

    #[test]
    fn a_replaced_binary_still_matches_its_deleted_path() {
        let maps = "1000-3000 r-xp 00000000 fe:00 42 /opt/nodeagent (deleted)\n";
        let got = exe_mappings(maps, Path::new("/opt/nodeagent (deleted)"), false);
        assert_eq!(got, vec![ro(0x1000, 0x2000, true)]);
    }

    #[test]
    fn paging_own_code_out_keeps_the_program_running() {
        page_out_own_code(None);
        // No hot span in a test build: keep nothing but the read-only data.
        page_out_own_code(Some(hot_code().unwrap_or_default()));
        // Code paged out comes back on its next touch.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }
}
