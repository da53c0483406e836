//! Rendering a phantom: a convex-probe B-mode fan with speckle, one organ with a bright capsule,
//! the lesion of the attributes, and a depth scale at the right edge.

use std::f64::consts::{PI, TAU};

use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::attributes::{Attributes, Echogenicity, Horizontal, Margin, Vertical};
use crate::rng::Draw;

/// The default image side in pixels.
pub const DEFAULT_SIZE: u32 = 112;
/// The smallest image side [`render`] draws; smaller sizes are raised to it.
pub const MIN_SIZE: u32 = 32;
/// The largest image side [`render`] draws; larger sizes are lowered to it.
pub const MAX_SIZE: u32 = 2048;

/// Pixels per centimetre at [`DEFAULT_SIZE`]: each image draws its scale uniformly from this
/// range (13 px/cm +- 7.7%), and the range scales with the image side.
pub const PX_PER_CM_AT_DEFAULT_SIZE: (f64, f64) = (12.0, 14.0);

/// Echo levels (mean brightness before gain, 1.0 = white).
mod level {
    pub const TISSUE: f64 = 0.27;
    pub const ORGAN: f64 = 0.46;
    pub const CAPSULE: f64 = 0.95;
    pub const FASCIA: f64 = 0.62;
    pub const ANECHOIC: f64 = 0.035;
    pub const HYPOECHOIC: f64 = 0.22;
    pub const HYPERECHOIC: f64 = 0.88;
}

/// A rendered phantom with the masks of what it shows (each mask 255 inside, 0 outside, the
/// size of the image).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rendering {
    /// The B-mode image, grey stored in RGB.
    pub image: RgbImage,
    /// The pixels inside the fan.
    pub fan_mask: GrayImage,
    /// The pixels inside the organ's outline (the lesion included, the capsule line on the
    /// outline included).
    pub organ_mask: GrayImage,
    /// The pixels inside the lesion's outline; all 0 without a lesion.
    pub lesion_mask: GrayImage,
    /// The image's scale: the depth-scale ticks are this many pixels apart.
    pub px_per_cm: f64,
    /// The organ's centre (x, y) in pixels; quadrants are relative to it.
    pub organ_centre: (f64, f64),
    /// The lesion's diameter as drawn, in millimetres (the attribute's, clamped into its size
    /// class's range); `None` without a lesion.
    pub lesion_diameter_mm: Option<u32>,
}

/// Renders phantom `seed` with `attrs` as a `size` x `size` image (grey in RGB). The same
/// arguments always give the same bytes. `size` is clamped into [`MIN_SIZE`]..=[`MAX_SIZE`].
pub fn render(seed: u64, attrs: &Attributes, size: u32) -> RgbImage {
    render_with_mask(seed, attrs, size).image
}

/// [`render`] with the masks of the fan, the organ and the lesion, for measuring what the
/// image shows.
pub fn render_with_mask(seed: u64, attrs: &Attributes, size: u32) -> Rendering {
    let scene = Scene::draw(seed, attrs, size.clamp(MIN_SIZE, MAX_SIZE));
    scene.paint(seed)
}

/// The region the convex probe insonates: an annulus sector around an apex above the image.
#[derive(Debug, Clone, Copy)]
struct Fan {
    cx: f64,
    apex_y: f64,
    r0: f64,
    r1: f64,
    half_angle: f64,
}

impl Fan {
    /// (radius from the apex, angle from the vertical, positive to the right).
    fn polar(&self, x: f64, y: f64) -> (f64, f64) {
        let dx = x - self.cx;
        let dy = y - self.apex_y;
        ((dx * dx + dy * dy).sqrt(), dx.atan2(dy))
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        let (r, a) = self.polar(x, y);
        r >= self.r0 && r <= self.r1 && a.abs() <= self.half_angle
    }

    /// Whether (x, y) is inside with `margin` pixels to spare on every side.
    fn contains_with_margin(&self, x: f64, y: f64, margin: f64) -> bool {
        let (r, a) = self.polar(x, y);
        r >= self.r0 + margin && r <= self.r1 - margin && (self.half_angle - a.abs()) * r >= margin
    }

    fn top_y(&self) -> f64 {
        self.apex_y + self.r0
    }

    fn bottom_y(&self) -> f64 {
        self.apex_y + self.r1
    }
}

/// A star-shaped outline around a centre: an ellipse (semi-axes `a` along angle `rot`, `b`
/// across) whose radius is modulated by harmonics `(k, amplitude, phase)`, plus optional
/// angular teeth.
#[derive(Debug, Clone)]
struct Blob {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    rot: f64,
    harmonics: Vec<(f64, f64, f64)>,
    teeth: Option<Teeth>,
}

/// A zig-zag added to an outline's radius: `heights.len()` teeth evenly spread around it,
/// each a triangle whose peak sticks out `heights[i]` pixels and whose notches cut in as far
/// (an angular, spiculated margin that reads as irregular at any lesion size).
#[derive(Debug, Clone)]
struct Teeth {
    phase: f64,
    heights: Vec<f64>,
}

impl Teeth {
    /// The radial offset in pixels in direction `phi`.
    fn offset(&self, phi: f64) -> f64 {
        let n = self.heights.len();
        if n == 0 {
            return 0.0;
        }
        // position along the teeth, in teeth: the peak of tooth i is at i, a notch at i + 0.5
        let u = ((phi + self.phase) / TAU).rem_euclid(1.0) * n as f64;
        let i = (u.floor() as usize).min(n - 1);
        let f = u - i as f64;
        let h = self.heights[i];
        let next = self.heights[(i + 1) % n];
        // from the peak of tooth i down to the notch between the two, up to the next peak
        let notch = -0.5 * (h + next);
        if f < 0.5 {
            h + (notch - h) * 2.0 * f
        } else {
            notch + (next - notch) * (2.0 * f - 1.0)
        }
    }

    /// The mean square of [`Teeth::offset`] over the outline (a zig-zag of height h has h^2 / 3).
    fn mean_square(&self) -> f64 {
        let n = self.heights.len().max(1) as f64;
        self.heights.iter().map(|h| h * h / 3.0).sum::<f64>() / n
    }
}

impl Blob {
    /// The outline's distance from the centre in direction `phi` (image coordinates).
    fn radius(&self, phi: f64) -> f64 {
        let t = phi - self.rot;
        let (s, c) = t.sin_cos();
        let e = self.a * self.b / ((self.b * c).powi(2) + (self.a * s).powi(2)).sqrt();
        let m: f64 = self
            .harmonics
            .iter()
            .map(|&(k, amp, ph)| amp * (k * phi + ph).cos())
            .sum();
        let teeth = self.teeth.as_ref().map_or(0.0, |t| t.offset(phi));
        (e * (1.0 + m) + teeth).max(0.0)
    }

    /// Signed distance-like value: how far (x, y) lies inside the outline along its ray
    /// (positive inside), in pixels.
    fn depth_inside(&self, x: f64, y: f64) -> f64 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let d = (dx * dx + dy * dy).sqrt();
        self.radius(dy.atan2(dx)) - d
    }

    fn outline(&self, n: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
        (0..n).map(move |i| {
            let phi = TAU * i as f64 / n as f64;
            let r = self.radius(phi);
            (self.cx + r * phi.cos(), self.cy + r * phi.sin())
        })
    }
}

#[derive(Debug, Clone)]
struct LesionShape {
    blob: Blob,
    echogenicity: Echogenicity,
    margin: Margin,
    diameter_mm: u32,
}

#[derive(Debug, Clone)]
struct Scene {
    size: u32,
    fan: Fan,
    px_per_cm: f64,
    organ: Blob,
    organ_level: f64,
    tissue_level: f64,
    /// Bright arcs of the layers under the probe: (radius from the apex, half-width, level).
    fascia: Vec<(f64, f64, f64)>,
    lesion: Option<LesionShape>,
    /// Axial and lateral speckle correlation (Gaussian sigma, pixels).
    speckle_sigma: (f64, f64),
}

impl Scene {
    fn draw(seed: u64, attrs: &Attributes, size: u32) -> Scene {
        let mut rng = Draw::new(seed, Draw::GEOMETRY);
        let s = f64::from(size);
        let k = s / f64::from(DEFAULT_SIZE);

        // A curved-array fan: apex well above the image, top arc near the top, bottom arc
        // near the bottom, the sides inside the image with room for the scale at the right.
        let fan = Fan {
            cx: s * rng.range(0.465, 0.475),
            apex_y: -0.70 * s,
            r0: 0.78 * s,
            r1: 1.65 * s,
            half_angle: (0.46f64 / 1.65).asin(),
        };
        let px_per_cm = k * rng.range(PX_PER_CM_AT_DEFAULT_SIZE.0, PX_PER_CM_AT_DEFAULT_SIZE.1);

        // The organ: an ellipse with a little shape jitter, centred in the fan.
        let mut organ = Blob {
            cx: fan.cx + s * rng.range(-0.015, 0.015),
            cy: s * rng.range(0.525, 0.555),
            a: s * rng.range(0.335, 0.35),
            b: s * rng.range(0.30, 0.32),
            rot: rng.range(-0.12, 0.12),
            harmonics: vec![
                (2.0, rng.range(0.0, 0.025), rng.range(0.0, TAU)),
                (3.0, rng.range(0.0, 0.02), rng.range(0.0, TAU)),
            ],
            teeth: None,
        };
        // Keep it inside the fan with a margin (shrinks only for unusual jitter).
        for _ in 0..40 {
            if organ
                .outline(180)
                .all(|(x, y)| fan.contains_with_margin(x, y, 2.0 * k))
            {
                break;
            }
            organ.a *= 0.97;
            organ.b *= 0.97;
        }
        let organ_level = level::ORGAN * rng.range(0.95, 1.05);
        let tissue_level = level::TISSUE * rng.range(0.9, 1.1);
        let fascia = vec![
            (
                fan.r0 + s * rng.range(0.045, 0.06),
                0.7 * k,
                level::FASCIA * rng.range(0.9, 1.1),
            ),
            (
                fan.r0 + s * rng.range(0.10, 0.12),
                0.6 * k,
                0.8 * level::FASCIA * rng.range(0.9, 1.1),
            ),
        ];

        let lesion = attrs.lesion.map(|l| {
            let (lo, hi) = l.size.diameter_range_mm();
            let diameter_mm = l.diameter_mm.clamp(lo, hi);
            let radius = 0.5 * f64::from(diameter_mm) / 10.0 * px_per_cm;
            let mut blob = match l.margin {
                Margin::Smooth => {
                    // an ellipse of the same area as the circle of the diameter
                    let q = rng.range(0.75, 0.95);
                    Blob {
                        cx: 0.0,
                        cy: 0.0,
                        a: radius / q.sqrt(),
                        b: radius * q.sqrt(),
                        rot: rng.range(0.0, PI),
                        harmonics: Vec::new(),
                        teeth: None,
                    }
                }
                Margin::Irregular => {
                    let harmonics = irregular_harmonics(&mut rng, radius);
                    let teeth = irregular_teeth(&mut rng, radius, k);
                    // the area of r(phi) = r0 (1 + sum a_k cos) + t(phi) is about
                    // pi (r0^2 (1 + sum a_k^2 / 2) + mean t^2): the teeth and the harmonics
                    // are uncorrelated and t has mean zero
                    let energy: f64 = harmonics.iter().map(|h| h.1 * h.1 / 2.0).sum();
                    let r0 = ((radius * radius - teeth.mean_square()).max(0.25 * radius * radius)
                        / (1.0 + energy))
                        .sqrt();
                    Blob {
                        cx: 0.0,
                        cy: 0.0,
                        a: r0,
                        b: r0,
                        rot: 0.0,
                        harmonics,
                        teeth: Some(teeth),
                    }
                }
            };
            place_lesion(&mut blob, &organ, l.vertical, l.horizontal, k, &mut rng);
            LesionShape {
                blob,
                echogenicity: l.echogenicity,
                margin: l.margin,
                diameter_mm,
            }
        });
        Scene {
            size,
            fan,
            px_per_cm,
            organ,
            organ_level,
            tissue_level,
            fascia,
            lesion,
            speckle_sigma: (0.55 * k, 1.0 * k),
        }
    }

    fn paint(&self, seed: u64) -> Rendering {
        let n = self.size as usize;
        let s = f64::from(self.size);
        let k = s / f64::from(DEFAULT_SIZE);
        let fields = Fields {
            organ_speckle: speckle_field(
                &mut Draw::new(seed, Draw::SPECKLE),
                n,
                self.speckle_sigma,
            ),
            tissue_speckle: speckle_field(
                &mut Draw::new(seed, Draw::TISSUE_SPECKLE),
                n,
                (1.3 * self.speckle_sigma.0, 1.4 * self.speckle_sigma.1),
            ),
            texture: smooth_field(&mut Draw::new(seed, Draw::TEXTURE), n, (2.2 * k, 2.2 * k)),
            streaks: smooth_field(&mut Draw::new(seed, Draw::STREAKS), n, (5.0 * k, 0.9 * k)),
        };

        let mut fan_mask = GrayImage::new(self.size, self.size);
        let mut organ_mask = GrayImage::new(self.size, self.size);
        let mut lesion_mask = GrayImage::new(self.size, self.size);
        for y in 0..self.size {
            for x in 0..self.size {
                let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                if self.fan.contains(px, py) {
                    fan_mask.put_pixel(x, y, Luma([255]));
                }
                if self.organ.depth_inside(px, py) >= 0.0 {
                    organ_mask.put_pixel(x, y, Luma([255]));
                }
                if let Some(l) = &self.lesion
                    && l.blob.depth_inside(px, py) >= 0.0
                {
                    lesion_mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
        let shadow = self.posterior_profile(&lesion_mask);

        let mut image = RgbImage::new(self.size, self.size);
        for y in 0..self.size {
            for x in 0..self.size {
                if fan_mask.get_pixel(x, y).0[0] == 0 {
                    continue;
                }
                let (px, py) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                let (r, a) = self.fan.polar(px, py);
                let idx = y as usize * n + x as usize;
                let echo = self.echo(px, py, r, &fields, idx, k);
                let v = echo * self.gain(r, a) * shadow.factor(&self.fan, r, a);
                let g = (255.0 * v).round().clamp(0.0, 255.0) as u8;
                image.put_pixel(x, y, Rgb([g, g, g]));
            }
        }
        self.draw_scale(&mut image, k);

        Rendering {
            image,
            fan_mask,
            organ_mask,
            lesion_mask,
            px_per_cm: self.px_per_cm,
            organ_centre: (self.organ.cx, self.organ.cy),
            lesion_diameter_mm: self.lesion.as_ref().map(|l| l.diameter_mm),
        }
    }

    /// The echo at a pixel, speckle included, before gain.
    fn echo(&self, x: f64, y: f64, r: f64, f: &Fields, idx: usize, k: f64) -> f64 {
        let inside_organ = self.organ.depth_inside(x, y);
        let texture = f.texture[idx];
        let organ_speckle = f.organ_speckle[idx];
        // background tissue: streaky, coarser speckle, the layers under the probe and a faint
        // near-field band
        let mut tissue = self.tissue_level * (0.65 + 0.7 * f.streaks[idx]);
        let near = (r - self.fan.r0) / (3.0 * k);
        tissue += 0.25 * (-near * near).exp();
        for &(fr, hw, lv) in &self.fascia {
            let d = (r - fr) / hw;
            let w = (-d * d).exp();
            tissue += (lv - tissue).max(0.0) * w;
        }
        let tissue = tissue * f.tissue_speckle[idx];
        // the organ: finer speckle, a gentle coarse texture; blended over a pixel at its outline
        let organ = self.organ_level * (0.88 + 0.24 * texture) * organ_speckle;
        let t = (inside_organ / k + 0.5).clamp(0.0, 1.0);
        let mut v = tissue + (organ - tissue) * t;
        if let Some(l) = &self.lesion {
            let inside = l.blob.depth_inside(x, y);
            // lesions are more homogeneous than the organ: softer speckle inside
            let lv = match l.echogenicity {
                Echogenicity::Anechoic => level::ANECHOIC * organ_speckle,
                Echogenicity::Hypoechoic => {
                    level::HYPOECHOIC * (0.9 + 0.2 * texture) * organ_speckle.powf(0.7)
                }
                Echogenicity::Hyperechoic => {
                    level::HYPERECHOIC * (0.9 + 0.2 * texture) * organ_speckle.powf(0.35)
                }
            };
            // every pixel of the mask is all lesion; the edge blends over the pixel outside
            let t = (inside / (0.8 * k) + 1.0).clamp(0.0, 1.0);
            v += (lv - v) * t;
        }
        // the capsule: a thin bright line, brightest where the beam meets it head-on, with
        // little speckle
        let d = inside_organ / (0.7 * k);
        let line = (-d * d).exp();
        if line > 1e-3 {
            let (dx, dy) = (x - self.organ.cx, y - self.organ.cy);
            let len = (dx * dx + dy * dy).sqrt().max(1e-9);
            let facing = (dy / len).abs();
            let cap = level::CAPSULE * (0.5 + 0.5 * facing) * organ_speckle.powf(0.35);
            v += (cap - v).max(0.0) * line;
        }
        v
    }

    /// Depth-dependent gain: attenuation only partly compensated, darker at the fan's sides.
    fn gain(&self, r: f64, a: f64) -> f64 {
        let depth = ((r - self.fan.r0) / (self.fan.r1 - self.fan.r0)).clamp(0.0, 1.0);
        let lateral = (a / self.fan.half_angle).abs().powi(4);
        (1.08 - 0.33 * depth) * (1.0 - 0.22 * lateral)
    }

    /// What a lesion does to the echoes behind it, along the beams that cross it: an irregular
    /// (spiculated) lesion casts an acoustic shadow, as infiltrating masses do, whatever it
    /// holds; a smooth anechoic (fluid) one shows posterior enhancement; a smooth solid one
    /// neither.
    fn posterior_profile(&self, lesion_mask: &GrayImage) -> Posterior {
        let bins = ((2.0 * self.fan.half_angle * self.fan.r0).ceil() as usize).max(8);
        let mut far = vec![f64::NEG_INFINITY; bins];
        let strength = match &self.lesion {
            Some(l) if l.margin == Margin::Irregular => -0.55,
            Some(l) if l.echogenicity == Echogenicity::Anechoic => 0.6,
            _ => 0.0,
        };
        if strength != 0.0 {
            for (x, y, p) in lesion_mask.enumerate_pixels() {
                if p.0[0] == 0 {
                    continue;
                }
                let (r, a) = self.fan.polar(f64::from(x) + 0.5, f64::from(y) + 0.5);
                let b = Posterior::bin(bins, self.fan.half_angle, a);
                far[b] = far[b].max(r);
            }
        }
        // soften the sides of the band: a beam half covered is half enhanced
        let present: Vec<f64> = far
            .iter()
            .map(|f| f64::from(u8::from(f.is_finite())))
            .collect();
        let weight = (0..bins)
            .map(|i| {
                let at = |j: isize| {
                    usize::try_from(j)
                        .ok()
                        .and_then(|j| present.get(j))
                        .copied()
                        .unwrap_or(0.0)
                };
                let i = i as isize;
                (at(i - 1) + 2.0 * at(i) + at(i + 1)) / 4.0
            })
            .collect();
        Posterior {
            far,
            weight,
            strength,
            decay: 0.35 * f64::from(self.size),
        }
    }

    /// The depth scale: a thin vertical line at the right edge with a tick every centimetre
    /// (every fifth one longer), from the fan's top to its bottom.
    fn draw_scale(&self, image: &mut RgbImage, k: f64) {
        let n = self.size;
        let w = (k.round() as u32).max(1);
        let line_x = n.saturating_sub(3 * w);
        let top = self.fan.top_y();
        let bottom = self.fan.bottom_y().min(f64::from(n) - 1.0);
        let mut put = |x: u32, y: u32, g: u8| {
            if x < n && y < n {
                image.put_pixel(x, y, Rgb([g, g, g]));
            }
        };
        let (y0, y1) = (top.round().max(0.0) as u32, bottom.round().max(0.0) as u32);
        for y in y0..=y1 {
            for dx in 0..w {
                put(line_x + dx, y, 150);
            }
        }
        let mut i = 0u32;
        loop {
            let y = top + f64::from(i) * self.px_per_cm;
            if y > bottom + 0.5 {
                break;
            }
            let len = if i.is_multiple_of(5) { 3 * w } else { 2 * w };
            let yy = y.round().max(0.0) as u32;
            for dy in 0..w {
                for dx in 0..len {
                    put((line_x + w).saturating_sub(1 + dx), yy + dy, 235);
                }
            }
            i += 1;
        }
    }
}

/// The random fields of one image, each n x n.
struct Fields {
    organ_speckle: Vec<f64>,
    tissue_speckle: Vec<f64>,
    texture: Vec<f64>,
    streaks: Vec<f64>,
}

/// Per-beam far edge of the lesion and the enhancement (`strength > 0`) or shadow
/// (`strength < 0`) behind it.
struct Posterior {
    far: Vec<f64>,
    weight: Vec<f64>,
    strength: f64,
    decay: f64,
}

impl Posterior {
    fn bin(bins: usize, half_angle: f64, a: f64) -> usize {
        let t = ((a + half_angle) / (2.0 * half_angle)).clamp(0.0, 1.0);
        ((t * bins as f64) as usize).min(bins - 1)
    }

    fn factor(&self, fan: &Fan, r: f64, a: f64) -> f64 {
        if self.strength == 0.0 {
            return 1.0;
        }
        let b = Posterior::bin(self.far.len(), fan.half_angle, a);
        let w = self.weight[b];
        if w == 0.0 {
            return 1.0;
        }
        // the far edge of this beam, or of its neighbour for the soft sides
        let far = [b.wrapping_sub(1), b, b + 1]
            .iter()
            .filter_map(|&j| self.far.get(j))
            .copied()
            .filter(|f| f.is_finite())
            .fold(f64::NEG_INFINITY, f64::max);
        if !far.is_finite() || r <= far {
            return 1.0;
        }
        1.0 + self.strength * w * (-(r - far) / self.decay).exp()
    }
}

/// Three to four harmonics of an irregular outline: one or two strong low ones (lobulation),
/// the rest higher and sharper (spiculation). A lesion only a few pixels across gets lower,
/// stronger ones, so that its outline still reads as irregular.
fn irregular_harmonics(rng: &mut Draw, radius_px: f64) -> Vec<(f64, f64, f64)> {
    let mut h = if radius_px < 6.5 {
        vec![
            (
                f64::from(2 + rng.below(2)),
                rng.range(0.20, 0.26),
                rng.range(0.0, TAU),
            ),
            (
                f64::from(4 + rng.below(2)),
                rng.range(0.13, 0.18),
                rng.range(0.0, TAU),
            ),
        ]
    } else {
        vec![
            (
                f64::from(3 + rng.below(2)),
                rng.range(0.13, 0.18),
                rng.range(0.0, TAU),
            ),
            (
                f64::from(5 + rng.below(2)),
                rng.range(0.08, 0.12),
                rng.range(0.0, TAU),
            ),
        ]
    };
    h.push((
        f64::from(7 + rng.below(3)),
        rng.range(0.05, 0.08),
        rng.range(0.0, TAU),
    ));
    if radius_px >= 6.5 && rng.unit() < 0.5 {
        h.push((2.0, rng.range(0.04, 0.08), rng.range(0.0, TAU)));
    }
    h
}

/// The angular teeth of an irregular outline: one about every 3.5 pixels of perimeter (at
/// the default size; at least five), each sticking out (and cutting in) 0.9 to 1.6 pixels.
fn irregular_teeth(rng: &mut Draw, radius_px: f64, k: f64) -> Teeth {
    let spacing = 3.5 * k;
    let n = ((TAU * radius_px / spacing).round() as usize).max(5);
    let heights = (0..n).map(|_| k * rng.range(0.9, 1.6)).collect();
    Teeth {
        phase: rng.range(0.0, TAU),
        heights,
    }
}

/// Moves the lesion (centred at 0, 0) into the stated quadrant of the organ, about as far off
/// both of the organ's axes as fits with a margin inside the capsule.
fn place_lesion(
    blob: &mut Blob,
    organ: &Blob,
    vertical: Vertical,
    horizontal: Horizontal,
    k: f64,
    rng: &mut Draw,
) {
    let sx = match horizontal {
        Horizontal::Left => -1.0,
        Horizontal::Right => 1.0,
    };
    let sy = match vertical {
        Vertical::Upper => -1.0,
        Vertical::Lower => 1.0,
    };
    let margin = 2.5 * k;
    let fits = |cx: f64, cy: f64| {
        let mut b = blob.clone();
        b.cx = cx;
        b.cy = cy;
        b.outline(120)
            .all(|(x, y)| organ.depth_inside(x, y) >= margin)
    };
    // for each direction into the quadrant: the farthest fitting share of the organ's
    // half-axes (on a grid), and how far off the nearer axis that puts the lesion
    let candidates: Vec<(f64, f64, f64, f64)> = (0..=12)
        .map(|i| {
            let angle = (0.2 + 0.6 * f64::from(i) / 12.0) * PI / 2.0;
            let (dx, dy) = (sx * angle.cos() * organ.a, sy * angle.sin() * organ.b);
            let t_max = (0..45)
                .map(|j| 0.9 - 0.02 * f64::from(j))
                .find(|&t| fits(organ.cx + t * dx, organ.cy + t * dy))
                .unwrap_or(0.0);
            (dx, dy, t_max, t_max * dx.abs().min(dy.abs()))
        })
        .collect();
    // a random one of the directions that put the lesion nearly as far off both axes as the
    // best one does (the best is always among them)
    let best = candidates.iter().map(|c| c.3).fold(0.0, f64::max);
    let good: Vec<&(f64, f64, f64, f64)> =
        candidates.iter().filter(|c| c.3 >= 0.8 * best).collect();
    let &&(dx, dy, t_max, _) = rng.pick(&good);
    // at least a couple of pixels off each axis so the quadrant is never on a line
    let floor = (2.5 * k / dx.abs().min(dy.abs()).max(1e-9)).min(t_max.max(0.05));
    let t = (t_max * rng.range(0.9, 1.0)).max(floor);
    blob.cx = organ.cx + t * dx;
    blob.cy = organ.cy + t * dy;
}

/// Multiplicative speckle with mean 1: the magnitude of a smoothed complex Gaussian field
/// (Rayleigh distributed; `sigma` is (axial, lateral), along y and x), its contrast softened
/// as a log-compressed display would.
fn speckle_field(rng: &mut Draw, n: usize, sigma: (f64, f64)) -> Vec<f64> {
    let mut re = vec![0.0; n * n];
    let mut im = vec![0.0; n * n];
    for (a, b) in re.iter_mut().zip(im.iter_mut()) {
        (*a, *b) = rng.normal_pair();
    }
    let re = blur(&re, n, sigma.1, sigma.0);
    let im = blur(&im, n, sigma.1, sigma.0);
    let amp: Vec<f64> = re
        .iter()
        .zip(&im)
        .map(|(a, b)| (a * a + b * b).sqrt().powf(0.55))
        .collect();
    let mean = amp.iter().sum::<f64>() / (amp.len().max(1) as f64);
    let mean = if mean > 0.0 { mean } else { 1.0 };
    amp.into_iter().map(|v| v / mean).collect()
}

/// A smooth random field in [0, 1] (mean about 0.5; sigma along x, along y).
fn smooth_field(rng: &mut Draw, n: usize, sigma: (f64, f64)) -> Vec<f64> {
    let mut f = vec![0.0; n * n];
    for v in f.iter_mut() {
        *v = rng.normal_pair().0;
    }
    let f = blur(&f, n, sigma.0, sigma.1);
    let sd = (f.iter().map(|v| v * v).sum::<f64>() / (f.len().max(1) as f64)).sqrt();
    let sd = if sd > 0.0 { sd } else { 1.0 };
    f.into_iter()
        .map(|v| (0.5 + 0.25 * v / sd).clamp(0.0, 1.0))
        .collect()
}

/// Separable Gaussian blur of an n x n field (sigma along x, along y), edges clamped.
fn blur(src: &[f64], n: usize, sigma_x: f64, sigma_y: f64) -> Vec<f64> {
    let kernel = |sigma: f64| -> Vec<f64> {
        let r = (3.0 * sigma).ceil().max(1.0) as isize;
        let w: Vec<f64> = (-r..=r)
            .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f64 = w.iter().sum();
        w.into_iter().map(|v| v / sum).collect()
    };
    let pass = |src: &[f64], kern: &[f64], horizontal: bool| -> Vec<f64> {
        let r = (kern.len() / 2) as isize;
        let last = n as isize - 1;
        let mut out = vec![0.0; n * n];
        for y in 0..n as isize {
            for x in 0..n as isize {
                let mut acc = 0.0;
                for (j, w) in kern.iter().enumerate() {
                    let o = j as isize - r;
                    let (xx, yy) = if horizontal {
                        ((x + o).clamp(0, last), y)
                    } else {
                        (x, (y + o).clamp(0, last))
                    };
                    acc += w * src[(yy * n as isize + xx) as usize];
                }
                out[(y * n as isize + x) as usize] = acc;
            }
        }
        out
    };
    let h = pass(src, &kernel(sigma_x.max(0.3)), true);
    pass(&h, &kernel(sigma_y.max(0.3)), false)
}
