//! Which shape a shipped compile takes when its family allows more than one: a text
//! job (the preprocessor runs at home, one text travels) or a same-path job (no
//! preprocessor at home; the source and every header it can reach travel as blobs
//! the peer does not hold yet). Neither is cheaper everywhere: a first build sends
//! every header once, a header-heavy C++ source costs the same-path walk more, a slow
//! link makes the text's size matter. The shims report what each shipped compile
//! cost them beyond the worker's compile, per compiler; the cheaper shape, by the
//! median of recent samples, is the one placement names, and every so often the other
//! one is tried again so that its figure does not go stale.

use std::collections::HashMap;
use std::sync::Mutex;

use farm::protocol::{JobShape, Key};

/// One compile in this many tries the shape that is not the cheaper one.
const EXPLORE_EVERY: u64 = 16;
/// Samples of a shape before its average is trusted.
const MIN_SAMPLES: u32 = 3;

/// Samples kept per shape: the cost is their median, so one slow job (the first that
/// sends a whole toolchain) does not outweigh the ordinary ones.
const WINDOW: usize = 7;

#[derive(Default, Clone)]
struct Cost {
    recent: std::collections::VecDeque<u32>,
    samples: u32,
}

impl Cost {
    fn ms(&self) -> f64 {
        let mut v: Vec<u32> = self.recent.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64
    }
}

#[derive(Default)]
struct PerCompiler {
    text: Cost,
    paths: Cost,
    asked: u64,
}

/// Costs per compiler identity.
#[derive(Default)]
pub struct Shapes(Mutex<HashMap<Key, PerCompiler>>);

impl Shapes {
    /// The shape to try first for a compile of `compiler`.
    pub fn choose(&self, compiler: &Key) -> JobShape {
        let mut m = self.0.lock().unwrap();
        let c = m.entry(*compiler).or_default();
        c.asked += 1;
        // Unmeasured: same-path first (no preprocessor at home), then text, until
        // each has its samples.
        if c.paths.samples < MIN_SAMPLES {
            return JobShape::Paths;
        }
        if c.text.samples < MIN_SAMPLES {
            return JobShape::Text;
        }
        let cheaper = if c.text.ms() < c.paths.ms() {
            JobShape::Text
        } else {
            JobShape::Paths
        };
        if c.asked % EXPLORE_EVERY == 0 {
            match cheaper {
                JobShape::Text => JobShape::Paths,
                JobShape::Paths => JobShape::Text,
            }
        } else {
            cheaper
        }
    }

    /// A shipped compile of `compiler` in `shape` cost the shim `ms` beyond the
    /// worker's compile.
    pub fn record(&self, compiler: &Key, shape: JobShape, ms: u32) {
        let mut m = self.0.lock().unwrap();
        let c = m.entry(*compiler).or_default();
        let cost = match shape {
            JobShape::Text => &mut c.text,
            JobShape::Paths => &mut c.paths,
        };
        if cost.recent.len() == WINDOW {
            cost.recent.pop_front();
        }
        cost.recent.push_back(ms);
        cost.samples = cost.samples.saturating_add(1);
    }

    /// The smoothed cost of each shape for `compiler` (ms; 0 until measured).
    #[cfg(test)]
    fn costs(&self, compiler: &Key) -> (f64, f64) {
        let m = self.0.lock().unwrap();
        m.get(compiler)
            .map(|c| (c.text.ms(), c.paths.ms()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_shape_wins_and_the_other_is_tried_again_now_and_then() {
        let s = Shapes::default();
        let gcc = [1u8; 32];
        // Each shape gets its samples first.
        for _ in 0..MIN_SAMPLES {
            assert_eq!(s.choose(&gcc), JobShape::Paths);
            s.record(&gcc, JobShape::Paths, 40);
        }
        for _ in 0..MIN_SAMPLES {
            assert_eq!(s.choose(&gcc), JobShape::Text);
            s.record(&gcc, JobShape::Text, 20);
        }
        assert_eq!(s.costs(&gcc), (20.0, 40.0));
        let picks: Vec<JobShape> = (0..64).map(|_| s.choose(&gcc)).collect();
        let paths = picks.iter().filter(|p| **p == JobShape::Paths).count();
        assert!(
            (1..=8).contains(&paths),
            "{paths} of 64 tried the dearer shape"
        );
        // One slow job does not change the choice; the figures do move.
        s.record(&gcc, JobShape::Text, 5000);
        assert_eq!(s.costs(&gcc).0, 20.0);
        for _ in 0..10 {
            s.record(&gcc, JobShape::Paths, 5);
        }
        let picks: Vec<JobShape> = (0..64).map(|_| s.choose(&gcc)).collect();
        assert!(picks.iter().filter(|p| **p == JobShape::Paths).count() > 50);
        // Another compiler has its own figures.
        assert_eq!(s.choose(&[2u8; 32]), JobShape::Paths);
    }
}
