//! `models.precision`: the arithmetic a model's linear layers run in, as configured. Whether
//! this machine can run it is the engine's question (`Precision::on_this_machine`).

/// The arithmetic of a model's linear layers (`models.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Precision {
    /// f32 throughout: the reference.
    #[default]
    F32,
    /// Linear layers multiply bf16-rounded weights and inputs with f32 accumulation, on Intel
    /// AMX; attention, normalisation and activations stay f32.
    Bf16,
    /// Linear layers multiply int8 weights (a scale per output and block of 32 inputs) by
    /// int16 activations (a scale per token) with int32 sums; the rest stays f32. Runs on
    /// every CPU (AVX-512 VNNI, AVX-VNNI, AVX2 or portable kernels).
    Int8,
    /// Opt-in speed: most linear layers multiply int8 weights (a scale per output) by 8-bit
    /// activations (a scale and zero point per token, after a smoothing per input channel
    /// measured at load); the feed-forward block's second layer runs as in `Int8`. Vectors
    /// stay within the documented floor of the reference, below `Int8`'s.
    #[serde(rename = "int8-fast")]
    Int8Fast,
}

impl Precision {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Int8Fast => "int8-fast",
        }
    }
}

impl TryFrom<String> for Precision {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            "int8-fast" => Ok(Precision::Int8Fast),
            _ => Err(format!(
                "{s:?} is not a precision; use f32, bf16, int8 or int8-fast"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
