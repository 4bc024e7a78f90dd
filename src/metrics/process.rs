//! The process's own resource use, read from `/proc/self` when Prometheus scrapes (Linux only;
//! elsewhere the series are absent).

use std::time::{SystemTime, UNIX_EPOCH};

/// Clock ticks per second of `/proc/<pid>/stat` times. The kernel reports them in `USER_HZ`, which
/// is 100 on every architecture Linux containers run on (x86, ARM, RISC-V, POWER, s390).
const USER_HZ: f64 = 100.0;

/// One reading of the process's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_memory_bytes: u64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// OS threads.
    pub threads: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no such thing.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let mut stats = parse(&stat, &status, &limits, &uptime)?;
        stats.open_fds = open_fds;
        Some(stats)
    }
}

/// Parses the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and
/// `/proc/uptime`.
fn parse(stat: &str, status: &str, limits: &str, uptime: &str) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field N is `fields[N - 3]`.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20).unwrap_or(0);
    let start_ticks = field(22).unwrap_or(0);
    let vsize = field(23).unwrap_or(0);

    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());

    // Start time: boot time (now − uptime) plus the start offset in ticks.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let up = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let start_time_seconds = if up > 0.0 {
        ((now - up + start_ticks as f64 / USER_HZ) * 100.0).round() / 100.0
    } else {
        0.0
    };

    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_memory_bytes: kb("VmRSS:").unwrap_or(0),
        virtual_memory_bytes: vsize,
        open_fds: 0,
        max_fds,
        threads,
        start_time_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let stat = "4242 (gem proxy (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 50 0 0 20 0 7 0 1000 123456789 3000 18446744073709551615";
        let status = "Name:\tgem-proxy\nVmPeak:\t 200 kB\nVmRSS:\t   12000 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let s = parse(stat, status, limits, "5000.00 9000.00").unwrap();
        assert_eq!(s.cpu_seconds, 2.0);
        assert_eq!(s.resident_memory_bytes, 12000 * 1024);
        assert_eq!(s.virtual_memory_bytes, 123_456_789);
        assert_eq!(s.max_fds, Some(1024));
        assert_eq!(s.threads, 7);
        assert!(s.start_time_seconds > 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read().expect("/proc/self on Linux");
        assert!(
            s.resident_memory_bytes > 0 && s.open_fds > 0 && s.threads > 0,
            "{s:?}"
        );
    }
}
