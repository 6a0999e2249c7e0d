//! The words of comin's wire format a generation's status is written in, as types.
//!
//! The store keeps a generation's statuses and build reason as strings (comin's
//! protobuf has them so); the state machine reasons with these enums. Both convert
//! through [`as_str`](EvalStatus::as_str) and [`FromStr`], defined here once. Beside
//! them, where a generation's evaluation came from ([`Provenance`]: evaluated, or
//! reused from another generation), which the store records. A leaf module: it imports
//! nothing of the crate, so everything may use it.

use std::fmt;
use std::str::FromStr;

/// `build_reason` of a generation whose output was found in the store after its
/// evaluation, so that it was recorded built without building.
pub const BUILD_REASON_ALREADY_BUILT: &str = "already built";
/// `build_reason` of a generation built because a build of it was submitted.
pub const BUILD_REASON_NEED_BUILD: &str = "need to be built";

/// A status or reason string that is none of the known words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus {
    /// What kind of word was expected ("evaluation status", …).
    pub what: &'static str,
    /// The string found.
    pub found: String,
}

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a known {}", self.found, self.what)
    }
}

impl std::error::Error for UnknownStatus {}

/// Declares an enum of wire words with `as_str`, `FromStr` and `Display`.
macro_rules! wire_words {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident => $word:expr,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// The word as comin's wire format spells it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;

            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $(s if s == $word => Ok($name::$variant),)*
                    _ => Err(UnknownStatus { what: $what, found: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_words! {
    /// Where a generation's evaluation stands.
    EvalStatus, "evaluation status" {
        /// Created, not evaluated yet.
        Initialized => "initialized",
        /// Its evaluation runs.
        Evaluating => "evaluating",
        /// Its evaluation succeeded: the derivation and output paths are known.
        Evaluated => "evaluated",
        /// Its evaluation failed, timed out or was cancelled.
        Failed => "failed",
    }
}

wire_words! {
    /// Where a generation's build stands.
    BuildStatus, "build status" {
        /// Not built, no build started.
        Initialized => "initialized",
        /// Its build runs.
        Building => "building",
        /// Its output is in the Nix store.
        Built => "built",
        /// Its build failed, timed out or was cancelled.
        Failed => "failed",
    }
}

wire_words! {
    /// Why a generation was recorded as building.
    BuildReason, "build reason" {
        /// Its output was already in the store after its evaluation.
        AlreadyBuilt => BUILD_REASON_ALREADY_BUILT,
        /// A build was submitted.
        NeedBuild => BUILD_REASON_NEED_BUILD,
    }
}

/// Where a successful evaluation's result comes from. The store keeps the results
/// that may be reused by their key (its index of reusable evaluations), and names the
/// source of a reused one in the generation (`eval_reused_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Provenance {
    /// An evaluator ran. `key`: the request's reuse key, when the executor gives one;
    /// the result is then offered for reuse.
    Evaluated { key: Option<String> },
    /// No evaluator ran: the evaluation of generation `from`, recorded under `key`,
    /// stands in for this one (the job looked it up and found its `.drv` valid).
    Reused { key: String, from: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_parses_back_and_an_unknown_one_is_named() {
        use EvalStatus as E;
        for s in [E::Initialized, E::Evaluating, E::Evaluated, E::Failed] {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        use BuildStatus as B;
        for s in [B::Initialized, B::Building, B::Built, B::Failed] {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        for r in [BuildReason::AlreadyBuilt, BuildReason::NeedBuild] {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
        assert_eq!(
            "".parse::<EvalStatus>().unwrap_err().to_string(),
            "\"\" is not a known evaluation status"
        );
        assert!("evaluated".parse::<BuildStatus>().is_err());
    }
}
