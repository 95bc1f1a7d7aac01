//! The lease table against dynalite: every write is conditional.

use std::time::Duration;

use pinstream::lease::{Checkpoint, CommittedPosition, LeaseError, LeaseTable, Load, RejectsMark};

use crate::support;

#[tokio::test]
async fn conditional_writes_fence_every_lease_change() {
    let aws = support::aws().await;
    let table = LeaseTable::new(aws.dynamodb.clone(), support::unique("leases"));
    table.ensure_exists(Duration::from_secs(30)).await.unwrap();
    table.ensure_exists(Duration::from_secs(30)).await.unwrap(); // idempotent
    assert!(table
        .create_if_absent("pin", "shardId-0", &[], &Checkpoint::TrimHorizon)
        .await
        .unwrap());
    assert!(
        !table
            .create_if_absent("pin", "shardId-0", &[], &Checkpoint::Latest)
            .await
            .unwrap(),
        "existing lease untouched"
    );
    let lease = table.scan().await.unwrap().remove(0);
    assert_eq!(
        (lease.owner.as_deref(), lease.counter, &lease.checkpoint),
        (None, 0, &Checkpoint::TrimHorizon)
    );

    // Two workers race for the same observed counter: exactly one wins.
    let (a, b) = tokio::join!(
        table.take(&lease.key, "a", 0, None),
        table.take(&lease.key, "b", 0, None)
    );
    let (winner, counter) = match (a, b) {
        (Ok(c), Err(LeaseError::Lost(_))) => ("a", c),
        (Err(LeaseError::Lost(_)), Ok(c)) => ("b", c),
        other => panic!("exactly one take must win: {other:?}"),
    };
    let loser = if winner == "a" { "b" } else { "a" };
    assert!(matches!(
        table
            .renew(&lease.key, loser, counter, None, Load::default(), None)
            .await,
        Err(LeaseError::Lost(_))
    ));
    let counter = table
        .renew(
            &lease.key,
            winner,
            counter,
            Some(42),
            Load {
                records_per_second: 12.5,
                bytes_per_second: 3400.0,
            },
            Some("no answer from Kinesis GetRecords for 61 s"),
        )
        .await
        .unwrap();
    let renewed = table.scan().await.unwrap().remove(0);
    assert_eq!(
        renewed.read_stall.as_deref(),
        Some("no answer from Kinesis GetRecords for 61 s"),
        "a renewal carries the reader's stall"
    );
    // A checkpoint with a stale counter is refused.
    let one = Checkpoint::Sequence("1".into());
    let stale = table
        .checkpoint(
            &lease.key,
            winner,
            counter - 1,
            &CommittedPosition {
                checkpoint: &one,
                sub_sequence: 0,
                batch_version: 1,
                rejects: None,
                load: None,
                read_stall: None,
            },
        )
        .await;
    assert!(matches!(stale, Err(LeaseError::Lost(_))));
    let at = Checkpoint::Sequence("123".into());
    let mark = RejectsMark {
        version: 7,
        sequence: "120".into(),
        sub_sequence: 1,
    };
    let counter = table
        .checkpoint(
            &lease.key,
            winner,
            counter,
            &CommittedPosition {
                checkpoint: &at,
                sub_sequence: 2,
                batch_version: 1,
                rejects: Some(&mark),
                load: None,
                read_stall: None,
            },
        )
        .await
        .unwrap();
    table
        .release(&lease.key, winner, counter, None)
        .await
        .unwrap();
    let after = table.scan().await.unwrap().remove(0);
    assert_eq!(after.owner, None);
    assert_eq!(after.checkpoint, Checkpoint::Sequence("123".into()));
    assert_eq!(
        (
            after.sub_sequence,
            after.batch_version,
            after.millis_behind_latest
        ),
        (2, 1, Some(42))
    );
    assert_eq!(
        after.read_stall, None,
        "a checkpoint reports the reading as a renewal does: no stall"
    );
    assert_eq!(after.records_per_second, Some(12.5));
    assert_eq!(
        after.bytes_per_second,
        Some(3400.0),
        "the load travels on the lease row"
    );
    assert_eq!(
        after.rejects,
        Some(mark),
        "the rejects mark travels with the checkpoint"
    );
    assert!(
        matches!(
            table.release(&lease.key, winner, counter + 1, None).await,
            Err(LeaseError::Lost(_))
        ),
        "release needs ownership"
    );
}
