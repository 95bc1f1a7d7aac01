//! The `user` operator: who made each post. `user_name` from first and last name, `age`
//! as an integer, `date_joined` to microsecond UTC.

use std::borrow::Cow;
use std::sync::Arc;

use super::{field, required_key, values, Keys, Object, Reject};
use deltalake::arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};

/// The keys the `user` operator reads; others are dropped while parsing.
pub enum UserKeys {}

impl Keys for UserKeys {
    const NAMES: &'static [&'static str] =
        &["ind", "first_name", "last_name", "age", "date_joined"];
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow<'a> {
    pub ind: i64,
    pub user_name: Option<Cow<'a, str>>,
    pub age: Option<i64>,
    pub date_joined: Option<i64>,
}

impl<'a> UserRow<'a> {
    pub fn parse(obj: &'a Object<'_, UserKeys>) -> Result<Self, Reject> {
        let ind = required_key(obj, "ind")?;
        let first = field(obj, "first_name", |v| values::text(v, &[]))?;
        let last = field(obj, "last_name", |v| values::text(v, &[]))?;
        let user_name = match (first, last) {
            (Some(f), Some(l)) => Some(Cow::Owned(format!("{f} {l}"))),
            (one, other) => one.or(other),
        };
        Ok(UserRow {
            ind,
            user_name,
            age: field(obj, "age", values::integer)?,
            date_joined: field(obj, "date_joined", values::timestamp_micros)?,
        })
    }
}

pub struct UserColumns {
    ind: Int64Builder,
    user_name: StringBuilder,
    age: Int64Builder,
    date_joined: TimestampMicrosecondBuilder,
}

impl Default for UserColumns {
    fn default() -> Self {
        UserColumns {
            ind: Int64Builder::new(),
            user_name: StringBuilder::new(),
            age: Int64Builder::new(),
            date_joined: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
        }
    }
}

impl UserColumns {
    pub fn text_columns(&mut self) -> [&mut StringBuilder; 1] {
        [&mut self.user_name]
    }

    pub fn append(&mut self, r: UserRow<'_>) {
        self.ind.append_value(r.ind);
        self.user_name.append_option(r.user_name);
        self.age.append_option(r.age);
        self.date_joined.append_option(r.date_joined);
    }

    pub fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.ind.finish()),
            Arc::new(self.user_name.finish()),
            Arc::new(self.age.finish()),
            Arc::new(self.date_joined.finish()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::parse_object;
    use crate::clean::RejectReason;
    use serde_json::{json, Value};

    /// `user_name`, `age`, `date_joined` of a cleaned row, owned.
    type Cleaned = (Option<String>, Option<i64>, Option<i64>);

    /// Cleans `v` as the worker would (from its JSON text); the row without borrows.
    fn parse(v: Value) -> Result<Cleaned, Reject> {
        let text = serde_json::to_vec(&v).unwrap();
        let obj = parse_object::<UserKeys>(&text).unwrap();
        let r = UserRow::parse(&obj)?;
        Ok((r.user_name.map(Cow::into_owned), r.age, r.date_joined))
    }

    fn name(first: Value, last: Value) -> Option<String> {
        parse(json!({"ind": 1, "first_name": first, "last_name": last}))
            .unwrap()
            .0
    }

    #[test]
    fn user_name_rules() {
        assert_eq!(
            name(json!("Adam"), json!("Acosta")).as_deref(),
            Some("Adam Acosta")
        );
        assert_eq!(name(json!("Adam"), json!("")).as_deref(), Some("Adam"));
        assert_eq!(
            name(Value::Null, json!("Acosta")).as_deref(),
            Some("Acosta")
        );
        assert_eq!(name(json!(""), Value::Null), None);
    }

    #[test]
    fn age_and_date_joined() {
        let (_, age, date_joined) =
            parse(json!({"ind": 0, "age": "20", "date_joined": "2015-10-21 21:26:45"})).unwrap();
        assert_eq!(age, Some(20));
        assert_eq!(date_joined, Some(1_445_462_805_000_000));
        let e = parse(json!({"ind": 0, "age": "old"})).unwrap_err();
        assert_eq!(
            (e.reason, e.field),
            (RejectReason::InvalidValue, Some("age"))
        );
        let e = parse(json!({"ind": 0, "age": 30.5})).unwrap_err();
        assert_eq!(e.field, Some("age"));
    }
}
