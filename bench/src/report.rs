//! The benchmark report: a human table on stdout and, with `--json`, JSON Lines in the
//! format of the design brief (one object per measurement).

use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// One measurement.
#[derive(Clone, Debug)]
pub struct Record {
    pub workload: &'static str,
    pub system: &'static str,
    pub op: &'static str,
    pub phase: &'static str,
    pub value_size: u64,
    pub concurrency: u32,
    pub batch: u32,
    /// Operations counted (keys, for key-rate workloads).
    pub ops: u64,
    pub seconds: f64,
    pub bytes: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub extra: Map<String, Value>,
}

impl Record {
    pub fn new(
        workload: &'static str,
        system: &'static str,
        op: &'static str,
        phase: &'static str,
    ) -> Record {
        Record {
            workload,
            system,
            op,
            phase,
            value_size: 0,
            concurrency: 1,
            batch: 1,
            ops: 0,
            seconds: 0.0,
            bytes: 0,
            p50_us: None,
            p99_us: None,
            extra: Map::new(),
        }
    }

    /// Fills counts, time and latency percentiles (histogram in nanoseconds).
    pub fn timed(
        mut self,
        ops: u64,
        bytes: u64,
        elapsed: Duration,
        latency_ns: Option<&Histogram<u64>>,
    ) -> Record {
        self.ops = ops;
        self.bytes = bytes;
        self.seconds = elapsed.as_secs_f64();
        if let Some(h) = latency_ns.filter(|h| !h.is_empty()) {
            self.p50_us = Some(h.value_at_quantile(0.50) as f64 / 1000.0);
            self.p99_us = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
        }
        self
    }

    pub fn size(mut self, value_size: u64) -> Record {
        self.value_size = value_size;
        self
    }

    pub fn concurrency(mut self, concurrency: u32) -> Record {
        self.concurrency = concurrency;
        self
    }

    pub fn batch(mut self, batch: u32) -> Record {
        self.batch = batch;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Record {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "workload": self.workload,
            "system": self.system,
            "op": self.op,
            "phase": self.phase,
            "value_size": self.value_size,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "ops": self.ops,
            "seconds": self.seconds,
            "ops_per_s": self.ops_per_s(),
            "bytes_per_s": self.bytes_per_s(),
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.extra.clone());
        }
        v
    }
}

/// The keys of [`Record::to_json`] that are not extras: the brief's report format.
pub(crate) const FIELDS: [&str; 13] = [
    "workload",
    "system",
    "op",
    "phase",
    "value_size",
    "concurrency",
    "batch",
    "ops",
    "seconds",
    "ops_per_s",
    "bytes_per_s",
    "p50_us",
    "p99_us",
];

impl Record {
    /// A record read back from a line [`Record::to_json`] wrote. Its names are leaked: this
    /// is for a one-shot command (`strata-bench chart`), which reads one report.
    pub fn from_json(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let Value::Object(mut m) = v else {
            return Err("not a JSON object".into());
        };
        let name = |m: &Map<String, Value>, key: &str| -> Result<&'static str, String> {
            let s = m.get(key).and_then(Value::as_str);
            let s = s.ok_or_else(|| format!("no \"{key}\" string"))?;
            Ok(Box::leak(s.to_string().into_boxed_str()))
        };
        let number = |m: &Map<String, Value>, key: &str| -> Result<f64, String> {
            let n = m.get(key).and_then(Value::as_f64);
            n.ok_or_else(|| format!("no \"{key}\" number"))
        };
        let seconds = number(&m, "seconds")?;
        let record = Record {
            workload: name(&m, "workload")?,
            system: name(&m, "system")?,
            op: name(&m, "op")?,
            phase: name(&m, "phase")?,
            value_size: number(&m, "value_size")? as u64,
            concurrency: number(&m, "concurrency")? as u32,
            batch: number(&m, "batch")? as u32,
            ops: number(&m, "ops")? as u64,
            seconds,
            bytes: (number(&m, "bytes_per_s")? * seconds).round() as u64,
            p50_us: m.get("p50_us").and_then(Value::as_f64),
            p99_us: m.get("p99_us").and_then(Value::as_f64),
            extra: Map::new(),
        };
        for key in FIELDS {
            m.remove(key);
        }
        Ok(Record { extra: m, ..record })
    }
}

/// Collects records, prints each as a table row as it arrives, writes JSON Lines at the end.
pub struct Report {
    records: Vec<Record>,
}

impl Report {
    pub fn new() -> Report {
        println!(
            "{:<8} {:<16} {:<11} {:<12} {:>9} {:>4} {:>5} {:>12} {:>10} {:>10} {:>10}  extra",
            "workload",
            "system",
            "op",
            "phase",
            "size",
            "conc",
            "batch",
            "ops/s",
            "GB/s",
            "p50 us",
            "p99 us"
        );
        Report {
            records: Vec::new(),
        }
    }

    pub fn add(&mut self, r: Record) {
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
        let gbps = if r.bytes > 0 {
            format!("{:.2}", r.bytes_per_s() / 1e9)
        } else {
            "-".into()
        };
        let extra: Vec<String> = r.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<8} {:<16} {:<11} {:<12} {:>9} {:>4} {:>5} {:>12.0} {:>10} {:>10} {:>10}  {}",
            r.workload,
            r.system,
            r.op,
            r.phase,
            human_size(r.value_size),
            r.concurrency,
            r.batch,
            r.ops_per_s(),
            gbps,
            opt(r.p50_us),
            opt(r.p99_us),
            extra.join(" ")
        );
        self.records.push(r);
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Writes every record as one JSON object per line to `path` (`-` for stdout).
    pub fn write_json(&self, path: &str) -> std::io::Result<()> {
        let mut out: Box<dyn Write> = if path == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::fs::File::create(path)?)
        };
        for r in &self.records {
            writeln!(out, "{}", r.to_json())?;
        }
        out.flush()
    }
}

/// Whether `--systems` (`None`: all) includes `name`.
pub fn chosen(systems: &Option<Vec<String>>, name: &str) -> bool {
    systems.as_ref().is_none_or(|s| s.iter().any(|w| w == name))
}

pub fn human_size(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_its_json_line() {
        let mut h = histogram();
        h.record(2_000).unwrap();
        let written = Record::new("mixed", "strata-shm", "get", "mixed")
            .size(256 << 10)
            .concurrency(16)
            .timed(
                1000,
                1000 * (256 << 10),
                Duration::from_millis(1500),
                Some(&h),
            )
            .with("hit_ratio", 0.97);
        let read = Record::from_json(&written.to_json().to_string()).unwrap();
        assert_eq!(read.to_json(), written.to_json());
        assert_eq!(
            (read.system, read.bytes),
            ("strata-shm", 1000 * (256 << 10))
        );
        assert_eq!(read.extra.len(), 1, "{:?}", read.extra);

        let mut nameless = written.to_json();
        nameless.as_object_mut().unwrap().remove("system");
        let err = Record::from_json(&nameless.to_string()).unwrap_err();
        assert!(err.contains("system"), "{err}");
        assert!(Record::from_json("[1, 2]").is_err());
    }
}
