//! A mask's per-class pixel counts and boxes (the segmenter's JSON
//! answer), counted on the mask at the client's image size.
//!
//! A 1080p mask is 2 M pixels that one request waits for, so the rows are
//! cut into bands counted on the masks' threads
//! ([`crate::threads::on_mask_threads`]) and the bands' tallies merged:
//! counts add, boxes take the outer edges, so the answer is the same
//! whatever the number of threads.

use rayon::prelude::*;
use serde::Serialize;

use crate::threads::on_mask_threads;

/// One class's pixels in the client's image.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ClassArea {
    pub label: String,
    pub index: u32,
    pub pixels: u64,
    /// x0, y0, x1, y1 (pixel edges) around its pixels; None when it has none.
    #[serde(rename = "box")]
    pub bbox: Option<[u32; 4]>,
}

/// Rows a band holds: a few dozen bands for a 1080p mask, each large enough
/// that handing it to a thread costs little against counting it.
const BAND_ROWS: usize = 32;

/// Pixel counts and boxes of each class over some rows.
struct Tally {
    pixels: Vec<u64>,
    /// x0, y0, x1, y1; x0 = u32::MAX while the class has no pixel.
    boxes: Vec<[u32; 4]>,
}

impl Tally {
    fn new(classes: usize) -> Tally {
        Tally { pixels: vec![0; classes], boxes: vec![[u32::MAX, u32::MAX, 0, 0]; classes] }
    }

    /// `count` pixels of `class` in row `y`, the first at `first` and the last at `last`.
    fn add(&mut self, class: usize, y: u32, count: u64, first: u32, last: u32) {
        self.pixels[class] += count;
        let b = &mut self.boxes[class];
        (b[0], b[2]) = (b[0].min(first), b[2].max(last + 1));
        (b[1], b[3]) = (b[1].min(y), b[3].max(y + 1));
    }

    fn merge(mut self, other: Tally) -> Tally {
        for c in 0..self.pixels.len() {
            self.pixels[c] += other.pixels[c];
            let (b, o) = (&mut self.boxes[c], other.boxes[c]);
            (b[0], b[1]) = (b[0].min(o[0]), b[1].min(o[1]));
            (b[2], b[3]) = (b[2].max(o[2]), b[3].max(o[3]));
        }
        self
    }

    fn answer(self, labels: &[String]) -> Vec<ClassArea> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let pixels = self.pixels.get(i).copied().unwrap_or(0);
                ClassArea { label: l.clone(), index: i as u32, pixels, bbox: (pixels > 0).then(|| self.boxes[i]) }
            })
            .collect()
    }
}

/// The areas of an alpha plane (`width` pixels a row): foreground where
/// the alpha is >= 128, background elsewhere, one entry per label.
pub fn of_alpha(plane: &[u8], width: u32, labels: &[String]) -> Vec<ClassArea> {
    if labels.len() < 2 {
        return of_classes(plane, width, labels, alpha_class);
    }
    by_bands(plane, width, 2, alpha_rows).answer(labels)
}

/// The areas of a plane of class indexes (`class_of` maps each byte to
/// its class; indexes past the labels are not counted).
pub fn of_classes(plane: &[u8], width: u32, labels: &[String], class_of: fn(u8) -> u8) -> Vec<ClassArea> {
    let n = labels.len();
    by_bands(plane, width, n, |rows, y0, width, tally| class_rows(rows, y0, width, tally, class_of)).answer(labels)
}

/// An alpha's class: foreground where it is >= 128 (0.5).
pub fn alpha_class(a: u8) -> u8 {
    u8::from(a >= 128)
}

/// The plane cut into bands of rows, each tallied by `rows` on the masks'
/// threads, the tallies merged.
fn by_bands(plane: &[u8], width: u32, classes: usize, rows: impl Fn(&[u8], u32, usize, &mut Tally) + Sync) -> Tally {
    let w = (width as usize).max(1);
    on_mask_threads(|| {
        plane
            .par_chunks(w * BAND_ROWS)
            .enumerate()
            .map(|(band, chunk)| {
                let mut tally = Tally::new(classes);
                rows(chunk, (band * BAND_ROWS) as u32, w, &mut tally);
                tally
            })
            .reduce(|| Tally::new(classes), Tally::merge)
    })
}

/// An alpha's two classes, a row at a time with slice scans the compiler
/// vectorises (a count, then the first and last pixel of each class),
/// instead of a branch per pixel: on a 1080p mask a fraction of the
/// general loop's time (`cutout_bench`).
fn alpha_rows(rows: &[u8], y0: u32, w: usize, tally: &mut Tally) {
    for (dy, row) in rows.chunks_exact(w).enumerate() {
        let fg = row.iter().map(|&a| u32::from(alpha_class(a))).sum::<u32>() as usize;
        for (class, count) in [(0, w - fg), (1, fg)] {
            if count == 0 {
                continue;
            }
            let is = |a: &u8| alpha_class(*a) == class as u8;
            let (first, last) = (row.iter().position(is).unwrap_or(0), row.iter().rposition(is).unwrap_or(0));
            tally.add(class, y0 + dy as u32, count as u64, first as u32, last as u32);
        }
    }
}

/// Any number of classes: a pass per row with plain counters.
fn class_rows(rows: &[u8], y0: u32, w: usize, tally: &mut Tally, class_of: fn(u8) -> u8) {
    let n = tally.pixels.len();
    let (mut count, mut first, mut last) = (vec![0u64; n], vec![u32::MAX; n], vec![0u32; n]);
    for (dy, row) in rows.chunks_exact(w).enumerate() {
        count.fill(0);
        first.fill(u32::MAX);
        for (x, &v) in row.iter().enumerate() {
            let c = class_of(v) as usize;
            if c >= n {
                continue;
            }
            count[c] += 1;
            first[c] = first[c].min(x as u32);
            last[c] = x as u32;
        }
        for c in (0..n).filter(|&c| count[c] > 0) {
            tally.add(c, y0 + dy as u32, count[c], first[c], last[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts and boxes by walking every pixel, one class at a time.
    fn walked(plane: &[u8], width: u32, labels: usize, class_of: fn(u8) -> u8) -> Vec<(u64, Option<[u32; 4]>)> {
        let w = width.max(1);
        (0..labels)
            .map(|c| {
                let at: Vec<(u32, u32)> =
                    (0..plane.len() as u32).filter(|&i| class_of(plane[i as usize]) as usize == c).map(|i| (i % w, i / w)).collect();
                let bbox = (!at.is_empty()).then(|| {
                    let (xs, ys) = (at.iter().map(|p| p.0), at.iter().map(|p| p.1));
                    [xs.clone().min().unwrap(), ys.clone().min().unwrap(), xs.max().unwrap() + 1, ys.max().unwrap() + 1]
                });
                (at.len() as u64, bbox)
            })
            .collect()
    }

    /// Masks where each class lives in a few bands only (so a merge that
    /// took one band's edges instead of the outer ones shows), of widths
    /// and heights around the band size, with fewer and more labels than
    /// classes: the banded counts equal the walk's, for class maps and alphas.
    #[test]
    fn banded_counts_equal_a_walk_over_every_pixel() {
        let mut state = 7u32;
        let mut next = |n: u32| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) % n
        };
        for (width, height) in [(1u32, 70u32), (37, 31), (37, 33), (64, 100), (200, 130), (5, 1)] {
            for _ in 0..4 {
                // Background, then a few rectangles of classes 1..4 (or alphas) scattered over the rows.
                let mut classes = vec![0u8; (width * height) as usize];
                let mut alpha = vec![0u8; classes.len()];
                for _ in 0..3 {
                    let (x0, y0) = (next(width), next(height));
                    let (x1, y1) = ((x0 + 1 + next(width / 3 + 1)).min(width), (y0 + 1 + next(height / 3 + 1)).min(height));
                    let (class, a) = (1 + next(4) as u8, [127u8, 128, 255][next(3) as usize]);
                    for y in y0..y1 {
                        for x in x0..x1 {
                            classes[(y * width + x) as usize] = class;
                            alpha[(y * width + x) as usize] = a;
                        }
                    }
                }
                for labels in [1usize, 2, 3, 6] {
                    let names: Vec<String> = (0..labels).map(|i| format!("c{i}")).collect();
                    let got: Vec<_> = of_classes(&classes, width, &names, |c| c).into_iter().map(|a| (a.pixels, a.bbox)).collect();
                    assert_eq!(got, walked(&classes, width, labels, |c| c), "classes {width}x{height}, {labels} labels");
                    let got: Vec<_> = of_alpha(&alpha, width, &names).into_iter().map(|a| (a.pixels, a.bbox)).collect();
                    assert_eq!(got, walked(&alpha, width, labels, alpha_class), "alpha {width}x{height}, {labels} labels");
                }
            }
        }
    }
}
