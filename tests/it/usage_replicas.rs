//! The merged usage view of several replicas (`state.backend: redis`): three gateways, each with
//! its own SQLite file, on one real `redis-server`; every replica's `/api/usage` and
//! `/api/usage/summary` count every replica's traffic, once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::redis_state::Redis;
use crate::support::{json, within};
use crate::usage::{FLASH, Gw, PRO, by_group, config};
use gem_proxy::config::Secret;
use gem_proxy::config::state::StateBackend;
use gem_proxy_mock::{MockOptions, MockUpstream, TOTAL_TOKEN_COUNT};
use http::Method;

async fn replica(mock: &MockUpstream, redis: &Redis, dir: &std::path::Path, name: &str) -> Gw {
    let mut c = config(&mock.base_url(), &dir.join(format!("{name}.db")), "");
    c.usage.replica_id = Some(name.to_owned());
    c.usage.share_interval_milliseconds = 50;
    c.state.backend = StateBackend::Redis;
    c.state.redis.url = Some(Secret::new(redis.url()));
    c.state.redis.sync_interval_ms = 50;
    Gw::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_shows_every_replicas_usage_once() {
    let redis = Redis::start();
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gws = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        gws.push(replica(&mock, &redis, dir.path(), name).await);
    }
    let (alice, bob) = (gws[0].token("alice", None), gws[0].token("bob", None));
    // A: alice 2 flash; B: bob 3 pro; C: alice 4 flash and bob 1 flash.
    for _ in 0..2 {
        assert_eq!(gws[0].call(&alice, FLASH, &[]).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(gws[1].call(&bob, PRO, &[]).await.0, 200);
    }
    for _ in 0..4 {
        assert_eq!(gws[2].call(&alice, FLASH, &[]).await.0, 200);
    }
    assert_eq!(gws[2].call(&bob, FLASH, &[]).await.0, 200);

    let t = TOTAL_TOKEN_COUNT;
    let by_client = BTreeMap::from([
        ("alice".to_owned(), (6, 6 * t)),
        ("bob".to_owned(), (4, 4 * t)),
    ]);
    let by_model = BTreeMap::from([
        ("gemini-2.5-flash".to_owned(), (7, 7 * t)),
        ("gemini-2.5-pro".to_owned(), (3, 3 * t)),
    ]);
    for (i, gw) in gws.iter().enumerate() {
        let report = gw.settle("group_by=client", 10).await;
        assert_eq!(by_group(&report), by_client, "replica {i}");
        assert_eq!(
            report["replicas"],
            serde_json::json!(["pod-a", "pod-b", "pod-c"]),
            "replica {i}"
        );
        assert_eq!(
            by_group(&gw.usage("group_by=model&step=1m").await),
            by_model,
            "replica {i}"
        );
        let (status, _, body) = gw.admin(Method::GET, "/api/usage/summary?window=1h").await;
        assert_eq!(status, 200);
        let summary = json(&body);
        assert_eq!(summary["totals"]["requests"], 10, "replica {i}: {summary}");
        assert_eq!(summary["clients"][0]["name"], "alice");
        assert_eq!(summary["clients"][0]["requests"], 6);
    }

    // A key disabled through A's admin API is in every replica's timeline of that key, as A's.
    assert_eq!(
        gws[0].admin(Method::POST, "/api/keys/key3/disable").await.0,
        200
    );
    for (i, gw) in gws.iter().enumerate() {
        let events = key3_events(gw, 1).await;
        assert_eq!(events[0]["kind"], "disabled", "replica {i}: {events:?}");
        assert_eq!(events[0]["replica"], "pod-a", "replica {i}");
    }

    // C restarts on its file and sends all its rows again; rounds go on: nothing counts twice.
    let c = gws.pop().unwrap();
    c.stop().await;
    gws.push(replica(&mock, &redis, dir.path(), "pod-c").await);
    assert_eq!(gws[2].call(&bob, FLASH, &[]).await.0, 200);
    for (i, gw) in gws.iter().enumerate() {
        let report = gw.settle("group_by=client", 11).await;
        assert_eq!(
            by_group(&report),
            BTreeMap::from([
                ("alice".to_owned(), (6, 6 * t)),
                ("bob".to_owned(), (5, 5 * t)),
            ]),
            "replica {i}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, gw) in gws.iter().enumerate() {
        let report = gw.usage("group_by=key").await;
        assert_eq!(report["totals"]["requests"], 11, "replica {i}: {report}");
        assert_eq!(key3_events(gw, 1).await.len(), 1, "replica {i}");
    }
}

/// key3's events once there are `n` of them.
async fn key3_events(gw: &Gw, n: usize) -> Vec<serde_json::Value> {
    within("key3's events", async {
        loop {
            let (status, _, body) = gw.admin(Method::GET, "/api/keys/key3/events").await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let events = json(&body)["events"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A client's `tpd` budget is shared: what it spent through B and C counts on A. A client over
/// its budget there gets 429 naming the budget, within about a sync interval; another client is
/// unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_token_budget_is_shared_by_the_replicas() {
    let redis = Redis::start();
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gws = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        gws.push(replica(&mock, &redis, dir.path(), name).await);
    }
    let t = TOTAL_TOKEN_COUNT;
    // 21 answers' worth a day: 10 through B and 10 through C leave one.
    let budgeted = gws[0].token("budgeted", Some(21 * t));
    let other = gws[0].token("other", Some(21 * t));
    for gw in &gws[1..] {
        for _ in 0..10 {
            assert_eq!(gw.call(&budgeted, FLASH, &[]).await.0, 200);
        }
    }
    // B and C share their counts, A reads them (background rounds every 50 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Alone, A would let 21 answers through; sharing, one (the first, which makes the client
    // known here) or a few while the counts are on their way.
    let mut served = 0;
    loop {
        let (status, body) = gws[0].call(&budgeted, FLASH, &[]).await;
        if status == 429 {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("tokens-per-day budget (tpd)"), "{text}");
            break;
        }
        assert_eq!(status, 200);
        served += 1;
        assert!(
            served <= 10,
            "A let {served} answers through: the budget is not shared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served >= 1, "{served}");
    for gw in &gws {
        assert_eq!(gw.call(&other, FLASH, &[]).await.0, 200);
    }
}
