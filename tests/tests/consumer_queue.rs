//! The consumer driven from a real queue (moto) by the poller, as the SQS event source mapping
//! drives it in AWS: successes deleted, failures redelivered, poison dead-lettered.

use std::time::{Duration, Instant};

use hikmah_tests::model::embedder;
use hikmah_tests::pg::TestDb;
use hikmah_tests::sqs::TestQueue;
use memory_consumer::{handle_batch, Consumer, Poller};
use shared::events::ElaborationCompleted;
use shared::memory::dedup::DedupPolicy;

fn event(user: &str, hikmah: &str) -> ElaborationCompleted {
    hikmah_tests::events::event(user, hikmah, None)
}

#[tokio::test]
async fn good_messages_are_applied_and_deleted_and_a_poison_message_ends_in_the_dlq() {
    let tdb = TestDb::new().await;
    let consumer = Consumer::postgres(tdb.db().await, embedder(), DedupPolicy::default());
    let queue = TestQueue::with_dlq("hikmah-consumer", 2, Duration::from_secs(1)).await;

    let good: Vec<ElaborationCompleted> = (0..12)
        .map(|i| {
            event(
                &format!("user-{}", i % 3),
                &format!("Queued wisdom number {i}."),
            )
        })
        .collect();
    for e in &good[..6] {
        queue.send(&e.to_body()).await;
    }
    let poison = r#"{"version": 1, "event_id": "this is not a uuid"}"#;
    queue.send(poison).await;
    for e in &good[6..] {
        queue.send(&e.to_body()).await;
    }
    // A redelivered duplicate of a good message (as SQS at-least-once delivery may produce).
    queue.send(&good[0].to_body()).await;

    let poller = Poller::new(queue.client.clone(), queue.url.clone())
        .await
        .unwrap()
        .with_wait_time(Duration::from_secs(1));
    assert_eq!(poller.queue_arn(), queue.arn);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let consumer = consumer.clone();
        let poller = poller.clone();
        tokio::spawn(async move {
            poller
                .run(
                    move |batch| {
                        let consumer = consumer.clone();
                        async move { handle_batch(&consumer, batch).await.to_response() }
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        })
    };

    // The poison message needs maxReceiveCount receives plus visibility timeouts to be moved.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (main, dlq) = (queue.count().await, queue.dlq_count().await);
        if main == 0 && dlq == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queue did not settle: {main} in the queue, {dlq} in the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop.send(());
    let report = tokio::time::timeout(Duration::from_secs(30), driver)
        .await
        .expect("poller stops")
        .unwrap();
    assert!(report.received >= 14, "{report:?}");
    assert!(
        report.failed >= 2,
        "the poison message is received (and fails) at least twice: {report:?}"
    );

    let dead = queue.drain_dlq().await;
    assert_eq!(
        dead.iter()
            .filter_map(|m| m.body.as_deref())
            .collect::<Vec<_>>(),
        vec![poison]
    );

    let admin = tdb.admin().await;
    let applied: i64 = admin
        .query_one("SELECT count(*) FROM processed_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 12, "every good event applied exactly once");
    let notes: i64 = admin
        .query_one("SELECT count(*) FROM memory_notes", &[])
        .await
        .unwrap()
        .get(0);
    let seen: i64 = admin
        .query_one("SELECT sum(times_seen) FROM memory_notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((notes, seen), (12, 12), "nothing lost, nothing doubled");
    queue.delete().await;
    tdb.cleanup().await;
}
