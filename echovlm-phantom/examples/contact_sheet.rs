//! Writes a contact sheet of phantoms: a grid of images, each enlarged for viewing, with the
//! attributes of each printed on stdout in grid order.
//!
//! `cargo run --release -p echovlm-phantom --example contact_sheet -- OUT.png [START [COUNT [COLUMNS [SCALE]]]]`

use echovlm_phantom::{DEFAULT_SIZE, Phantom};
use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: contact_sheet OUT.png [START [COUNT [COLUMNS [SCALE]]]]")?;
    let num = |i: usize, default: u64| -> Result<u64, Box<dyn std::error::Error>> {
        Ok(match args.get(i) {
            Some(s) => s.parse()?,
            None => default,
        })
    };
    let start = num(1, 0)?;
    let count = num(2, 12)?.max(1);
    let columns = num(3, 4)?.clamp(1, 64) as u32;
    let scale = num(4, 2)?.clamp(1, 8) as u32;
    let cell = DEFAULT_SIZE * scale;
    let rows = count.div_ceil(u64::from(columns)) as u32;
    let gap = 4;
    let mut sheet = RgbImage::from_pixel(
        columns * (cell + gap) + gap,
        rows * (cell + gap) + gap,
        Rgb([40, 40, 60]),
    );
    for i in 0..count {
        let seed = start + i;
        let phantom = Phantom::new(seed);
        let big = resize(
            &phantom.image(DEFAULT_SIZE),
            cell,
            cell,
            FilterType::Nearest,
        );
        let (col, row) = (
            (i % u64::from(columns)) as u32,
            (i / u64::from(columns)) as u32,
        );
        image::imageops::replace(
            &mut sheet,
            &big,
            i64::from(gap + col * (cell + gap)),
            i64::from(gap + row * (cell + gap)),
        );
        println!("{seed}: {}", serde_json::to_string(&phantom.attributes)?);
    }
    sheet.save(out)?;
    Ok(())
}
