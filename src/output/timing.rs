//! Phase timings, for the report (`--json` `timings_ms`) and the benchmark's "where the time
//! goes".

use std::time::Instant;

/// Laps since the last call, by phase name, in milliseconds.
#[derive(Debug)]
pub struct Timer {
    last: Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }
}

impl Timer {
    /// Records the time since the previous lap under `phase` (repeated phases add up).
    pub fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_secs_f64() * 1000.0;
        self.last = now;
        match self.laps.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, t)) => *t += ms,
            None => self.laps.push((phase, ms)),
        }
    }
}

impl serde::Serialize for Timer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.laps.len()))?;
        for (k, v) in &self.laps {
            m.serialize_entry(k, &((v * 10.0).round() / 10.0))?;
        }
        m.end()
    }
}
