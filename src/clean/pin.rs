//! The `pin` operator: posts. Rules 1-7 of the pin section of the cleaning contract.

use std::borrow::Cow;
use std::sync::Arc;

use super::{field, required_key, values, Keys, Object, Reject};
use deltalake::arrow::array::{ArrayRef, Int64Builder, StringBuilder};

/// The keys the `pin` operator reads; others are dropped while parsing.
pub enum PinKeys {}

impl Keys for PinKeys {
    const NAMES: &'static [&'static str] = &[
        "index",
        "unique_id",
        "title",
        "description",
        "poster_name",
        "follower_count",
        "tag_list",
        "is_image_or_video",
        "image_src",
        "save_location",
        "category",
    ];
}

/// One cleaned pin row, columns in table order; text borrowed from the record.
#[derive(Debug, Clone, PartialEq)]
pub struct PinRow<'a> {
    pub ind: i64,
    pub unique_id: Option<Cow<'a, str>>,
    pub title: Option<Cow<'a, str>>,
    pub description: Option<Cow<'a, str>>,
    pub follower_count: Option<i64>,
    pub poster_name: Option<Cow<'a, str>>,
    pub tag_list: Option<Cow<'a, str>>,
    pub is_image_or_video: Option<Cow<'a, str>>,
    pub image_src: Option<Cow<'a, str>>,
    pub save_location: Option<Cow<'a, str>>,
    pub category: Option<Cow<'a, str>>,
}

const SAVE_PREFIX: &str = "Local save in ";

impl<'a> PinRow<'a> {
    pub fn parse(obj: &'a Object<'_, PinKeys>) -> Result<Self, Reject> {
        let t = |name: &'static str, placeholders: &'static [&'static str]| {
            field(obj, name, |v| values::text(v, placeholders))
        };
        Ok(PinRow {
            ind: required_key(obj, "index")?,
            unique_id: t("unique_id", &[])?,
            title: t("title", &["No Title Data Available"])?,
            description: t(
                "description",
                &[
                    "No description available",
                    "No description available Story format",
                ],
            )?,
            follower_count: field(obj, "follower_count", values::follower_count)?,
            poster_name: t("poster_name", &["User Info Error"])?,
            tag_list: t("tag_list", &["N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e"])?,
            is_image_or_video: t("is_image_or_video", &[])?,
            image_src: t("image_src", &["Image src error."])?,
            save_location: t("save_location", &[])?.map(strip_save_prefix),
            category: t("category", &[])?,
        })
    }
}

fn strip_save_prefix(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.strip_prefix(SAVE_PREFIX).unwrap_or(b)),
        Cow::Owned(o) => match o.strip_prefix(SAVE_PREFIX) {
            Some(rest) => Cow::Owned(rest.to_owned()),
            None => Cow::Owned(o),
        },
    }
}

#[derive(Default)]
pub struct PinColumns {
    ind: Int64Builder,
    unique_id: StringBuilder,
    title: StringBuilder,
    description: StringBuilder,
    follower_count: Int64Builder,
    poster_name: StringBuilder,
    tag_list: StringBuilder,
    is_image_or_video: StringBuilder,
    image_src: StringBuilder,
    save_location: StringBuilder,
    category: StringBuilder,
}

impl PinColumns {
    pub fn text_columns(&mut self) -> [&mut StringBuilder; 9] {
        [
            &mut self.unique_id,
            &mut self.title,
            &mut self.description,
            &mut self.poster_name,
            &mut self.tag_list,
            &mut self.is_image_or_video,
            &mut self.image_src,
            &mut self.save_location,
            &mut self.category,
        ]
    }

    pub fn append(&mut self, r: PinRow<'_>) {
        self.ind.append_value(r.ind);
        self.unique_id.append_option(r.unique_id);
        self.title.append_option(r.title);
        self.description.append_option(r.description);
        self.follower_count.append_option(r.follower_count);
        self.poster_name.append_option(r.poster_name);
        self.tag_list.append_option(r.tag_list);
        self.is_image_or_video.append_option(r.is_image_or_video);
        self.image_src.append_option(r.image_src);
        self.save_location.append_option(r.save_location);
        self.category.append_option(r.category);
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.ind.finish()),
            Arc::new(self.unique_id.finish()),
            Arc::new(self.title.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.follower_count.finish()),
            Arc::new(self.poster_name.finish()),
            Arc::new(self.tag_list.finish()),
            Arc::new(self.is_image_or_video.finish()),
            Arc::new(self.image_src.finish()),
            Arc::new(self.save_location.finish()),
            Arc::new(self.category.finish()),
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
    fn parse(v: Value) -> Result<PinRow<'static>, Reject> {
        let text = serde_json::to_vec(&v).unwrap();
        let obj = parse_object::<PinKeys>(&text).unwrap();
        let row = PinRow::parse(&obj)?;
        Ok(owned(row))
    }

    fn owned(r: PinRow<'_>) -> PinRow<'static> {
        let o = |c: Option<Cow<'_, str>>| c.map(|c| Cow::Owned(c.into_owned()));
        PinRow {
            ind: r.ind,
            unique_id: o(r.unique_id),
            title: o(r.title),
            description: o(r.description),
            follower_count: r.follower_count,
            poster_name: o(r.poster_name),
            tag_list: o(r.tag_list),
            is_image_or_video: o(r.is_image_or_video),
            image_src: o(r.image_src),
            save_location: o(r.save_location),
            category: o(r.category),
        }
    }

    #[test]
    fn cleans_a_typical_pin() {
        let r = parse(json!({
            "index": 7, "unique_id": "u-1", "title": "No Title Data Available",
            "description": "No description available Story format", "poster_name": "User Info Error",
            "follower_count": "User Info Error", "tag_list": "N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e",
            "is_image_or_video": "multi-video(story page format)", "image_src": "Image src error.",
            "downloaded": 0, "save_location": "Local save in /data/mens-fashion", "category": "mens-fashion"
        }))
        .unwrap();
        assert_eq!(r.ind, 7);
        assert_eq!(r.unique_id.as_deref(), Some("u-1"));
        assert_eq!(
            (
                r.title,
                r.description,
                r.poster_name,
                r.follower_count,
                r.tag_list,
                r.image_src
            ),
            (None, None, None, None, None, None)
        );
        assert_eq!(r.save_location.as_deref(), Some("/data/mens-fashion"));
        assert_eq!(
            r.is_image_or_video.as_deref(),
            Some("multi-video(story page format)")
        );
    }

    #[test]
    fn index_is_required_and_integral() {
        assert_eq!(
            parse(json!({"title": "x"})).unwrap_err().reason,
            RejectReason::MissingKey
        );
        assert_eq!(
            parse(json!({"index": ""})).unwrap_err().reason,
            RejectReason::MissingKey
        );
        assert_eq!(
            parse(json!({"index": true})).unwrap_err().reason,
            RejectReason::InvalidKey
        );
        assert_eq!(
            parse(json!({"index": 1.5})).unwrap_err().reason,
            RejectReason::InvalidKey
        );
        assert_eq!(parse(json!({"index": "12"})).unwrap().ind, 12);
    }

    #[test]
    fn bad_follower_count_names_the_field() {
        let e = parse(json!({"index": 1, "follower_count": "abc"})).unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::InvalidValue, Some("follower_count"))
        );
        assert_eq!(
            parse(json!({"index": 1, "follower_count": "1.5k"}))
                .unwrap()
                .follower_count,
            Some(1500)
        );
    }

    #[test]
    fn missing_optional_keys_are_null_and_unknown_keys_ignored() {
        let r = parse(json!({"index": 3, "extra": {"a": 1}})).unwrap();
        assert_eq!(
            r,
            PinRow {
                ind: 3,
                unique_id: None,
                title: None,
                description: None,
                follower_count: None,
                poster_name: None,
                tag_list: None,
                is_image_or_video: None,
                image_src: None,
                save_location: None,
                category: None
            }
        );
    }

    #[test]
    fn save_location_without_the_prefix_is_kept_as_is() {
        let r = parse(json!({"index": 3, "save_location": "/data/art"})).unwrap();
        assert_eq!(r.save_location.as_deref(), Some("/data/art"));
    }
}
