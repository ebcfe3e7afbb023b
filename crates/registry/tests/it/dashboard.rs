//! The dashboard, rendered by real headless Chromium.

use std::time::Duration;

use crate::support::{cfg, chromium, http, register, start};

#[tokio::test]
async fn the_dashboard_lists_apps_instances_status_renewals_and_self_preservation() {
    let browser = chromium();
    let server = start(cfg()).await;
    let base = server.service_url();
    assert_eq!(register(&base, "BILLING", "bill-1").await.status(), 204);
    assert_eq!(register(&base, "BILLING", "bill-2").await.status(), 204);
    assert_eq!(register(&base, "SEARCH", "search-<1>").await.status(), 204);
    let r = http()
        .put(format!(
            "{base}/apps/BILLING/bill-2/status?value=OUT_OF_SERVICE"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", server.local_addr());
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(&url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 90 s")
    .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The script ran in the browser: it marks the body and turns timestamps into ages.
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "script did not run:\n{dom}"
    );
    assert!(
        dom.contains(" s ago</span>"),
        "renewal ages missing:\n{dom}"
    );
    for needle in [
        "<h1>Service registry</h1>",
        "Self-preservation is ON",
        "data-app=\"BILLING\" data-id=\"bill-1\"",
        "<td class=\"status UP\">UP</td>",
        "<td class=\"status OUT_OF_SERVICE\">OUT_OF_SERVICE (override)</td>",
        "search-&lt;1&gt;",
        "<th>Instances</th><td>3</td>",
        "OUT_OF_SERVICE_1_UP_2_",
    ] {
        assert!(
            dom.contains(needle),
            "{needle:?} missing from the rendered page:\n{dom}"
        );
    }
    assert_eq!(dom.matches("<tr class=\"instance\"").count(), 3);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_large_registry_lists_a_bounded_number_of_rows() {
    let server = start(cfg()).await;
    let now = registry::Clock::now(&registry::SystemClock);
    for n in 0..1005 {
        let info = registry::InstanceInfo::new("BULK", &format!("b{n:04}"), "h", 80);
        server.registry().register(info, false, now).unwrap();
    }
    let page = http()
        .get(format!("http://{}/", server.local_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("<tr class=\"instance\"").count(), 1000);
    assert!(page.contains("The first 1000 of 1005 instances"), "{page}");
    assert!(page.contains("<th>Instances</th><td>1005</td>"));
    assert!(page.contains("data-id=\"b0999\"") && !page.contains("data-id=\"b1000\""));
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
