//! The standard process metrics of the Prometheus client libraries
//! (`process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` with the `procfs`
//! crate at each scrape. On a system without `/proc` they are left out.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::family::{gauge, single};

/// The process's own numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    /// The soft limit; `None` when unlimited.
    pub max_fds: Option<u64>,
    /// Unix seconds.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Read `/proc/self`; `None` where that is not possible.
    pub fn read() -> Option<Self> {
        let me = procfs::process::Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second() as f64;
        let boot = procfs::boot_time_secs().ok()? as f64;
        let max_fds = match me.limits().ok()?.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => Some(v),
            procfs::process::LimitValue::Unlimited => None,
        };
        Some(Self {
            resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
            virtual_bytes: stat.vsize,
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            open_fds: me.fd_count().ok()? as u64,
            max_fds,
            start_time_seconds: boot + stat.starttime as f64 / ticks,
        })
    }

    /// Write the `process_*` families.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let bytes = Some(&Unit::Bytes);
        let secs = Some(&Unit::Seconds);
        gauge(
            enc,
            "process_resident_memory",
            "Resident memory size.",
            bytes,
            self.resident_bytes as f64,
        )?;
        gauge(
            enc,
            "process_virtual_memory",
            "Virtual memory size.",
            bytes,
            self.virtual_bytes as f64,
        )?;
        single(
            enc,
            "process_cpu",
            "Total user and system CPU time spent.",
            secs,
            MetricType::Counter,
            self.cpu_seconds,
        )?;
        gauge(
            enc,
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            self.open_fds as f64,
        )?;
        if let Some(max) = self.max_fds {
            gauge(
                enc,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max as f64,
            )?;
        }
        gauge(
            enc,
            "process_start_time",
            "Start time of the process since the Unix epoch.",
            secs,
            self.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 3600.0,
            "{s:?}"
        );
    }
}
