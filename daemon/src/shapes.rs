//! Which shape a shipped compile takes when its family allows more than one: a text
//! job (the preprocessor runs at home, one text travels) or a same-path job (no
//! preprocessor at home; the source and every header it can reach travel as blobs
//! the peer does not hold yet). Neither is cheaper everywhere: a first build sends
//! every header once, a header-heavy C++ source costs the same-path walk more, a slow
//! link makes the text's size matter. The shims report what each shipped compile
//! cost them end to end, per compiler; the cheaper shape, by a smoothed average, is
//! the one placement names, and every so often the other one is tried again so that
//! its figure does not go stale.

use std::collections::HashMap;
use std::sync::Mutex;

use farm::protocol::{JobShape, Key};

use crate::placement::ewma;

/// One compile in this many tries the shape that is not the cheaper one.
const EXPLORE_EVERY: u64 = 16;
/// Samples of a shape before its average is trusted.
const MIN_SAMPLES: u32 = 3;

#[derive(Default, Clone, Copy)]
struct Cost {
    ms: f64,
    samples: u32,
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
        let cheaper = if c.text.ms < c.paths.ms {
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

    /// A shipped compile of `compiler` in `shape` cost the shim `ms` end to end.
    pub fn record(&self, compiler: &Key, shape: JobShape, ms: u32) {
        let mut m = self.0.lock().unwrap();
        let c = m.entry(*compiler).or_default();
        let cost = match shape {
            JobShape::Text => &mut c.text,
            JobShape::Paths => &mut c.paths,
        };
        cost.ms = ewma(cost.ms, ms as f64);
        cost.samples = cost.samples.saturating_add(1);
    }

    /// The smoothed cost of each shape for `compiler` (ms; 0 until measured).
    #[cfg(test)]
    fn costs(&self, compiler: &Key) -> (f64, f64) {
        let m = self.0.lock().unwrap();
        m.get(compiler)
            .map(|c| (c.text.ms, c.paths.ms))
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
        // The figures move: same-path gets cheaper and wins.
        for _ in 0..10 {
            s.record(&gcc, JobShape::Paths, 5);
        }
        let picks: Vec<JobShape> = (0..64).map(|_| s.choose(&gcc)).collect();
        assert!(picks.iter().filter(|p| **p == JobShape::Paths).count() > 50);
        // Another compiler has its own figures.
        assert_eq!(s.choose(&[2u8; 32]), JobShape::Paths);
    }
}
