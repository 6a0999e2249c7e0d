//! The Nix version, asked once per executor: the flags of some commands differ between
//! versions (`nix build DRV^*` from 2.15 on), and the version is part of what an
//! evaluation's result depends on.

/// A Nix version, as `nix --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NixVersion {
    /// The major version (2 for every Nix 2.x and every Lix).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch level, 0 when `nix --version` prints none.
    pub patch: u32,
    /// Whether this is Lix (a Nix fork, versions 2.90 and up, forked from Nix 2.18).
    pub lix: bool,
}

impl NixVersion {
    /// Parses the output of `nix --version`, e.g. `nix (Nix) 2.8.0` or
    /// `nix (Lix, like Nix) 2.91.1`. Suffixes such as `pre2024…` or `-dev` are ignored.
    ///
    /// ```
    /// use genbuild::executor::NixVersion;
    ///
    /// let version = NixVersion::parse("nix (Nix) 2.8.0\n").unwrap();
    /// assert_eq!((version.major, version.minor, version.patch), (2, 8, 0));
    /// assert!(!version.needs_all_outputs_suffix());
    /// assert_eq!(NixVersion::parse("command not found"), None);
    /// ```
    pub fn parse(output: &str) -> Option<NixVersion> {
        let line = output.lines().next()?.trim();
        let number = line.split_whitespace().rev().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
        let mut parts = number.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(NixVersion { major, minor, patch, lix: line.contains("Lix") })
    }

    /// Whether `nix build` needs `DRV^*` to build a derivation's outputs: from Nix 2.15
    /// on a bare `.drv` path means the file itself; 2.8 rejects the `^*` syntax.
    pub fn needs_all_outputs_suffix(&self) -> bool {
        (self.major, self.minor) >= (2, 15)
    }
}

impl std::fmt::Display for NixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.lix { "Lix" } else { "Nix" };
        write!(f, "{name} {}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32, lix: bool) -> NixVersion {
        NixVersion { major, minor, patch, lix }
    }

    #[test]
    fn parses_recorded_versions() {
        assert_eq!(NixVersion::parse("nix (Nix) 2.8.0\n"), Some(v(2, 8, 0, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.18.1\n"), Some(v(2, 18, 1, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.24.10\n"), Some(v(2, 24, 10, false)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.33.0\n"), Some(v(2, 33, 0, false)));
        assert_eq!(NixVersion::parse("nix (Lix, like Nix) 2.91.1\n"), Some(v(2, 91, 1, true)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.25.0pre20241101_dirty"), Some(v(2, 25, 0, false)));
        assert_eq!(NixVersion::parse("nix (Lix, like Nix) 2.93.0-dev"), Some(v(2, 93, 0, true)));
        assert_eq!(NixVersion::parse("nix (Nix) 2.9"), Some(v(2, 9, 0, false)));
        assert_eq!(NixVersion::parse("command not found"), None);
        assert_eq!(NixVersion::parse(""), None);
        assert_eq!(v(2, 91, 1, true).to_string(), "Lix 2.91.1");
    }

    #[test]
    fn all_outputs_suffix_from_2_15() {
        assert!(!v(2, 8, 0, false).needs_all_outputs_suffix());
        assert!(!v(2, 14, 1, false).needs_all_outputs_suffix());
        assert!(v(2, 15, 0, false).needs_all_outputs_suffix());
        assert!(v(2, 33, 0, false).needs_all_outputs_suffix());
        assert!(v(2, 91, 1, true).needs_all_outputs_suffix());
    }
}
