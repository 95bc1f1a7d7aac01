//! The `geo` operator: where each post was made. `coordinates = [latitude, longitude]`,
//! `timestamp` to microsecond UTC.

use std::borrow::Cow;
use std::sync::Arc;

use super::{field, required_key, schema, values, Keys, Object, Reject};
use deltalake::arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};

/// The keys the `geo` operator reads; others are dropped while parsing.
pub enum GeoKeys {}

impl Keys for GeoKeys {
    const NAMES: &'static [&'static str] =
        &["ind", "timestamp", "latitude", "longitude", "country"];
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeoRow<'a> {
    pub ind: i64,
    pub country: Option<Cow<'a, str>>,
    /// `None` when both latitude and longitude are absent; otherwise both positions, each
    /// null when its input was.
    pub coordinates: Option<[Option<f64>; 2]>,
    pub timestamp: Option<i64>,
}

impl<'a> GeoRow<'a> {
    pub fn parse(obj: &'a Object<'_, GeoKeys>) -> Result<Self, Reject> {
        let ind = required_key(obj, "ind")?;
        let lat = field(obj, "latitude", values::float)?;
        let lon = field(obj, "longitude", values::float)?;
        Ok(GeoRow {
            ind,
            country: field(obj, "country", |v| values::text(v, &[]))?,
            coordinates: (lat.is_some() || lon.is_some()).then_some([lat, lon]),
            timestamp: field(obj, "timestamp", values::timestamp_micros)?,
        })
    }
}

pub struct GeoColumns {
    ind: Int64Builder,
    country: StringBuilder,
    coordinates: ListBuilder<Float64Builder>,
    timestamp: TimestampMicrosecondBuilder,
}

impl Default for GeoColumns {
    fn default() -> Self {
        GeoColumns {
            ind: Int64Builder::new(),
            country: StringBuilder::new(),
            coordinates: ListBuilder::new(Float64Builder::new())
                .with_field(schema::coordinate_item()),
            timestamp: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
        }
    }
}

impl GeoColumns {
    pub fn text_columns(&mut self) -> [&mut StringBuilder; 1] {
        [&mut self.country]
    }

    pub fn append(&mut self, r: GeoRow<'_>) {
        self.ind.append_value(r.ind);
        self.country.append_option(r.country);
        match r.coordinates {
            Some(pair) => self.coordinates.append_value(pair),
            None => self.coordinates.append_null(),
        }
        self.timestamp.append_option(r.timestamp);
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.ind.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.coordinates.finish()),
            Arc::new(self.timestamp.finish()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::parse_object;
    use crate::clean::RejectReason;
    use serde_json::{json, Value};

    /// Cleans `v` as the worker would: from its JSON text.
    fn parse(v: Value) -> Result<GeoRow<'static>, Reject> {
        let text = serde_json::to_vec(&v).unwrap();
        let obj = parse_object::<GeoKeys>(&text).unwrap();
        let r = GeoRow::parse(&obj)?;
        Ok(GeoRow {
            ind: r.ind,
            country: r.country.map(|c| Cow::Owned(c.into_owned())),
            coordinates: r.coordinates,
            timestamp: r.timestamp,
        })
    }

    #[test]
    fn coordinates_and_timestamp() {
        let r = parse(json!({"ind": "0", "timestamp": "2019-01-01T07:21:13", "latitude": -88.8298, "longitude": "-170.188", "country": "Albania"})).unwrap();
        assert_eq!(r.ind, 0);
        assert_eq!(r.coordinates, Some([Some(-88.8298), Some(-170.188)]));
        assert_eq!(r.timestamp, Some(1_546_327_273_000_000));
        assert_eq!(r.country.as_deref(), Some("Albania"));
    }

    #[test]
    fn absent_coordinates_are_null_and_bad_ones_rejected() {
        assert_eq!(parse(json!({"ind": 1})).unwrap().coordinates, None);
        assert_eq!(
            parse(json!({"ind": 1, "latitude": 5})).unwrap().coordinates,
            Some([Some(5.0), None])
        );
        let e = parse(json!({"ind": 1, "latitude": "north"})).unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::InvalidValue, Some("latitude"))
        );
        let e = parse(json!({"ind": 1, "timestamp": "soon"})).unwrap_err();
        assert_eq!(e.field, Some("timestamp"));
        assert_eq!(
            parse(json!({"ind": null})).unwrap_err().reason,
            RejectReason::MissingKey
        );
    }
}
