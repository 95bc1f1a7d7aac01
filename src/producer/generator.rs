//! Synthetic Pinterest records: pin/geo/user triples sharing an `ind`, with the value
//! formats and dirty-value rates measured on the real records in `tests/data/`, seeded
//! and reproducible. An optional dirty rate adds malformed records for the rejects path.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::clean::Kind;

const CATEGORIES: [(&str, u32); 13] = [
    ("christmas", 346),
    ("quotes", 309),
    ("tattoos", 309),
    ("travel", 304),
    ("art", 301),
    ("mens-fashion", 286),
    ("education", 280),
    ("finance", 272),
    ("home-decor", 267),
    ("diy-and-crafts", 259),
    ("event-planning", 255),
    ("beauty", 245),
    ("vehicles", 242),
];
const COUNTRIES: [(&str, u32); 30] = [
    ("Albania", 563),
    ("Algeria", 487),
    ("Afghanistan", 427),
    ("Aruba", 346),
    ("American Samoa", 317),
    ("Andorra", 232),
    ("Argentina", 232),
    ("Anguilla", 171),
    ("Armenia", 171),
    ("Azerbaijan", 160),
    ("Bahamas", 159),
    ("Bouvet Island (Bouvetoya)", 144),
    ("Austria", 135),
    ("Antarctica (the territory South of 60 deg S)", 134),
    ("Bangladesh", 134),
    ("Antigua and Barbuda", 124),
    ("Bulgaria", 109),
    ("Congo", 105),
    ("Barbados", 104),
    ("Bolivia", 95),
    ("Belize", 89),
    ("Angola", 89),
    ("Belgium", 87),
    ("British Virgin Islands", 86),
    ("Benin", 85),
    ("Bermuda", 84),
    ("Belarus", 84),
    ("Botswana", 82),
    ("Australia", 80),
    ("Cameroon", 77),
];
const FIRST: [&str; 24] = [
    "Aaron",
    "Amanda",
    "Adam",
    "Andrew",
    "Angela",
    "Abigail",
    "Anthony",
    "Christopher",
    "David",
    "Amy",
    "Brian",
    "Michael",
    "Alexander",
    "James",
    "Ashley",
    "Andrea",
    "Alexandria",
    "Daniel",
    "Jennifer",
    "John",
    "Alexandra",
    "Brandon",
    "Amber",
    "Benjamin",
];
const LAST: [&str; 24] = [
    "Anderson",
    "Adams",
    "Abbott",
    "Brown",
    "Alexander",
    "Allen",
    "Acosta",
    "Johnson",
    "Bailey",
    "Davis",
    "Baker",
    "Jones",
    "Ali",
    "Alvarado",
    "Smith",
    "Garcia",
    "Andrews",
    "Bell",
    "Alvarez",
    "Bates",
    "Bennett",
    "Carter",
    "Allison",
    "Barnes",
];
const POSTERS: [&str; 12] = [
    "YourTango",
    "Bored Panda",
    "Walmart",
    "Our Mindful Life",
    "The Minds Journal",
    "BuzzFeed",
    "TheUnstitchd",
    "Next Luxury",
    "Boop Decals",
    "One Little Project",
    "SOCIETY19",
    "Byrdie",
];
const WORDS: [&str; 24] = [
    "Art",
    "Design",
    "Ideas",
    "Home",
    "Decor",
    "Quotes",
    "Travel",
    "Tattoo",
    "Fashion",
    "Money",
    "Christmas",
    "DIY",
    "Crafts",
    "Beauty",
    "Cars",
    "Party",
    "Learning",
    "Style",
    "Modern",
    "Vintage",
    "Easy",
    "Best",
    "Simple",
    "Small",
];
const NO_TAGS: &str = "N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e";
const STORY: &str = "multi-video(story page format)";

/// 2017-10-19T15:13:42Z .. 2022-10-19T17:54:26Z, the range of geo timestamps.
const GEO_FROM: i64 = 1_508_426_022;
const GEO_TO: i64 = 1_666_202_066;
/// 2015-10-21T03:17:47Z .. 2017-10-20T10:44:26Z, the range of date_joined.
const JOIN_FROM: i64 = 1_445_397_467;
const JOIN_TO: i64 = 1_508_496_266;

pub struct Generator {
    rng: StdRng,
    next_ind: i64,
    dirty_rate: f64,
}

fn weighted<'a>(rng: &mut StdRng, items: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut pick = rng.random_range(0..total);
    for (v, w) in items {
        if pick < *w {
            return v;
        }
        pick -= w;
    }
    items[0].0
}

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn iso(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn words(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| pick(rng, &WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hex(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl Generator {
    /// `dirty_rate`: the share of records (0..=1) replaced by malformed ones.
    pub fn new(seed: u64, dirty_rate: f64) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            next_ind: 0,
            dirty_rate: dirty_rate.clamp(0.0, 1.0),
        }
    }

    /// The next triple: `(ind, [(kind, data)])`, one record per stream.
    pub fn next_triple(&mut self) -> (i64, [(Kind, Vec<u8>); 3]) {
        let ind = self.next_ind;
        self.next_ind += 1;
        let pin = self.pin(ind);
        let geo = self.geo(ind);
        let user = self.user(ind);
        let mut out = [(Kind::Pin, pin), (Kind::Geo, geo), (Kind::User, user)];
        for (kind, data) in &mut out {
            if self.dirty_rate > 0.0 && self.rng.random_bool(self.dirty_rate) {
                *data = self.dirty(*kind, ind);
            }
        }
        (ind, out)
    }

    fn pin(&mut self, ind: i64) -> Vec<u8> {
        let r = &mut self.rng;
        let category = weighted(r, &CATEGORIES);
        let kind_pick = r.random_range(0..3675);
        let media = match kind_pick {
            0..7 => None,
            7..277 => Some(STORY),
            277..387 => Some("video"),
            _ => Some("image"),
        };
        let user_error = r.random_bool(29.0 / 3675.0);
        let follower_count = if user_error {
            "User Info Error".to_owned()
        } else {
            match r.random_range(0..3646) {
                0..2711 => format!("{}k", r.random_range(1..1000)),
                2711..3353 => r.random_range(0..1000).to_string(),
                _ => format!(
                    "{}M",
                    [1, 2, 2, 3, 4, 5, 5, 6, 8, 15][r.random_range(0..10)]
                ),
            }
        };
        let story = media == Some(STORY);
        let image_src: Value = match media {
            None => Value::Null,
            Some(_) if story && r.random_bool(95.0 / 270.0) => json!("Image src error."),
            Some(STORY) | Some("video") => json!(format!(
                "https://i.pinimg.com/videos/thumbnails/originals/{}/{}.0000001.jpg",
                hex(r, 2),
                hex(r, 32)
            )),
            Some(_) => json!(format!(
                "https://i.pinimg.com/originals/{}/{}/{}/{}.jpg",
                hex(r, 2),
                hex(r, 2),
                hex(r, 2),
                hex(r, 32)
            )),
        };
        let downloaded = if image_src == json!("Image src error.") {
            0
        } else {
            1
        };
        let description = if story {
            "No description available Story format".to_owned()
        } else if r.random_bool(66.0 / 3405.0) {
            "No description available".to_owned()
        } else {
            format!("{}\u{2026}\u{a0}", words(r, 12))
        };
        let title = if user_error {
            "No Title Data Available".to_owned()
        } else {
            words(r, 5)
        };
        let tags = if r.random_bool(57.0 / 3675.0) {
            NO_TAGS.to_owned()
        } else {
            (0..9).map(|_| words(r, 2)).collect::<Vec<_>>().join(",")
        };
        let poster = if user_error {
            "User Info Error"
        } else {
            pick(r, &POSTERS)
        };
        let v = json!({
            "index": ind,
            "unique_id": format!("{}-{}-{}-{}-{}", hex(r, 8), hex(r, 4), hex(r, 4), hex(r, 4), hex(r, 12)),
            "title": title,
            "description": description,
            "poster_name": poster,
            "follower_count": follower_count,
            "tag_list": tags,
            "is_image_or_video": media,
            "image_src": image_src,
            "downloaded": downloaded,
            "save_location": format!("Local save in /data/{category}"),
            "category": category,
        });
        v.to_string().into_bytes()
    }

    fn geo(&mut self, ind: i64) -> Vec<u8> {
        let r = &mut self.rng;
        // Skewed to the south-west corner, as the real data is.
        let (lat, lon) = if r.random_bool(0.3) {
            (-89.5173, -179.689)
        } else {
            let lat = -90.0 + 180.0 * r.random::<f64>().powi(3);
            let lon = -180.0 + 360.0 * r.random::<f64>().powi(3);
            ((lat * 1e4).round() / 1e4, (lon * 1e3).round() / 1e3)
        };
        json!({
            "ind": ind,
            "timestamp": iso(r.random_range(GEO_FROM..=GEO_TO)),
            "latitude": lat,
            "longitude": lon,
            "country": weighted(r, &COUNTRIES),
        })
        .to_string()
        .into_bytes()
    }

    fn user(&mut self, ind: i64) -> Vec<u8> {
        let r = &mut self.rng;
        // Ages 20-60, a fifth of them 20 as in the real data, the rest falling off.
        let age = if r.random_bool(0.19) {
            20
        } else {
            20 + (40.0 * r.random::<f64>().powf(1.6)) as i64 + 1
        };
        json!({
            "ind": ind,
            "first_name": pick(r, &FIRST),
            "last_name": pick(r, &LAST),
            "age": age.min(60),
            "date_joined": iso(r.random_range(JOIN_FROM..=JOIN_TO)),
        })
        .to_string()
        .into_bytes()
    }

    /// A malformed record: bad JSON, a wrong type, a missing key or not an object.
    fn dirty(&mut self, kind: Kind, ind: i64) -> Vec<u8> {
        let key = if kind == Kind::Pin { "index" } else { "ind" };
        match self.rng.random_range(0..4) {
            0 => format!("{{\"{key}\": {ind}, \"broken\": ").into_bytes(),
            1 => match kind {
                Kind::Pin => json!({"index": ind, "follower_count": "lots"}),
                Kind::Geo => json!({"ind": ind, "latitude": "north", "longitude": 1.0}),
                Kind::User => json!({"ind": ind, "age": "old"}),
            }
            .to_string()
            .into_bytes(),
            2 => json!({ "not_the_key": ind }).to_string().into_bytes(),
            _ => json!([key, ind]).to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::{clean_into, RecordMeta, RejectsColumns, TableColumns};

    const META: RecordMeta<'static> = RecordMeta {
        shard_id: "s",
        sequence_number: "1",
        sub_sequence_number: 0,
        arrival_micros: None,
    };

    #[test]
    fn same_seed_same_records() {
        let (mut a, mut b) = (Generator::new(7, 0.1), Generator::new(7, 0.1));
        for _ in 0..100 {
            assert_eq!(a.next_triple().1, b.next_triple().1);
        }
    }

    #[test]
    fn clean_records_clean_and_dirty_ones_reject() {
        let mut g = Generator::new(1, 0.0);
        for _ in 0..2000 {
            let (_, triple) = g.next_triple();
            for (kind, data) in triple {
                let mut rows = TableColumns::new(kind);
                let mut rejects = RejectsColumns::default();
                assert!(
                    clean_into(kind, &data, &META, kind.name(), &mut rows, &mut rejects).is_ok(),
                    "{}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
        let mut g = Generator::new(1, 1.0);
        for _ in 0..200 {
            let (_, triple) = g.next_triple();
            for (kind, data) in triple {
                let mut rows = TableColumns::new(kind);
                let mut rejects = RejectsColumns::default();
                assert!(
                    clean_into(kind, &data, &META, kind.name(), &mut rows, &mut rejects).is_err(),
                    "{}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }

    /// Shares of value shapes, computed the same way over generated and real records.
    fn shares(
        records: impl Iterator<Item = Vec<u8>>,
        shape: impl Fn(&serde_json::Value) -> String,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut counts = std::collections::BTreeMap::new();
        let mut n = 0.0;
        for r in records {
            let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
            *counts.entry(shape(&v)).or_insert(0.0) += 1.0;
            n += 1.0;
        }
        counts.into_iter().map(|(k, c)| (k, c / n)).collect()
    }

    fn follower_shape(v: &serde_json::Value) -> String {
        match v["follower_count"].as_str() {
            Some("User Info Error") => "error".into(),
            Some(s) if s.ends_with('k') => "k".into(),
            Some(s) if s.ends_with('M') => "M".into(),
            Some(_) => "plain".into(),
            None => "null".into(),
        }
    }

    /// The generator's formats and placeholder rates match the real sample within 2.5
    /// percentage points (the real records are read from `tests/data/`).
    #[test]
    fn distributions_match_the_real_records() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let read = |f: &str| -> Vec<Vec<u8>> {
            std::fs::read_to_string(path.join(f))
                .expect("the sample records in tests/data")
                .lines()
                .map(|l| l.as_bytes().to_vec())
                .collect()
        };
        let mut g = Generator::new(5, 0.0);
        let (mut pins, mut users) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let (_, t) = g.next_triple();
            pins.push(t[0].1.clone());
            users.push(t[2].1.clone());
        }
        type Shape = Box<dyn Fn(&serde_json::Value) -> String>;
        let checks: [(&str, Shape); 5] = [
            ("follower_count format", Box::new(follower_shape)),
            (
                "media",
                Box::new(|v| v["is_image_or_video"].as_str().unwrap_or("null").to_owned()),
            ),
            (
                "category",
                Box::new(|v| v["category"].as_str().unwrap_or("").to_owned()),
            ),
            (
                "no-tags marker",
                Box::new(|v| (v["tag_list"] == NO_TAGS).to_string()),
            ),
            (
                "image src error",
                Box::new(|v| (v["image_src"] == "Image src error.").to_string()),
            ),
        ];
        for (what, shape) in &checks {
            let real = shares(read("pin.ndjson").into_iter(), shape);
            let generated = shares(pins.iter().cloned(), shape);
            for (k, r) in &real {
                let got = generated.get(k).copied().unwrap_or(0.0);
                assert!(
                    (got - r).abs() < 0.025,
                    "{what} {k}: real {r:.3}, generated {got:.3}"
                );
            }
        }
        let age20 = |v: &serde_json::Value| (v["age"] == 20).to_string();
        let (real, generated) = (
            shares(read("user.ndjson").into_iter(), age20),
            shares(users.into_iter(), age20),
        );
        assert!(
            (real["true"] - generated["true"]).abs() < 0.025,
            "age 20: real {:.3}, generated {:.3}",
            real["true"],
            generated["true"]
        );
    }
}
