//! What the image shows matches the attributes: the lesion's brightness against the organ, its
//! quadrant, its measured diameter, the irregularity of its outline, and where everything lies.

use echovlm_phantom::{
    Attributes, DEFAULT_SIZE, Echogenicity, Horizontal, Lesion, Margin, PX_PER_CM_AT_DEFAULT_SIZE,
    Rendering, SizeClass, Vertical, render_with_mask,
};
use image::GrayImage;

fn inside(m: &GrayImage, x: i64, y: i64) -> bool {
    x >= 0
        && y >= 0
        && x < i64::from(m.width())
        && y < i64::from(m.height())
        && m.get_pixel(x as u32, y as u32).0[0] > 0
}

/// The pixels within `r` (Chebyshev distance) of the mask.
fn dilate(m: &GrayImage, r: i64) -> GrayImage {
    GrayImage::from_fn(m.width(), m.height(), |x, y| {
        let (x, y) = (i64::from(x), i64::from(y));
        let hit = (-r..=r).any(|dy| (-r..=r).any(|dx| inside(m, x + dx, y + dy)));
        image::Luma([if hit { 255 } else { 0 }])
    })
}

/// The pixels whose whole (2r+1)-square lies in the mask.
fn erode(m: &GrayImage, r: i64) -> GrayImage {
    GrayImage::from_fn(m.width(), m.height(), |x, y| {
        let (x, y) = (i64::from(x), i64::from(y));
        let all = (-r..=r).all(|dy| (-r..=r).all(|dx| inside(m, x + dx, y + dy)));
        image::Luma([if all { 255 } else { 0 }])
    })
}

fn count(m: &GrayImage) -> usize {
    m.pixels().filter(|p| p.0[0] > 0).count()
}

fn mean_where(r: &Rendering, m: &GrayImage) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (x, y, p) in m.enumerate_pixels() {
        if p.0[0] > 0 {
            sum += f64::from(r.image.get_pixel(x, y).0[0]);
            n += 1;
        }
    }
    assert!(n > 0, "empty region");
    sum / n as f64
}

/// The pixels `inner + 1` to `outer` pixels outside the lesion (by dilation of its mask) that lie
/// in the organ at least two pixels inside its outline (clear of the capsule).
fn organ_band(r: &Rendering, inner: i64, outer: i64) -> GrayImage {
    let (near, far) = (dilate(&r.lesion_mask, inner), dilate(&r.lesion_mask, outer));
    let organ = erode(&r.organ_mask, 2);
    GrayImage::from_fn(r.image.width(), r.image.height(), |x, y| {
        let on = far.get_pixel(x, y).0[0] > 0
            && near.get_pixel(x, y).0[0] == 0
            && organ.get_pixel(x, y).0[0] > 0;
        image::Luma([if on { 255 } else { 0 }])
    })
}

/// Mean brightness inside the lesion (its rim left out when enough remains) and in a ring of
/// organ around it (clear of the lesion's blended edge and of the capsule).
fn lesion_and_ring(r: &Rendering) -> (f64, f64) {
    let core = erode(&r.lesion_mask, 1);
    let lesion = if count(&core) >= 8 {
        mean_where(r, &core)
    } else {
        mean_where(r, &r.lesion_mask)
    };
    (lesion, mean_where(r, &organ_band(r, 2, 7)))
}

fn centroid(m: &GrayImage) -> (f64, f64) {
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
    for (x, y, p) in m.enumerate_pixels() {
        if p.0[0] > 0 {
            sx += f64::from(x) + 0.5;
            sy += f64::from(y) + 0.5;
            n += 1.0;
        }
    }
    (sx / n, sy / n)
}

/// Perimeter (pixel edges between the mask and the rest) squared over area, divided by 4 pi:
/// about 1.5-1.9 for a small digitised ellipse, larger for a lobulated or toothed outline.
fn compactness(m: &GrayImage) -> f64 {
    let mut edges = 0usize;
    for (x, y, p) in m.enumerate_pixels() {
        if p.0[0] == 0 {
            continue;
        }
        let (x, y) = (i64::from(x), i64::from(y));
        for (dx, dy) in [(1, 0), (-1, 0), (0, 1), (0, -1)] {
            if !inside(m, x + dx, y + dy) {
                edges += 1;
            }
        }
    }
    let area = count(m) as f64;
    (edges as f64).powi(2) / (4.0 * std::f64::consts::PI * area)
}

fn diameter_mm(r: &Rendering) -> f64 {
    let area = count(&r.lesion_mask) as f64;
    10.0 * (4.0 * area / std::f64::consts::PI).sqrt() / r.px_per_cm
}

/// Every combination of attributes, each with the smallest and the largest diameter of its
/// class, drawn with a few seeds.
fn cases() -> Vec<(u64, Attributes)> {
    let mut out = Vec::new();
    for (i, a) in Attributes::all_combinations().into_iter().enumerate() {
        let Some(l) = a.lesion else { continue };
        let (lo, hi) = l.size.diameter_range_mm();
        for (j, d) in [lo, hi].into_iter().enumerate() {
            let seed = 50_000 + 10 * i as u64 + j as u64;
            out.push((
                seed,
                Attributes {
                    lesion: Some(Lesion {
                        diameter_mm: d,
                        ..l
                    }),
                },
            ));
        }
    }
    out
}

#[test]
fn lesion_brightness_orders_anechoic_hypoechoic_organ_hyperechoic() {
    let mut ratios: Vec<(Echogenicity, f64, f64)> = Vec::new();
    for (seed, a) in cases() {
        let l = a.lesion.unwrap();
        let r = render_with_mask(seed, &a, DEFAULT_SIZE);
        let (lesion, ring) = lesion_and_ring(&r);
        let ratio = lesion / ring;
        match l.echogenicity {
            Echogenicity::Anechoic => {
                assert!(
                    ratio < 0.2 && lesion < 20.0,
                    "seed {seed} {l:?}: {lesion:.1} vs {ring:.1}"
                )
            }
            // measured 0.39 to 0.68 (the smallest lesions blend the most with the organ)
            Echogenicity::Hypoechoic => assert!(
                (0.35..0.75).contains(&ratio),
                "seed {seed} {l:?}: {lesion:.1} vs {ring:.1}"
            ),
            Echogenicity::Hyperechoic => {
                assert!(ratio > 1.45, "seed {seed} {l:?}: {lesion:.1} vs {ring:.1}")
            }
        }
        ratios.push((l.echogenicity, lesion, ring));
    }
    // and across images: every anechoic lesion darker than every hypoechoic one, every
    // hypoechoic one darker than every organ, every organ darker than every hyperechoic lesion
    let of = |e: Echogenicity| ratios.iter().filter(move |r| r.0 == e);
    let max_an = of(Echogenicity::Anechoic).map(|r| r.1).fold(0.0, f64::max);
    let min_hypo = of(Echogenicity::Hypoechoic)
        .map(|r| r.1)
        .fold(f64::MAX, f64::min);
    let max_hypo = of(Echogenicity::Hypoechoic)
        .map(|r| r.1)
        .fold(0.0, f64::max);
    let min_organ = ratios.iter().map(|r| r.2).fold(f64::MAX, f64::min);
    let max_organ = ratios.iter().map(|r| r.2).fold(0.0, f64::max);
    let min_hyper = of(Echogenicity::Hyperechoic)
        .map(|r| r.1)
        .fold(f64::MAX, f64::min);
    println!(
        "anechoic <= {max_an:.1}, hypoechoic {min_hypo:.1}-{max_hypo:.1}, organ {min_organ:.1}-{max_organ:.1}, hyperechoic >= {min_hyper:.1}"
    );
    // hypoechoic is a grey, not a near black: measured 9.8 against 39.1
    assert!(max_an + 25.0 < min_hypo);
    assert!(max_hypo + 5.0 < min_organ);
    assert!(max_organ + 5.0 < min_hyper);
}

#[test]
fn lesion_lies_in_its_quadrant_inside_the_organ_inside_the_fan() {
    for (seed, a) in cases() {
        let l = a.lesion.unwrap();
        let r = render_with_mask(seed, &a, DEFAULT_SIZE);
        let (cx, cy) = centroid(&r.lesion_mask);
        let (ox, oy) = r.organ_centre;
        let (dx, dy) = (cx - ox, cy - oy);
        let want_x = if l.horizontal == Horizontal::Left {
            -1.0
        } else {
            1.0
        };
        let want_y = if l.vertical == Vertical::Upper {
            -1.0
        } else {
            1.0
        };
        assert!(dx * want_x >= 2.0, "seed {seed} {l:?}: dx {dx:.1}");
        assert!(dy * want_y >= 2.0, "seed {seed} {l:?}: dy {dy:.1}");
        // the lesion within the organ, clear of the capsule
        let organ = erode(&r.organ_mask, 1);
        for (x, y, p) in r.lesion_mask.enumerate_pixels() {
            if p.0[0] > 0 {
                assert!(
                    organ.get_pixel(x, y).0[0] > 0,
                    "seed {seed}: lesion pixel {x},{y}"
                );
            }
        }
        // the organ within the fan
        for (x, y, p) in r.organ_mask.enumerate_pixels() {
            if p.0[0] > 0 {
                assert!(
                    r.fan_mask.get_pixel(x, y).0[0] > 0,
                    "seed {seed}: organ pixel {x},{y}"
                );
            }
        }
    }
}

#[test]
fn measured_diameter_falls_in_the_size_class() {
    let mut worst = 0.0f64;
    for (seed, a) in cases() {
        let l = a.lesion.unwrap();
        let r = render_with_mask(seed, &a, DEFAULT_SIZE);
        let (lo, hi) = (PX_PER_CM_AT_DEFAULT_SIZE.0, PX_PER_CM_AT_DEFAULT_SIZE.1);
        assert!(
            (lo..=hi).contains(&r.px_per_cm),
            "seed {seed}: {}",
            r.px_per_cm
        );
        let d = diameter_mm(&r);
        let (min, max) = l.size.diameter_range_mm();
        // digitising a lesion a few pixels across moves its area a little
        let slack = 0.6;
        assert!(
            d >= f64::from(min) - slack && d <= f64::from(max) + slack,
            "seed {seed} {l:?}: measured {d:.2} mm"
        );
        worst = worst.max((d - f64::from(l.diameter_mm)).abs());
    }
    println!("largest diameter error {worst:.2} mm");
    assert!(worst < 0.6);
}

/// Mean brightness behind the lesion (the middle half of its columns, 3 to 12 pixels below its
/// lowest pixel, clear of it), over that of the same pixels in the same phantom drawn without
/// the lesion (same organ, same speckle).
fn behind_over_no_lesion(seed: u64, r: &Rendering) -> f64 {
    let plain = render_with_mask(seed, &Attributes { lesion: None }, DEFAULT_SIZE);
    assert_eq!(
        plain.organ_mask, r.organ_mask,
        "seed {seed}: not the same organ"
    );
    let (mut x0, mut x1, mut y1) = (u32::MAX, 0, 0);
    for (x, y, p) in r.lesion_mask.enumerate_pixels() {
        if p.0[0] > 0 {
            (x0, x1, y1) = (x0.min(x), x1.max(x), y1.max(y));
        }
    }
    let quarter = (x1 - x0 + 1) / 4;
    let clear = dilate(&r.lesion_mask, 2);
    let behind = GrayImage::from_fn(r.image.width(), r.image.height(), |x, y| {
        let on = (y1 + 3..=y1 + 12).contains(&y)
            && (x0 + quarter..=x1 - quarter).contains(&x)
            && r.fan_mask.get_pixel(x, y).0[0] > 0
            && clear.get_pixel(x, y).0[0] == 0;
        image::Luma([if on { 255 } else { 0 }])
    });
    mean_where(r, &behind) / mean_where(&plain, &behind)
}

#[test]
fn irregular_lesions_shadow_and_smooth_fluid_enhances_what_lies_behind() {
    for (seed, a) in cases() {
        let l = a.lesion.unwrap();
        let r = render_with_mask(seed, &a, DEFAULT_SIZE);
        let ratio = behind_over_no_lesion(seed, &r);
        match (l.echogenicity, l.margin) {
            // a spiculated lesion shadows it, whatever it holds (measured 0.54 to 0.63)
            (_, Margin::Irregular) => assert!(ratio < 0.7, "seed {seed} {l:?}: {ratio:.2}"),
            // smooth fluid enhances it (measured 1.38 to 1.54)
            (Echogenicity::Anechoic, Margin::Smooth) => {
                assert!(ratio > 1.3, "seed {seed} {l:?}: {ratio:.2}")
            }
            // a smooth solid lesion leaves it as it is
            (_, Margin::Smooth) => {
                assert!((ratio - 1.0).abs() < 1e-9, "seed {seed} {l:?}: {ratio:.3}")
            }
        }
    }
}

#[test]
fn irregular_outlines_are_less_compact_than_smooth_ones() {
    for size in SizeClass::ALL {
        let (mut smooth, mut irregular) = (Vec::new(), Vec::new());
        for (seed, a) in cases() {
            let l = a.lesion.unwrap();
            if l.size != *size {
                continue;
            }
            let c = compactness(&render_with_mask(seed, &a, DEFAULT_SIZE).lesion_mask);
            match l.margin {
                Margin::Smooth => smooth.push(c),
                Margin::Irregular => irregular.push(c),
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let max_smooth = smooth.iter().copied().fold(0.0, f64::max);
        let min_irregular = irregular.iter().copied().fold(f64::MAX, f64::min);
        println!(
            "{size}: smooth mean {:.2} max {max_smooth:.2}; irregular mean {:.2} min {min_irregular:.2}",
            mean(&smooth),
            mean(&irregular)
        );
        // the angular teeth make every irregular outline, the smallest included, far less
        // compact than any smooth one
        assert!(mean(&irregular) > 2.0 * mean(&smooth), "{size}");
        assert!(min_irregular > 1.3 * max_smooth, "{size}");
    }
}

#[test]
fn the_scale_follows_the_image_size() {
    let a = Attributes {
        lesion: Some(Lesion {
            echogenicity: Echogenicity::Hypoechoic,
            vertical: Vertical::Lower,
            horizontal: Horizontal::Right,
            size: SizeClass::Medium,
            margin: Margin::Smooth,
            diameter_mm: 14,
        }),
    };
    let small = render_with_mask(9, &a, DEFAULT_SIZE);
    let big = render_with_mask(9, &a, 2 * DEFAULT_SIZE);
    assert_eq!(big.image.dimensions(), (224, 224));
    assert!((big.px_per_cm - 2.0 * small.px_per_cm).abs() < 1e-9);
    assert!(
        (diameter_mm(&big) - 14.0).abs() < 0.4,
        "{}",
        diameter_mm(&big)
    );
    assert!((diameter_mm(&small) - 14.0).abs() < 0.6);
}

#[test]
fn scale_ticks_are_one_centimetre_apart() {
    let r = render_with_mask(3, &Attributes::NO_LESION, DEFAULT_SIZE);
    // the tick column: left of the scale line, right of the fan
    let x = DEFAULT_SIZE - 4;
    let rows: Vec<u32> = (0..DEFAULT_SIZE)
        .filter(|&y| r.image.get_pixel(x, y).0[0] > 200)
        .collect();
    assert!(rows.len() >= 6, "{rows:?}");
    for w in rows.windows(2) {
        let gap = f64::from(w[1] - w[0]);
        assert!(
            (gap - r.px_per_cm).abs() <= 1.0,
            "{rows:?} at {} px/cm",
            r.px_per_cm
        );
    }
    // nothing drawn outside the fan but the scale
    for (x, y, p) in r.image.enumerate_pixels() {
        if x < DEFAULT_SIZE - 8 && r.fan_mask.get_pixel(x, y).0[0] == 0 {
            assert_eq!(p.0, [0, 0, 0], "{x},{y}");
        }
    }
}

#[test]
fn no_lesion_has_an_empty_mask_and_odd_sizes_do_not_panic() {
    let r = render_with_mask(1, &Attributes::NO_LESION, DEFAULT_SIZE);
    assert_eq!(count(&r.lesion_mask), 0);
    assert!(r.lesion_diameter_mm.is_none());
    assert!(count(&r.organ_mask) > 3000);
    // a diameter outside its class is clamped into it, sizes into MIN_SIZE..=MAX_SIZE
    let odd = Attributes {
        lesion: Some(Lesion {
            echogenicity: Echogenicity::Anechoic,
            vertical: Vertical::Upper,
            horizontal: Horizontal::Left,
            size: SizeClass::Small,
            margin: Margin::Irregular,
            diameter_mm: 400,
        }),
    };
    let r = render_with_mask(2, &odd, 0);
    assert_eq!(r.image.width(), echovlm_phantom::MIN_SIZE);
    assert_eq!(r.lesion_diameter_mm, Some(8));
    let r = render_with_mask(2, &odd, 37);
    assert_eq!(r.image.width(), 37);
}
