//! The read side: [`query`] runs SQL (DataFusion) over the tables, [`report`] answers the
//! analysts' questions by name, [`status`] shows the lease table. None of them writes.

pub mod query;
pub mod report;
pub mod status;
