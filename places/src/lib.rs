//! The embedded offline places index of herd: GeoNames places in an R*-tree.
//!
//! A crate of its own (re-exported as `herd::places::offline`) so that debug builds
//! compile it optimized (`[profile.dev.package.herd-places]` in the workspace):
//! every server process builds this index at start, and unoptimized, the generic
//! R*-tree bulk load and parsing monomorphised into herd took seconds a process.
//!
//! Each place is a point on the unit sphere, so a radius on the Earth's surface is a chord in 3-D
//! and the antimeridian and the poles need no special cases. Each place's JSON is rendered once at
//! load time; a search only clones `Arc`s.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use flate2::read::GzDecoder;
use rstar::primitives::GeomWithData;
use rstar::{PointDistance as _, RTree};

/// `data/places.tsv.gz`, built by `data/build_places.py` (see `data/README.md`).
static DATASET: &[u8] = include_bytes!("../../data/places.tsv.gz");

/// Mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// geonameid, name, lat, lon, country name, admin1 name (may be empty), population.
const FIELDS: usize = 7;

type Place = GeomWithData<[f64; 3], Arc<str>>;

/// GeoNames places indexed by position, each pre-rendered as a Google Places result.
pub struct OfflineIndex {
    tree: RTree<Place>,
}

/// Why the places data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("embedded places dataset: {0}")]
    Decompress(#[source] io::Error),
    #[error("places data line {line}: {reason}")]
    BadRow { line: usize, reason: String },
}

impl OfflineIndex {
    /// Parses the embedded dataset and bulk-loads the index.
    pub fn load() -> Result<OfflineIndex, OfflineError> {
        Self::from_tsv(&dataset_text()?)
    }

    /// Parses TSV text in the format of `data/places.tsv.gz` and bulk-loads the index.
    pub fn from_tsv(tsv: &str) -> Result<OfflineIndex, OfflineError> {
        let mut places = Vec::with_capacity(tsv.lines().count());
        let mut render = Renderer::default();
        for (i, line) in tsv.lines().enumerate() {
            let bad = |reason: String| OfflineError::BadRow {
                line: i + 1,
                reason,
            };
            let row = Row::parse(line).map_err(bad)?;
            let json = render.place(&row).map_err(|e| bad(e.to_string()))?;
            places.push(Place::new(unit_vector(row.lat, row.lon), json));
        }
        Ok(OfflineIndex {
            tree: RTree::bulk_load(places),
        })
    }

    pub fn len(&self) -> usize {
        self.tree.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` places within `radius_m` metres (great-circle) of (lat, lon), nearest first.
    pub fn search(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Vec<Arc<str>> {
        if limit == 0 || radius_m.is_nan() || radius_m < 0.0 {
            return Vec::new();
        }
        let max_chord_2 = chord(radius_m).powi(2);
        let center = unit_vector(lat, lon);
        // Everything in the radius (a plain tree walk, cheaper than a nearest-first
        // heap for the few dozen places a radius of at most 50 km holds), then the
        // nearest `limit` of them in order. Ties go by name, so answers are stable.
        let mut found: Vec<(f64, &Arc<str>)> = self
            .tree
            .locate_within_distance(center, max_chord_2)
            .map(|place| (place.distance_2(&center), &place.data))
            .collect();
        let order = |a: &(f64, &Arc<str>), b: &(f64, &Arc<str>)| {
            a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
        };
        if found.len() > limit {
            found.select_nth_unstable_by(limit - 1, order);
            found.truncate(limit);
        }
        found.sort_unstable_by(order);
        found
            .into_iter()
            .map(|(_, place)| Arc::clone(place))
            .collect()
    }
}

/// The embedded dataset, decompressed.
fn dataset_text() -> Result<String, OfflineError> {
    // The gzip trailer ends with the uncompressed size (mod 2^32): one allocation, no regrowth.
    let size_hint = DATASET
        .last_chunk::<4>()
        .map_or(0, |n| u32::from_le_bytes(*n) as usize);
    let mut tsv = String::with_capacity(size_hint);
    GzDecoder::new(DATASET)
        .read_to_string(&mut tsv)
        .map_err(OfflineError::Decompress)?;
    Ok(tsv)
}

/// One place of the embedded dataset, as plain values.
#[derive(Clone, Debug, PartialEq)]
pub struct RawPlace {
    pub geonameid: u64,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

/// Every place of the embedded dataset, in file order: for tools that load the same points
/// elsewhere (`herd-bench load-redis-places`).
pub fn raw_places() -> Result<Vec<RawPlace>, OfflineError> {
    dataset_text()?
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let row = Row::parse(line).map_err(|reason| OfflineError::BadRow {
                line: i + 1,
                reason,
            })?;
            Ok(RawPlace {
                geonameid: row.id,
                name: row.name.to_owned(),
                lat: row.lat,
                lon: row.lon,
            })
        })
        .collect()
}

impl fmt::Debug for OfflineIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfflineIndex")
            .field("places", &self.len())
            .finish()
    }
}

/// The point on the unit sphere at (lat, lon) in degrees.
pub fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (sin_lat, cos_lat) = lat.to_radians().sin_cos();
    let (sin_lon, cos_lon) = lon.to_radians().sin_cos();
    [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
}

/// The straight-line distance through the unit sphere between two points `metres` apart on the
/// Earth's surface; beyond half the circumference every point is within reach.
pub fn chord(metres: f64) -> f64 {
    let half_angle = (metres / (2.0 * EARTH_RADIUS_M)).min(std::f64::consts::FRAC_PI_2);
    2.0 * half_angle.sin()
}

/// One TSV row, borrowing its text fields.
struct Row<'a> {
    id: u64,
    name: &'a str,
    lat: f64,
    lat_text: &'a str,
    lon: f64,
    lon_text: &'a str,
    country: &'a str,
    admin1: &'a str,
}

impl<'a> Row<'a> {
    fn parse(line: &'a str) -> Result<Row<'a>, String> {
        let found = line.split('\t').count();
        if found != FIELDS {
            return Err(format!(
                "expected {FIELDS} tab-separated fields, found {found}"
            ));
        }
        let mut fields = line.split('\t');
        let [id, name, lat_text, lon_text, country, admin1, population] =
            std::array::from_fn(|_| fields.next().unwrap_or_default());
        let id = id
            .parse()
            .map_err(|_| format!("geonameid {id:?} is not a number"))?;
        if name.is_empty() {
            return Err("empty name".into());
        }
        let lat = coordinate("latitude", lat_text, 90.0)?;
        let lon = coordinate("longitude", lon_text, 180.0)?;
        if country.is_empty() {
            return Err("empty country name".into());
        }
        population
            .parse::<u64>()
            .map_err(|_| format!("population {population:?} is not a number"))?;
        Ok(Row {
            id,
            name,
            lat,
            lat_text,
            lon,
            lon_text,
            country,
            admin1,
        })
    }
}

fn coordinate(what: &str, text: &str, bound: f64) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (-bound..=bound).contains(&value) => Ok(value),
        _ => Err(format!(
            "{what} {text:?} is not a number in [-{bound}, {bound}]"
        )),
    }
}

/// Renders places as compact JSON, reusing its buffers across rows.
#[derive(Default)]
struct Renderer {
    json: Vec<u8>,
    vicinity: String,
}

impl Renderer {
    /// The row as a Google Places Nearby Search result, keys in Google's order.
    fn place(&mut self, row: &Row<'_>) -> io::Result<Arc<str>> {
        let out = &mut self.json;
        out.clear();
        out.extend_from_slice(br#"{"geometry":{"location":{"lat":"#);
        json_number(out, row.lat_text, row.lat)?;
        out.extend_from_slice(br#","lng":"#);
        json_number(out, row.lon_text, row.lon)?;
        out.extend_from_slice(br#"}},"name":"#);
        serde_json::to_writer(&mut *out, row.name)?;
        write!(out, r#","place_id":"geonames:{}""#, row.id)?;
        out.extend_from_slice(br#","types":["locality","political"],"vicinity":"#);
        self.vicinity.clear();
        if !row.admin1.is_empty() {
            self.vicinity.push_str(row.admin1);
            self.vicinity.push_str(", ");
        }
        self.vicinity.push_str(row.country);
        serde_json::to_writer(&mut *out, self.vicinity.as_str())?;
        out.push(b'}');
        let text = std::str::from_utf8(out).map_err(io::Error::other)?;
        Ok(Arc::from(text))
    }
}

/// Writes the source text when it is already a JSON number (it keeps the dataset's precision as
/// written), else the parsed value.
fn json_number(out: &mut Vec<u8>, text: &str, value: f64) -> io::Result<()> {
    if is_json_number(text) {
        out.extend_from_slice(text.as_bytes());
        Ok(())
    } else {
        serde_json::to_writer(out, &value).map_err(io::Error::from)
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number grammar.
fn is_json_number(text: &str) -> bool {
    fn digits(s: &[u8]) -> usize {
        s.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let s = text.as_bytes();
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(&s[i..]),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        let n = digits(&s[i + 1..]);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let n = digits(&s[i..]);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn row(id: u64, name: &str, lat: &str, lon: &str, admin1: &str) -> String {
        format!("{id}\t{name}\t{lat}\t{lon}\tTestland\t{admin1}\t100\n")
    }

    /// The latitude `metres` north of the equator along a meridian (exact on a sphere).
    fn lat_at(metres: f64) -> String {
        (metres / EARTH_RADIUS_M).to_degrees().to_string()
    }

    fn names(found: &[Arc<str>]) -> Vec<String> {
        found
            .iter()
            .map(|json| {
                let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
                value["name"].as_str().expect("a name").to_owned()
            })
            .collect()
    }

    fn index_of(rows: &[String]) -> OfflineIndex {
        OfflineIndex::from_tsv(&rows.concat()).expect("valid TSV")
    }

    #[test]
    fn renders_a_google_places_result() {
        let tsv = "5368361\tLos Angeles\t34.05223\t-118.24368\tUnited States\tCalifornia\t3820914\n\
                   3038832\tVila\t42.53176\t1.56654\tAndorra\t\t1418\n";
        let index = OfflineIndex::from_tsv(tsv).unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(
            &*index.search(34.05223, -118.24368, 1.0, 5)[0],
            r#"{"geometry":{"location":{"lat":34.05223,"lng":-118.24368}},"name":"Los Angeles","place_id":"geonames:5368361","types":["locality","political"],"vicinity":"California, United States"}"#
        );
        assert_eq!(
            &*index.search(42.53176, 1.56654, 1.0, 5)[0],
            r#"{"geometry":{"location":{"lat":42.53176,"lng":1.56654}},"name":"Vila","place_id":"geonames:3038832","types":["locality","political"],"vicinity":"Andorra"}"#
        );
    }

    #[test]
    fn nearest_first() {
        let index = index_of(&[
            row(1, "third", &lat_at(3_000.0), "0", ""),
            row(2, "first", &lat_at(1_000.0), "0", ""),
            row(3, "fourth", &lat_at(-4_000.0), "0", ""),
            row(4, "second", "0", &lat_at(2_000.0), ""),
        ]);
        assert_eq!(
            names(&index.search(0.0, 0.0, 10_000.0, 10)),
            ["first", "second", "third", "fourth"]
        );
    }

    #[test]
    fn radius_cut() {
        let index = index_of(&[
            row(1, "inside", &lat_at(9_999.0), "0", ""),
            row(2, "outside", &lat_at(10_001.0), "0", ""),
        ]);
        assert_eq!(names(&index.search(0.0, 0.0, 10_000.0, 10)), ["inside"]);
        assert_eq!(
            names(&index.search(0.0, 0.0, 10_002.0, 10)),
            ["inside", "outside"]
        );
        assert!(index.search(0.0, 0.0, 9_998.0, 10).is_empty());
        // One degree of longitude at 60°N spans about half a degree of arc: 55.6 km, not 111 km.
        let index = index_of(&[row(1, "east", "60", "1", "")]);
        let one_degree = EARTH_RADIUS_M * 1f64.to_radians();
        assert!(index.search(60.0, 0.0, one_degree * 0.499, 1).is_empty());
        assert_eq!(
            names(&index.search(60.0, 0.0, one_degree * 0.501, 1)),
            ["east"]
        );
    }

    #[test]
    fn limit() {
        let rows: Vec<String> = (1..=5)
            .map(|k| row(k, &format!("p{k}"), &lat_at(k as f64 * 100.0), "0", ""))
            .collect();
        let index = index_of(&rows);
        assert_eq!(names(&index.search(0.0, 0.0, 50_000.0, 2)), ["p1", "p2"]);
        assert_eq!(names(&index.search(0.0, 0.0, 50_000.0, 20)).len(), 5);
        assert!(index.search(0.0, 0.0, 50_000.0, 0).is_empty());
        assert!(index.search(0.0, 0.0, -1.0, 5).is_empty());
        assert!(index.search(0.0, 0.0, f64::NAN, 5).is_empty());
    }

    #[test]
    fn across_the_antimeridian() {
        // 0.02° of longitude at 10°N is about 2.19 km.
        let index = index_of(&[
            row(1, "west", "10", "179.99", ""),
            row(2, "east", "10", "-179.99", ""),
            row(3, "far", "10", "179.9", ""),
        ]);
        assert_eq!(
            names(&index.search(10.0, 179.99, 3_000.0, 10)),
            ["west", "east"]
        );
        assert_eq!(
            names(&index.search(10.0, -179.99, 3_000.0, 10)),
            ["east", "west"]
        );
        assert_eq!(names(&index.search(10.0, -179.99, 2_000.0, 10)), ["east"]);
    }

    #[test]
    fn at_the_poles() {
        // 0.01° of latitude is about 1.11 km, whatever the longitude.
        let index = index_of(&[
            row(1, "north a", "89.99", "0", ""),
            row(2, "north b", "89.99", "180", ""),
            row(3, "south", "-89.99", "45", ""),
            row(4, "not so north", "89.9", "0", ""),
        ]);
        let mut near_north = names(&index.search(90.0, -123.0, 2_000.0, 10));
        near_north.sort();
        assert_eq!(near_north, ["north a", "north b"]);
        // Across the pole: 0.02° of latitude apart.
        assert_eq!(
            names(&index.search(89.99, 0.0, 3_000.0, 10)),
            ["north a", "north b"]
        );
        assert_eq!(names(&index.search(-90.0, 0.0, 2_000.0, 10)), ["south"]);
    }

    #[test]
    fn escapes_names() {
        let name = r#"Say "hi" \ there"#;
        let index = index_of(&[row(1, name, "1.5", "2.5", "A \"state\"")]);
        let found = index.search(1.5, 2.5, 1.0, 1);
        assert!(
            found[0].contains(r#""name":"Say \"hi\" \\ there""#),
            "{}",
            found[0]
        );
        let value: serde_json::Value = serde_json::from_str(&found[0]).unwrap();
        assert_eq!(value["name"], name);
        assert_eq!(value["vicinity"], "A \"state\", Testland");
    }

    #[test]
    fn coordinates_that_are_not_json_numbers_are_rewritten() {
        let index = index_of(&[row(1, "odd", "+1.5", ".5", "")]);
        let found = index.search(1.5, 0.5, 1.0, 1);
        assert!(
            found[0].starts_with(r#"{"geometry":{"location":{"lat":1.5,"lng":0.5}}"#),
            "{}",
            found[0]
        );
        assert!(is_json_number("-0.5e+10"));
        assert!(is_json_number("0"));
        for text in ["", "-", "01", "1.", ".5", "+1", "1e", "NaN", "inf", "1.5 "] {
            assert!(!is_json_number(text), "{text:?}");
        }
    }

    #[test]
    fn bad_rows_name_their_line() {
        let good = row(1, "ok", "1", "2", "");
        for (bad, reason) in [
            (
                "2\tshort\t1\t2\n",
                "expected 7 tab-separated fields, found 4",
            ),
            (
                "2\tx\tnorth\t2\tT\t\t1\n",
                r#"latitude "north" is not a number in [-90, 90]"#,
            ),
            (
                "2\tx\t1\t180.5\tT\t\t1\n",
                r#"longitude "180.5" is not a number in [-180, 180]"#,
            ),
            ("x\tx\t1\t2\tT\t\t1\n", r#"geonameid "x" is not a number"#),
            ("2\t\t1\t2\tT\t\t1\n", "empty name"),
            (
                "2\tx\t1\t2\tT\t\t-1\n",
                r#"population "-1" is not a number"#,
            ),
        ] {
            let err = OfflineIndex::from_tsv(&format!("{good}{bad}")).unwrap_err();
            assert_eq!(err.to_string(), format!("places data line 2: {reason}"));
        }
    }

    fn embedded() -> &'static OfflineIndex {
        static INDEX: OnceLock<OfflineIndex> = OnceLock::new();
        INDEX.get_or_init(|| OfflineIndex::load().expect("embedded dataset loads"))
    }

    #[test]
    fn embedded_dataset_finds_los_angeles() {
        let index = embedded();
        assert_eq!(index.len(), 170_391);
        let found = index.search(34.0522, -118.2437, 10_000.0, 20);
        // Cross-checked with a haversine scan of the whole file: 17 places within 10 km.
        assert_eq!(
            names(&found),
            [
                "Los Angeles",
                "Echo Park",
                "Boyle Heights",
                "Silver Lake",
                "Koreatown",
                "Belvedere",
                "Atwater Village",
                "East Los Angeles",
                "Larchmont",
                "Vermont Square",
                "Huntington Park",
                "Maywood",
                "Hollywood",
                "Florence-Graham",
                "Walnut Park",
                "Commerce",
                "Bell",
            ]
        );
        assert_eq!(
            names(&index.search(34.0522, -118.2437, 10_000.0, 3)),
            names(&found[..3])
        );
        assert_eq!(
            &*found[0],
            r#"{"geometry":{"location":{"lat":34.05223,"lng":-118.24368}},"name":"Los Angeles","place_id":"geonames:5368361","types":["locality","political"],"vicinity":"California, United States"}"#
        );
    }

    #[test]
    fn raw_places_are_the_indexed_ones() {
        let raw = raw_places().expect("embedded dataset parses");
        assert_eq!(raw.len(), embedded().len());
        let la = raw
            .iter()
            .find(|p| p.geonameid == 5368361)
            .expect("Los Angeles");
        assert_eq!(
            (la.name.as_str(), la.lat, la.lon),
            ("Los Angeles", 34.05223, -118.24368)
        );
    }

    #[test]
    fn embedded_dataset_has_nothing_mid_pacific() {
        assert!(embedded().search(0.0, -150.0, 50_000.0, 20).is_empty());
    }
}
