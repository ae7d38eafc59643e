//! Deterministic values for random weights, so a failure reproduces.

/// Values in `[-1, 1)` from a 64-bit LCG seeded by its one field.
pub struct Seeded(pub u64);

impl Seeded {
    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
