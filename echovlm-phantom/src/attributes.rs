//! The attributes of a phantom and their deterministic draw from a seed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PhantomError;
use crate::rng::Draw;

/// Defines a unit-only attribute enum with serde (snake_case), `Display`, `FromStr` and `ALL`.
macro_rules! attribute_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The snake_case name, as serde writes it.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = PhantomError;

            /// Parses the snake_case name, ignoring case and surrounding white space.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let t = s.trim();
                $(
                    if t.eq_ignore_ascii_case($word) {
                        return Ok($name::$variant);
                    }
                )+
                Err(PhantomError::UnknownValue {
                    kind: $kind,
                    value: s.to_string(),
                })
            }
        }
    };
}

attribute_enum! {
    /// How the lesion reflects sound compared with the organ around it.
    Echogenicity, "echogenicity" {
        /// No echoes: near black inside (at most 0.2 of the organ around it); a smooth one
        /// enhances the echoes below it.
        Anechoic => "anechoic",
        /// Darker than the organ: about half its brightness, a grey well above anechoic.
        Hypoechoic => "hypoechoic",
        /// Brighter than the organ.
        Hyperechoic => "hyperechoic",
    }
}

attribute_enum! {
    /// The lesion's half of the organ, top to bottom of the image.
    Vertical, "vertical position" {
        /// Above the organ's centre (nearer the probe).
        Upper => "upper",
        /// Below the organ's centre.
        Lower => "lower",
    }
}

attribute_enum! {
    /// The lesion's half of the organ, as the image is viewed (image left, not patient left).
    Horizontal, "horizontal position" {
        /// Left of the organ's centre in the image.
        Left => "left",
        /// Right of the organ's centre in the image.
        Right => "right",
    }
}

attribute_enum! {
    /// The lesion's size class; each class is a range of diameters ([`SizeClass::diameter_range_mm`]).
    SizeClass, "size" {
        /// 5-8 mm.
        Small => "small",
        /// 12-16 mm.
        Medium => "medium",
        /// 20-25 mm.
        Large => "large",
    }
}

attribute_enum! {
    /// The outline of the lesion.
    Margin, "margin" {
        /// An ellipse with an abrupt interface to the organ.
        Smooth => "smooth",
        /// A radius modulated by several harmonics (lobulated) and ringed with angular teeth 0.9
        /// to 1.6 pixels high at 112 px (spiculated), casting a posterior acoustic shadow: the
        /// echoes behind it, along the beams that cross it, dimmed by up to 55%, whatever the
        /// lesion's echogenicity (a smooth anechoic lesion enhances them instead).
        Irregular => "irregular",
    }
}

attribute_enum! {
    /// The language of a report and its prompt.
    Lang, "language" {
        /// English.
        En => "en",
        /// Chinese (simplified).
        Zh => "zh",
    }
}

attribute_enum! {
    /// A short question on one attribute of the lesion, asked instead of the report
    /// ([`Question::prompt`], [`Question::answer`]): training samples that add signal on an
    /// attribute beside the reports.
    Question, "question" {
        /// The lesion's echogenicity.
        Echogenicity => "echogenicity",
    }
}

impl SizeClass {
    /// The diameters of the class in whole millimetres, both ends included.
    pub fn diameter_range_mm(&self) -> (u32, u32) {
        match self {
            SizeClass::Small => (5, 8),
            SizeClass::Medium => (12, 16),
            SizeClass::Large => (20, 25),
        }
    }

    /// The class whose range holds `diameter_mm`, if any (the ranges leave gaps).
    pub fn from_diameter_mm(diameter_mm: u32) -> Option<SizeClass> {
        SizeClass::ALL.iter().copied().find(|c| {
            let (lo, hi) = c.diameter_range_mm();
            (lo..=hi).contains(&diameter_mm)
        })
    }
}

/// The focal lesion of a phantom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lesion {
    /// Echogenicity against the organ.
    pub echogenicity: Echogenicity,
    /// Upper or lower half of the organ.
    pub vertical: Vertical,
    /// Left or right half of the organ.
    pub horizontal: Horizontal,
    /// Size class.
    pub size: SizeClass,
    /// Smooth or irregular outline.
    pub margin: Margin,
    /// The exact diameter in millimetres (of the circle of the same area), inside the size
    /// class's range for drawn attributes; rendering clamps it into that range.
    pub diameter_mm: u32,
}

/// Everything a phantom's image shows that its report names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attributes {
    /// The focal lesion, or `None` for an organ without one.
    pub lesion: Option<Lesion>,
}

/// The share of drawn phantoms without a lesion.
pub const NO_LESION_PROBABILITY: f64 = 0.15;

impl Attributes {
    /// Attributes without a lesion.
    pub const NO_LESION: Attributes = Attributes { lesion: None };

    /// The attributes of phantom `seed`: no lesion with probability
    /// [`NO_LESION_PROBABILITY`], otherwise every attribute uniform over its values and the
    /// diameter uniform over the size class's whole millimetres. The same seed always gives the
    /// same attributes (ChaCha8 seeded with `seed`).
    pub fn from_seed(seed: u64) -> Attributes {
        let mut rng = Draw::new(seed, Draw::ATTRIBUTES);
        if rng.unit() < NO_LESION_PROBABILITY {
            return Attributes::NO_LESION;
        }
        let echogenicity = *rng.pick(Echogenicity::ALL);
        let vertical = *rng.pick(Vertical::ALL);
        let horizontal = *rng.pick(Horizontal::ALL);
        let size = *rng.pick(SizeClass::ALL);
        let margin = *rng.pick(Margin::ALL);
        let (lo, hi) = size.diameter_range_mm();
        let diameter_mm = lo + rng.below(hi - lo + 1);
        Attributes {
            lesion: Some(Lesion {
                echogenicity,
                vertical,
                horizontal,
                size,
                margin,
                diameter_mm,
            }),
        }
    }

    /// Every combination of lesion attributes (with the middle diameter of each size class),
    /// followed by the organ without a lesion: 3 x 2 x 2 x 3 x 2 + 1 = 73 values.
    pub fn all_combinations() -> Vec<Attributes> {
        let mut out = Vec::new();
        for &echogenicity in Echogenicity::ALL {
            for &vertical in Vertical::ALL {
                for &horizontal in Horizontal::ALL {
                    for &size in SizeClass::ALL {
                        for &margin in Margin::ALL {
                            let (lo, hi) = size.diameter_range_mm();
                            out.push(Attributes {
                                lesion: Some(Lesion {
                                    echogenicity,
                                    vertical,
                                    horizontal,
                                    size,
                                    margin,
                                    diameter_mm: (lo + hi) / 2,
                                }),
                            });
                        }
                    }
                }
            }
        }
        out.push(Attributes::NO_LESION);
        out
    }
}
