//! Renamed tasks for `oom --track-comm`: decoding a `task/task_rename` record with the offsets of
//! its format file, and mapping the renamed thread to its process. Deciding whether the new name
//! is tracked is the watcher's.
use crate::tpformat::Layout;

// /sys/kernel/tracing/events/task/task_rename/format (Linux 6.18):
//   field:unsigned short common_type;  offset:0;  size:2;  signed:0;
//   field:unsigned char common_flags;  offset:2;  size:1;  signed:0;
//   field:unsigned char common_preempt_count;  offset:3;  size:1;  signed:0;
//   field:int common_pid;  offset:4;  size:4;  signed:1;
//
//   field:pid_t pid;  offset:8;  size:4;  signed:1;
//   field:char oldcomm[16];  offset:12;  size:16;  signed:0;
//   field:char newcomm[16];  offset:28;  size:16;  signed:0;
//   field:short oom_score_adj;  offset:44;  size:2;  signed:1;
// `pid` is the renamed THREAD's id. prctl(PR_SET_NAME) and exec rename the calling task, so the
// record's `pid` is then the current thread; a write to /proc/self/task/TID/comm renames another
// thread (of the same process: the kernel refuses other processes) from the writer's context,
// and /proc/TID/status says whose it is.
/// A decoded rename: thread `tid` of process `pid` is now called `comm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// None when the thread was renamed by another task and exited before /proc could say
    /// which process it belonged to.
    pub pid: Option<u32>,
    pub tid: u32,
    pub comm: String,
}

impl Rename {
    /// Decodes `raw` (the record) emitted by the task `cur_pid`/`cur_tid`. None when the record
    /// is short or lacks the fields.
    pub fn decode(layout: &Layout, raw: &[u8], cur_pid: u32, cur_tid: u32) -> Option<Rename> {
        let tid = layout.int(raw, "pid").and_then(|p| u32::try_from(p).ok())?;
        let comm = layout.string(raw, "newcomm")?;
        let pid = if tid == cur_tid {
            Some(cur_pid)
        } else {
            crate::target::tgid(tid)
        };
        Some(Rename { pid, tid, comm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: task_rename
ID: 204
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char oldcomm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:char newcomm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:short oom_score_adj;\toffset:44;\tsize:2;\tsigned:1;
";

    fn record(tid: u32, new: &str) -> Vec<u8> {
        let mut raw = vec![0u8; 64];
        raw[8..12].copy_from_slice(&tid.to_le_bytes());
        raw[12..17].copy_from_slice(b"start");
        raw[28..28 + new.len()].copy_from_slice(new.as_bytes());
        raw
    }

    #[test]
    fn a_thread_renaming_itself_belongs_to_the_current_process() {
        let l = Layout::parse(FORMAT);
        // A thread id that is not a process: only the current task's ids can place it.
        let r = Rename::decode(&l, &record(4_000_123, "worker"), 4_000_100, 4_000_123);
        assert_eq!(
            r,
            Some(Rename {
                pid: Some(4_000_100),
                tid: 4_000_123,
                comm: "worker".into()
            })
        );
    }

    #[test]
    fn another_task_renamed_is_found_through_proc() {
        let l = Layout::parse(FORMAT);
        let me = std::process::id();
        // Renamed from another thread's context (a write to /proc/self/task/TID/comm):
        // /proc/TID/status says.
        let r = Rename::decode(&l, &record(me, "x"), 1, 1).unwrap();
        assert_eq!((r.pid, r.tid), (Some(me), me));
        // A thread that is gone cannot be placed, but its new name is still known.
        let r = Rename::decode(&l, &record(u32::MAX >> 1, "x"), 1, 1).unwrap();
        assert_eq!((r.pid, r.comm.as_str()), (None, "x"));
    }

    #[test]
    fn short_or_foreign_records_are_refused() {
        let l = Layout::parse(FORMAT);
        assert_eq!(Rename::decode(&l, &record(7, "x")[..20], 7, 7), None);
        assert_eq!(
            Rename::decode(&Layout::default(), &record(7, "x"), 7, 7),
            None
        );
    }

    #[test]
    fn this_kernel_has_task_rename() {
        match Layout::load("task", "task_rename") {
            Ok(l) => {
                assert!(l.field("pid").is_some() && l.field("newcomm").is_some());
            }
            Err(e) => eprintln!("SKIPPED this_kernel_has_task_rename: {e}"),
        }
    }
}
