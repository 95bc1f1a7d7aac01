//! `pinstream report NAME`: the analysts' questions (tasks 4 to 11 of the original
//! project, `docs/queries.md`) as SQL over the tables.
//!
//! Definitions, the same in every report:
//! - **Duplicates.** A record ingested twice (the same `ind` sent twice into a stream) is
//!   two rows in the table, since the table keeps everything that arrived. Reports count
//!   each `ind` once: per table they keep the row that arrived first (by
//!   `_approximate_arrival_timestamp`, then shard, sequence and sub-sequence number).
//! - **Joins** are inner joins on `ind`: a post counts when its geo (or user) row exists.
//! - **Age groups** are 18-24, 25-35, 36-50 and +50 (over 50); ages under 18 and null ages
//!   are in no group and left out of age-group reports.
//! - **Medians** are the lower median (the middle value of an odd count, the lower of the
//!   two middle values of an even count), as Spark's `percentile_approx(x, 0.5)` gives:
//!   always a follower count that occurs. Null follower counts (`User Info Error`) are left
//!   out.
//! - **Most popular** is the highest count; a tie goes to the alphabetically first
//!   category (or poster, or country), so every run answers the same.
//! - Rows with a null key (country, category, year) are left out.

use deltalake::arrow::array::RecordBatch;

use crate::read::query::{self, QueryError};

/// One analysts' question and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub name: &'static str,
    /// The original project's task number.
    pub task: &'static str,
    pub question: &'static str,
    /// The columns the answer has, in order.
    pub columns: &'static [&'static str],
    pub sql: &'static str,
}

/// The rows of `$table` that arrived first for their `ind` (see the module docs).
macro_rules! first_per_ind {
    ($table:literal) => {
        concat!(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY ind ORDER BY _approximate_arrival_timestamp, _shard_id, _sequence_number, _sub_sequence_number) AS _first FROM ",
            $table,
            ") WHERE _first = 1"
        )
    };
}

/// One row per `ind` for each table, as CTEs `p`, `g` and `u` (with its age group), then
/// the report's own CTEs and query.
macro_rules! with_dedup {
    ($body:literal) => {
        concat!(
            "WITH p AS (", first_per_ind!("pin"), "),\n",
            "g AS (", first_per_ind!("geo"), "),\n",
            "u AS (SELECT *, CASE WHEN age BETWEEN 18 AND 24 THEN '18-24' WHEN age BETWEEN 25 AND 35 THEN '25-35' WHEN age BETWEEN 36 AND 50 THEN '36-50' WHEN age > 50 THEN '+50' END AS age_group\n",
            "      FROM (", first_per_ind!("\"user\""), ")),\n",
            $body
        )
    };
}

pub const REPORTS: &[Report] = &[
    Report {
        name: "category-by-country",
        task: "4",
        question: "The most popular category people post to, per country",
        columns: &["country", "category", "category_count"],
        sql: with_dedup!(
            "counts AS (SELECT g.country, p.category, COUNT(*) AS category_count FROM p JOIN g ON p.ind = g.ind
                        WHERE g.country IS NOT NULL AND p.category IS NOT NULL GROUP BY g.country, p.category),
             ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY country ORDER BY category_count DESC, category) AS r FROM counts)
             SELECT country, category, category_count FROM ranked WHERE r = 1 ORDER BY country"
        ),
    },
    Report {
        name: "category-by-year",
        task: "5",
        question: "The most popular category each year from 2018 to 2022, with its post count",
        columns: &["post_year", "category", "category_count"],
        sql: with_dedup!(
            "counts AS (SELECT CAST(EXTRACT(YEAR FROM g.timestamp) AS BIGINT) AS post_year, p.category, COUNT(*) AS category_count
                        FROM p JOIN g ON p.ind = g.ind
                        WHERE p.category IS NOT NULL AND EXTRACT(YEAR FROM g.timestamp) BETWEEN 2018 AND 2022
                        GROUP BY 1, 2),
             ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY post_year ORDER BY category_count DESC, category) AS r FROM counts)
             SELECT post_year, category, category_count FROM ranked WHERE r = 1 ORDER BY post_year"
        ),
    },
    Report {
        name: "top-poster-by-country",
        task: "6.1",
        question: "The poster with the most followers, per country",
        columns: &["country", "poster_name", "follower_count"],
        sql: with_dedup!(
            "ranked AS (SELECT g.country, p.poster_name, p.follower_count,
                               ROW_NUMBER() OVER (PARTITION BY g.country ORDER BY p.follower_count DESC, p.poster_name) AS r
                        FROM p JOIN g ON p.ind = g.ind
                        WHERE g.country IS NOT NULL AND p.follower_count IS NOT NULL AND p.poster_name IS NOT NULL)
             SELECT country, poster_name, follower_count FROM ranked WHERE r = 1 ORDER BY country"
        ),
    },
    Report {
        name: "top-country",
        task: "6.2",
        question: "The country whose top poster has the most followers (one row)",
        columns: &["country", "follower_count"],
        sql: with_dedup!(
            "best AS (SELECT g.country, MAX(p.follower_count) AS follower_count FROM p JOIN g ON p.ind = g.ind
                      WHERE g.country IS NOT NULL AND p.poster_name IS NOT NULL GROUP BY g.country)
             SELECT country, follower_count FROM best WHERE follower_count IS NOT NULL
             ORDER BY follower_count DESC, country LIMIT 1"
        ),
    },
    Report {
        name: "category-by-age-group",
        task: "7",
        question: "The most popular category per age group (18-24, 25-35, 36-50, +50)",
        columns: &["age_group", "category", "category_count"],
        sql: with_dedup!(
            "counts AS (SELECT u.age_group, p.category, COUNT(*) AS category_count FROM p JOIN u ON p.ind = u.ind
                        WHERE u.age_group IS NOT NULL AND p.category IS NOT NULL GROUP BY 1, 2),
             ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY age_group ORDER BY category_count DESC, category) AS r FROM counts)
             SELECT age_group, category, category_count FROM ranked WHERE r = 1 ORDER BY age_group"
        ),
    },
    Report {
        name: "median-followers-by-age-group",
        task: "8",
        question: "The median follower count per age group",
        columns: &["age_group", "median_follower_count"],
        sql: with_dedup!(
            "f AS (SELECT u.age_group AS k, p.follower_count AS v FROM p JOIN u ON p.ind = u.ind
                   WHERE u.age_group IS NOT NULL AND p.follower_count IS NOT NULL),
             ranked AS (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v) AS n, COUNT(*) OVER (PARTITION BY k) AS c FROM f)
             SELECT k AS age_group, v AS median_follower_count FROM ranked WHERE n = (c + 1) / 2 ORDER BY k"
        ),
    },
    Report {
        name: "users-joined-by-year",
        task: "9",
        question: "How many users joined each year from 2015 to 2020 (distinct user name and joining time)",
        columns: &["post_year", "number_users_joined"],
        sql: with_dedup!(
            "users AS (SELECT DISTINCT user_name, date_joined FROM u
                       WHERE date_joined IS NOT NULL AND EXTRACT(YEAR FROM date_joined) BETWEEN 2015 AND 2020)
             SELECT CAST(EXTRACT(YEAR FROM date_joined) AS BIGINT) AS post_year, COUNT(*) AS number_users_joined
             FROM users GROUP BY 1 ORDER BY 1"
        ),
    },
    Report {
        name: "median-followers-by-join-year",
        task: "10",
        question: "The median follower count of users by the year they joined (2015 to 2020)",
        columns: &["post_year", "median_follower_count"],
        sql: with_dedup!(
            "f AS (SELECT CAST(EXTRACT(YEAR FROM u.date_joined) AS BIGINT) AS k, p.follower_count AS v FROM p JOIN u ON p.ind = u.ind
                   WHERE p.follower_count IS NOT NULL AND EXTRACT(YEAR FROM u.date_joined) BETWEEN 2015 AND 2020),
             ranked AS (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v) AS n, COUNT(*) OVER (PARTITION BY k) AS c FROM f)
             SELECT k AS post_year, v AS median_follower_count FROM ranked WHERE n = (c + 1) / 2 ORDER BY k"
        ),
    },
    Report {
        name: "median-followers-by-join-year-and-age-group",
        task: "11",
        question: "The median follower count by joining year (2015 to 2020) and age group",
        columns: &["age_group", "post_year", "median_follower_count"],
        sql: with_dedup!(
            "f AS (SELECT u.age_group AS a, CAST(EXTRACT(YEAR FROM u.date_joined) AS BIGINT) AS y, p.follower_count AS v
                   FROM p JOIN u ON p.ind = u.ind
                   WHERE u.age_group IS NOT NULL AND p.follower_count IS NOT NULL
                     AND EXTRACT(YEAR FROM u.date_joined) BETWEEN 2015 AND 2020),
             ranked AS (SELECT a, y, v, ROW_NUMBER() OVER (PARTITION BY a, y ORDER BY v) AS n, COUNT(*) OVER (PARTITION BY a, y) AS c FROM f)
             SELECT a AS age_group, y AS post_year, v AS median_follower_count FROM ranked WHERE n = (c + 1) / 2 ORDER BY a, y"
        ),
    },
];

/// The report called `name`, or an error listing the names.
pub fn find(name: &str) -> Result<&'static Report, QueryError> {
    REPORTS.iter().find(|r| r.name == name).ok_or_else(|| {
        QueryError::Sql(format!(
            "no report `{name}`; reports: {} (see `pinstream report --list`)",
            REPORTS
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// `pinstream report --list`: one line each.
pub fn list() -> String {
    let width = REPORTS.iter().map(|r| r.name.len()).max().unwrap_or(0);
    REPORTS
        .iter()
        .map(|r| format!("{:<width$}  task {:<4} {}\n", r.name, r.task, r.question))
        .collect()
}

/// Runs `report` in `ctx` (a session from [`query::session`]).
pub async fn run(
    ctx: &deltalake::datafusion::prelude::SessionContext,
    report: &Report,
) -> Result<Vec<RecordBatch>, QueryError> {
    query::run(ctx, report.sql).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed() {
        let mut names: Vec<_> = REPORTS.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REPORTS.len());
        assert_eq!(list().lines().count(), REPORTS.len());
        assert!(find("nope")
            .unwrap_err()
            .to_string()
            .contains("category-by-country"));
    }
}
