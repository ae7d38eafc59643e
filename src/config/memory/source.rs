//! `memory.pressure.source`: the pressure sources, declared once here, for the setting, the
//! probe that reads them, the logs, and `/api/memory/status`. `memory` imports `config`,
//! never the other way, so the list lives on this side.

use std::fmt;

use serde::de::{self, Deserializer, EnumAccess, Unexpected, VariantAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A memory pressure source, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureSource {
    /// systemd's `$MEMORY_PRESSURE_WATCH` / `$MEMORY_PRESSURE_WRITE` (`MemoryPressureWatch=`).
    Systemd,
    /// Our own PSI trigger on the daemon's cgroup v2 `memory.pressure`.
    Psi,
    /// Polling the daemon's cgroup v2 files.
    CgroupV2,
    /// Polling the daemon's cgroup v1 memory controller.
    CgroupV1,
    /// System-wide `/proc/pressure/memory` and available memory.
    System,
    /// No pressure monitoring (the budget still applies).
    Off,
}

/// Which pressure source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureSourceSetting {
    /// The best one available, in [`PressureSource`]'s order.
    Auto,
    /// This one, else (with a warning) the best one available.
    Requested(PressureSource),
}

impl PressureSource {
    /// Every source, in declaration order (serde's variant indexes follow it).
    pub const ALL: [PressureSource; 6] = [
        PressureSource::Systemd,
        PressureSource::Psi,
        PressureSource::CgroupV2,
        PressureSource::CgroupV1,
        PressureSource::System,
        PressureSource::Off,
    ];

    /// The name used in the configuration, logs and `/api/memory/status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PressureSource::Systemd => "systemd",
            PressureSource::Psi => "psi",
            PressureSource::CgroupV2 => "cgroup-v2",
            PressureSource::CgroupV1 => "cgroup-v1",
            PressureSource::System => "system",
            PressureSource::Off => "off",
        }
    }
}

impl PressureSourceSetting {
    /// The name used in the configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            PressureSourceSetting::Auto => AUTO,
            PressureSourceSetting::Requested(source) => source.as_str(),
        }
    }

    /// The setting's serde variant index: `auto` first, then the sources in order.
    fn index(self) -> u32 {
        match self {
            PressureSourceSetting::Auto => 0,
            PressureSourceSetting::Requested(source) => source as u32 + 1,
        }
    }

    /// The setting of serde variant index `i`.
    fn from_index(i: u64) -> Option<PressureSourceSetting> {
        match i {
            0 => Some(PressureSourceSetting::Auto),
            i => PressureSource::ALL
                .get(usize::try_from(i - 1).ok()?)
                .map(|&source| PressureSourceSetting::Requested(source)),
        }
    }

    /// The setting spelled `name`.
    fn from_name(name: &str) -> Option<PressureSourceSetting> {
        if name == AUTO {
            return Some(PressureSourceSetting::Auto);
        }
        PressureSource::ALL
            .into_iter()
            .find(|source| source.as_str() == name)
            .map(PressureSourceSetting::Requested)
    }
}

const AUTO: &str = "auto";

/// Every spelling of the setting, for serde's "expected one of" (an unknown value is refused
/// with the same words the derived enum used).
const SETTING_NAMES: &[&str] = &{
    let mut names = [AUTO; PressureSource::ALL.len() + 1];
    let mut i = 0;
    while i < PressureSource::ALL.len() {
        names[i + 1] = PressureSource::ALL[i].as_str();
        i += 1;
    }
    names
};

impl Serialize for PressureSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit_variant("PressureSource", *self as u32, self.as_str())
    }
}

impl Serialize for PressureSourceSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit_variant("PressureSourceSetting", self.index(), self.as_str())
    }
}

// What serde derives for a kebab-case unit enum, with the names from [`PressureSource`]: a
// name or a variant index (figment passes numbers as indexes), refused in serde's words.
impl<'de> Deserialize<'de> for PressureSourceSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum("PressureSourceSetting", SETTING_NAMES, SettingVisitor)
    }
}

struct SettingVisitor;

impl<'de> Visitor<'de> for SettingVisitor {
    type Value = PressureSourceSetting;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("enum PressureSourceSetting")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let (SettingName(setting), variant) = data.variant()?;
        variant.unit_variant()?;
        Ok(setting)
    }
}

/// The variant identifier of a [`PressureSourceSetting`].
struct SettingName(PressureSourceSetting);

impl<'de> Deserialize<'de> for SettingName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(NameVisitor).map(SettingName)
    }
}

struct NameVisitor;

impl Visitor<'_> for NameVisitor {
    type Value = PressureSourceSetting;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        PressureSourceSetting::from_index(v).ok_or_else(|| {
            let expected = format!("variant index 0 <= i < {}", SETTING_NAMES.len());
            de::Error::invalid_value(Unexpected::Unsigned(v), &expected.as_str())
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        PressureSourceSetting::from_name(v)
            .ok_or_else(|| de::Error::unknown_variant(v, SETTING_NAMES))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        match std::str::from_utf8(v) {
            Ok(name) => self.visit_str(name),
            Err(_) => Err(de::Error::unknown_variant(
                &String::from_utf8_lossy(v),
                SETTING_NAMES,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings `memory.pressure.source` has always had, in order.
    const SPELLINGS: [&str; 7] = [
        "auto",
        "systemd",
        "psi",
        "cgroup-v2",
        "cgroup-v1",
        "system",
        "off",
    ];

    #[test]
    fn every_spelling_reads_and_writes_back_the_same() {
        assert_eq!(SETTING_NAMES, SPELLINGS);
        for (i, name) in SPELLINGS.into_iter().enumerate() {
            let setting: PressureSourceSetting =
                serde_yaml::from_str(name).expect("a known source");
            assert_eq!(setting.as_str(), name);
            assert_eq!(setting.index() as usize, i);
            assert_eq!(
                serde_yaml::to_string(&setting).expect("yaml"),
                format!("{name}\n")
            );
        }
        assert_eq!(
            serde_json::to_string(&PressureSource::CgroupV1).expect("json"),
            "\"cgroup-v1\""
        );
    }

    #[test]
    fn an_unknown_source_is_refused_in_serdes_words() {
        let e = serde_yaml::from_str::<PressureSourceSetting>("cgroup")
            .expect_err("unknown")
            .to_string();
        assert!(
            e.starts_with(
                "unknown variant `cgroup`, expected one of `auto`, `systemd`, `psi`, `cgroup-v2`, `cgroup-v1`, `system`, `off`"
            ),
            "{e}"
        );
    }
}
