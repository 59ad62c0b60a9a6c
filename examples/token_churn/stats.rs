//! Latency per reporting interval and over the steady state, measured from the moment each
//! request was due (so a stalled gateway shows as latency, not as fewer requests).

/// Latencies in microseconds.
#[derive(Default)]
pub struct Latencies {
    us: Vec<u32>,
}

impl Latencies {
    pub fn record(&mut self, us: u64) {
        self.us.push(us.min(u32::MAX as u64) as u32);
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    pub fn extend(&mut self, other: &Latencies) {
        self.us.extend_from_slice(&other.us);
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.us.is_empty() {
            return 0.0;
        }
        self.us.sort_unstable();
        let i = ((self.us.len() as f64 - 1.0) * q).round() as usize;
        self.us[i] as f64 / 1000.0
    }
}

/// CPU time counters from /proc, in clock ticks: the gateway's own (user + system), and the
/// machine's total and stolen (time the hypervisor gave this VM's CPUs to someone else: a stall
/// with steal in its interval is the host's, not the gateway's).
#[derive(Clone, Copy, Default)]
pub struct CpuTicks {
    pub process: u64,
    pub total: u64,
    pub steal: u64,
}

impl CpuTicks {
    pub fn read(pid: u32) -> Option<CpuTicks> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let after = &stat[stat.rfind(')')? + 2..];
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
        let process = f.get(11)? + f.get(12)?;
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = machine
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        Some(CpuTicks {
            process,
            total: cpu.iter().sum(),
            steal: *cpu.get(7)?,
        })
    }

    /// (the process's share of one CPU, the machine's steal share), in percent, since `before`.
    pub fn since(&self, before: &CpuTicks, cpus: u64) -> (f64, f64) {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let process = self.process.saturating_sub(before.process) as f64;
        let steal = self.steal.saturating_sub(before.steal) as f64;
        (100.0 * process * cpus as f64 / total, 100.0 * steal / total)
    }
}

/// One process's memory from /proc: (resident now, peak resident), in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_set() {
        let mut l = Latencies::default();
        for us in 1..=1000 {
            l.record(us * 1000);
        }
        assert_eq!(l.quantile_ms(0.5), 501.0);
        assert_eq!(l.quantile_ms(0.99), 990.0);
        assert_eq!(l.quantile_ms(1.0), 1000.0);
        assert_eq!(Latencies::default().quantile_ms(0.99), 0.0);
    }
}
