//! The product catalog behind the keys: CRUD, EAN rules, listing, bulk delete.
use crate::helpers::{Fetch, assert_problem, names, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALL: &[&str] = &["products:read", "products:write", "products:delete"];

#[actix_web::test]
async fn a_product_is_created_read_patched_replaced_and_deleted() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let res = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&json!({"ean": "4006381333931", "name": "Pen", "price": 1.5, "sku": "P-1", "attributes": {"color": "blue"}, "reference": "REF-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["is_active"], true);
    let path = format!("/api/v1/products/{id}");
    let got: Value = app
        .with_key(Method::GET, &path, &key.raw)
        .json_value()
        .await;
    assert_eq!(got, created);

    let patched: Value = app
        .with_key(Method::PATCH, &path, &key.raw)
        .json(&json!({"price": 2.25, "sku": null}))
        .json_value()
        .await;
    assert_eq!(patched["price"], 2.25);
    assert!(patched["sku"].is_null());
    assert_eq!(patched["name"], "Pen", "untouched fields stay");
    assert_eq!(patched["attributes"]["color"], "blue");

    let replaced: Value = app
        .with_key(Method::PUT, &path, &key.raw)
        .json(&json!({"ean": "96385074", "name": "Pencil"}))
        .json_value()
        .await;
    assert_eq!(replaced["ean"], "96385074");
    assert!(
        replaced["price"].is_null() && replaced["reference"].is_null(),
        "PUT replaces everything"
    );
    assert_eq!(replaced["created_at"], created["created_at"]);
    assert_eq!(
        app.create_product(&key.raw, "4006381333931", "Reuses the freed EAN")
            .await
            .status(),
        StatusCode::CREATED
    );

    assert_eq!(
        app.status_with_key(Method::DELETE, &path, &key.raw).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.status_with_key(Method::GET, &path, &key.raw).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.status_with_key(Method::DELETE, &path, &key.raw).await,
        StatusCode::NOT_FOUND
    );
}

#[actix_web::test]
async fn eans_are_checked_and_unique_per_tenant_and_environment() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let bad = app
        .create_product(&key.raw, "4006381333932", "Bad check digit")
        .await;
    let body = assert_problem(bad, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["errors"][0]["field"], "ean");
    assert_eq!(
        app.create_product(&key.raw, "4006381333931", "One")
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_problem(
        app.create_product(&key.raw, "4006381333931", "Two").await,
        409,
        "DUPLICATE_EAN",
    )
    .await;
    let other = app
        .create_product(&key.raw, "96385074", "Other")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let res = app
        .with_key(
            Method::PATCH,
            &format!("/api/v1/products/{}", other["id"].as_str().unwrap()),
            &key.raw,
        )
        .json(&json!({"ean": "4006381333931"}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 409, "DUPLICATE_EAN").await;
}

#[actix_web::test]
async fn concurrent_creations_of_one_ean_give_exactly_one_201() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let attempts: Vec<_> = (0..16)
        .map(|i| {
            app.create_product(
                &key.raw,
                "5901234123457",
                if i % 2 == 0 { "a" } else { "b" },
            )
        })
        .collect();
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    let list: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .json_value()
        .await;
    assert_eq!(list["total"], 1);
}

#[actix_web::test]
async fn lists_page_filter_search_and_sort() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let eans = [
        "4006381333931",
        "5901234123457",
        "96385074",
        "0000000000000",
        "4012345678901",
    ];
    for (i, ean) in eans.iter().enumerate() {
        let res = app
            .with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&json!({"ean": ean, "name": format!("Item {i}"), "price": 10.0 - i as f64, "is_active": i % 2 == 0, "sku": format!("SKU-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{ean}");
        app.clock.advance(time::Duration::seconds(1));
    }
    let (app, key) = (&app, &key);
    let get = |q: &'static str| async move {
        app.with_key(Method::GET, &format!("/api/v1/products?{q}"), &key.raw)
            .json_value()
            .await
    };
    let page2 = get("per_page=2&page=2").await;
    assert_eq!(
        (
            page2["total"].as_u64(),
            page2["pages"].as_u64(),
            page2["page"].as_u64()
        ),
        (Some(5), Some(3), Some(2))
    );
    assert_eq!(
        page2["items"][0]["name"], "Item 2",
        "newest first by default"
    );
    let legacy = get("skip=2&limit=2").await;
    assert_eq!(legacy["items"], page2["items"], "skip/limit are aliases");
    let active = get("is_active=true").await;
    assert_eq!(active["total"], 3);
    assert_eq!(names(&active), ["Item 4", "Item 2", "Item 0"]);
    let inactive = get("is_active=false").await;
    assert_eq!(
        (inactive["total"].as_u64(), names(&inactive)),
        (Some(2), vec!["Item 3".to_owned(), "Item 1".to_owned()])
    );
    let second_active = get("is_active=1&per_page=1&page=2").await;
    assert_eq!(
        (second_active["total"].as_u64(), names(&second_active)),
        (Some(3), vec!["Item 2".to_owned()])
    );
    let oldest_inactive = get("is_active=0&sort_order=asc&per_page=1").await;
    assert_eq!(names(&oldest_inactive), ["Item 1"]);
    let search = get("search=sku-3").await;
    assert_eq!(search["items"][0]["name"], "Item 3");
    assert_eq!(get("search=96385074").await["total"], 1);
    let cheap_first = get("sort_by=price&sort_order=asc").await;
    assert_eq!(cheap_first["items"][0]["name"], "Item 4");
    let by_name = get("sort_by=name&sort_order=asc&per_page=1").await;
    assert_eq!(
        (
            by_name["items"][0]["name"].as_str(),
            by_name["total"].as_u64()
        ),
        (Some("Item 0"), Some(5))
    );
}

#[actix_web::test]
async fn bulk_delete_removes_what_exists_and_reports_the_rest() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let a = app
        .create_product(&key.raw, "4006381333931", "a")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let b = app
        .create_product(&key.raw, "96385074", "b")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let missing = uuid::Uuid::now_v7().to_string();
    let res = app
        .with_key(Method::POST, "/api/v1/products/bulk-delete", &key.raw)
        .json(&json!({"ids": [a["id"], b["id"], missing]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["deleted"], 2);
    assert_eq!(body["not_found"], json!([missing]));
    let too_many: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let res = app
        .with_key(Method::POST, "/api/v1/products/bulk-delete", &key.raw)
        .json(&json!({"ids": too_many}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn field_rules_are_enforced_with_every_error_listed() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let res = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&json!({"ean": "4006381333931", "name": " ", "price": -1, "currency": "euro", "is_active": null}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 422, "VALIDATION_ERROR").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in ["name", "price", "currency", "is_active"] {
        assert!(fields.contains(&f), "{f} missing in {fields:?}");
    }
}

/// Clients written against the older docs: `barcode`, `skip`/`limit` with `meta`, `1`/`0`.
#[actix_web::test]
async fn older_clients_keep_their_barcode_paging_meta_and_digit_booleans() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(ALL).await;
    let eans = ["4006381333931", "5901234123457", "96385074"];
    let mut ids = Vec::new();
    for (i, ean) in eans.iter().enumerate() {
        let created: Value = app
            .with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&json!({"ean": ean, "name": format!("Item {i}"), "is_active": i != 1}))
            .json_value()
            .await;
        assert_eq!(created["barcode"], *ean, "barcode is the EAN");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/api/v1/products/{}", ids[0]);
    let echoed = app
        .with_key(Method::PATCH, &path, &key.raw)
        .json(&json!({"barcode": eans[0], "name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed.status(),
        StatusCode::OK,
        "sending back the same barcode is fine"
    );
    let changed = app
        .with_key(Method::PATCH, &path, &key.raw)
        .json(&json!({"barcode": eans[1]}))
        .send()
        .await
        .unwrap();
    assert_problem(changed, 422, "VALIDATION_ERROR").await;

    let (app, key) = (&app, &key);
    let get = |q: &'static str| async move {
        app.with_key(Method::GET, &format!("/api/v1/products?{q}"), &key.raw)
            .send()
            .await
            .unwrap()
    };
    let legacy: Value = get("skip=1&limit=1").await.json().await.unwrap();
    assert_eq!(
        legacy["meta"],
        json!({"total": 3, "page": 2, "per_page": 1, "total_pages": 3, "has_next": true, "has_previous": true})
    );
    assert_eq!(legacy["items"].as_array().unwrap().len(), 1);
    let last: Value = get("skip=2&limit=1").await.json().await.unwrap();
    assert_eq!(last["meta"]["has_next"], false);
    let default_limit: Value = get("skip=0").await.json().await.unwrap();
    assert_eq!(
        default_limit["meta"]["per_page"], 50,
        "the legacy default page size"
    );
    assert_eq!(
        get("limit=500").await.status(),
        StatusCode::OK,
        "the legacy limit goes to 500"
    );
    assert_problem(get("limit=501").await, 422, "VALIDATION_ERROR").await;
    assert_problem(get("per_page=101").await, 422, "VALIDATION_ERROR").await;
    let modern: Value = get("page=1&per_page=2").await.json().await.unwrap();
    assert!(
        modern.get("meta").is_none(),
        "page/per_page answers carry no meta"
    );
    // The paging rules are shared: every list answers the legacy pair the same way.
    let keys: Value = app
        .with_token(Method::GET, "/api/v1/api-keys?skip=0&limit=1", &admin.token)
        .json_value()
        .await;
    assert_eq!(keys["meta"]["per_page"], 1);
    assert_eq!(keys["meta"]["has_previous"], false);

    for (digit, word) in [
        ("is_active=1", "is_active=true"),
        ("is_active=0", "is_active=false"),
    ] {
        let a: Value = get(digit).await.json().await.unwrap();
        let b: Value = get(word).await.json().await.unwrap();
        assert_eq!(a["items"], b["items"], "{digit} = {word}");
    }
    let inactive: Value = get("is_active=0").await.json().await.unwrap();
    assert_eq!(inactive["total"], 1);
    assert_problem(get("is_active=yes").await, 400, "VALIDATION_ERROR").await;
}

#[actix_web::test]
async fn updated_since_and_sort_by_updated_at_follow_the_last_change() {
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let mut ids = Vec::new();
    for (i, ean) in ["4006381333931", "5901234123457", "96385074"]
        .iter()
        .enumerate()
    {
        let created: Value = app
            .with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&json!({"ean": ean, "name": format!("Item {i}")}))
            .json_value()
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
        app.clock.advance(time::Duration::minutes(1));
    }
    let second: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products/{}", ids[1]),
            &key.raw,
        )
        .json_value()
        .await;
    let since = second["updated_at"].as_str().unwrap().to_owned();
    // The first product changes last.
    app.with_key(
        Method::PATCH,
        &format!("/api/v1/products/{}", ids[0]),
        &key.raw,
    )
    .json(&json!({"stock": 5}))
    .json_value()
    .await;

    let (app, key) = (&app, &key);
    let get = |q: String| async move {
        app.with_key(Method::GET, &format!("/api/v1/products?{q}"), &key.raw)
            .send()
            .await
            .unwrap()
    };
    let changed: Value = get(format!(
        "updated_since={since}&sort_by=updated_at&sort_order=asc"
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(names(&changed), ["Item 1", "Item 2", "Item 0"]);
    assert_eq!(changed["total"], 3);
    // From the third creation on, the second product (unchanged since) is left out.
    let third: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products/{}", ids[2]),
            &key.raw,
        )
        .json_value()
        .await;
    let later = third["updated_at"].as_str().unwrap();
    let newer: Value = get(format!(
        "updated_since={later}&sort_by=updated_at&sort_order=asc"
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(names(&newer), ["Item 2", "Item 0"]);
    assert_eq!(newer["total"], 2);
    let newest_first: Value = get(format!("updated_since={later}&sort_by=updated_at"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&newest_first), ["Item 0", "Item 2"]);
    let newest_change: Value = get("sort_by=updated_at&per_page=1".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&newest_change), ["Item 0"]);
    assert_eq!(newest_change["total"], 3);
    let second_page: Value = get("sort_by=updated_at&sort_order=asc&per_page=1&page=2".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&second_page), ["Item 2"]);
    // In creation order, and with a filter: still only what changed since.
    let by_creation: Value = get(format!("updated_since={since}&sort_order=asc"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&by_creation), ["Item 0", "Item 1", "Item 2"]);
    let after: Value = get(format!("updated_since={since}&is_active=true&search=item"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["total"], 3);
    // An unencoded `+` in the offset arrives as a space and still reads as `+`.
    let plus = since.replace('Z', "+00:00");
    let with_offset: Value = get(format!("updated_since={plus}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(with_offset["total"], 3);
    let later = "2999-01-01T00:00:00Z";
    let none: Value = get(format!("updated_since={later}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0);
    assert_problem(
        get("updated_since=yesterday".into()).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
}

/// SPEC §6: a deletion leaves a tombstone, `updated_since` reports it, the sweep forgets it
/// after `--tombstone-retention`.
#[actix_web::test]
async fn deletions_leave_tombstones_that_change_feeds_report_until_they_are_swept() {
    use pixee_pim::clock::Clock as _;
    let app = crate::helpers::spawn_app_with(pixee_pim::config::ServeArgs {
        tombstone_retention: Some(pixee_pim::config::Span::days(7)),
        ..Default::default()
    })
    .await;
    let (_, key) = app.admin_and_key(ALL).await;
    let mut ids = Vec::new();
    for (ean, reference) in [
        ("4006381333931", Some("R-1")),
        ("5901234123457", None),
        ("96385074", None),
    ] {
        let created: Value = app
            .with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&json!({"ean": ean, "name": "Doomed", "reference": reference}))
            .json_value()
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let before = app.clock.now();
    app.clock.advance(time::Duration::hours(1));
    let since = app.clock.now();
    assert_eq!(
        app.status_with_key(
            Method::DELETE,
            &format!("/api/v1/products/{}", ids[0]),
            &key.raw
        )
        .await,
        StatusCode::NO_CONTENT
    );
    app.with_key(Method::POST, "/api/v1/products/bulk-delete", &key.raw)
        .json(&json!({"ids": [ids[1]]}))
        .json_value()
        .await;
    let feed = |t: time::OffsetDateTime| {
        let at = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let url = format!("/api/v1/products?updated_since={at}");
        app.with_key(Method::GET, &url, &key.raw).json_value()
    };
    let changes = feed(since).await;
    let deleted = changes["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 2, "{changes}");
    assert_eq!(deleted[0]["id"], ids[0].as_str());
    assert_eq!(deleted[0]["ean"], "4006381333931");
    assert_eq!(deleted[0]["reference"], "R-1");
    assert_eq!(deleted[1]["id"], ids[1].as_str());
    assert_eq!(changes["deleted_more"], false);
    assert_eq!(
        changes["total"], 0,
        "nothing changed and still exists since then"
    );
    let everything = feed(before).await;
    assert_eq!(everything["total"], 1, "the survivor was created before");
    assert_eq!(everything["deleted"].as_array().unwrap().len(), 2);
    let plain: Value = app
        .with_key(Method::GET, "/api/v1/products", &key.raw)
        .json_value()
        .await;
    assert!(
        plain.get("deleted").is_none(),
        "only change feeds carry deletions"
    );

    // A test key's feed never shows live deletions.
    let admin = app.admin().await;
    let test_key = app.create_key(&admin.token, ALL, "test").await;
    let at = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let test_feed: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products?updated_since={at}"),
            &test_key.raw,
        )
        .json_value()
        .await;
    assert_eq!(test_feed["deleted"].as_array().unwrap().len(), 0);

    app.clock.advance(time::Duration::days(6));
    assert_eq!(
        app.app_catalog.sweep_tombstones().unwrap(),
        0,
        "younger than 7 days"
    );
    app.clock.advance(time::Duration::days(2));
    assert_eq!(app.app_catalog.sweep_tombstones().unwrap(), 2);
    assert_eq!(feed(before).await["deleted"].as_array().unwrap().len(), 0);
}

/// A bulk delete of more products than one stored chunk of tombstones holds (32), all stamped
/// at the same clock time: the change feed reports each of them once, in deletion order, with
/// strictly increasing `deleted_at` (docs/DECISIONS.md, "Deletion times within a namespace").
#[actix_web::test]
async fn a_bulk_delete_larger_than_a_tombstone_chunk_is_reported_whole_and_in_order() {
    use pixee_pim::clock::Clock as _;
    let app = spawn_app().await;
    let (_, key) = app.admin_and_key(ALL).await;
    let mut ids = Vec::new();
    for n in 0..45u64 {
        let body = 400_000_000_000 + n;
        let digits: Vec<u64> = body
            .to_string()
            .bytes()
            .map(|b| u64::from(b - b'0'))
            .collect();
        let sum: u64 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| if i % 2 == 1 { 3 * d } else { *d })
            .sum();
        let created: Value = app
            .with_key(Method::POST, "/api/v1/products", &key.raw)
            .json(&json!({"ean": format!("{body}{}", (10 - sum % 10) % 10), "name": "Doomed"}))
            .json_value()
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let since = app.clock.now();
    let answer: Value = app
        .with_key(Method::POST, "/api/v1/products/bulk-delete", &key.raw)
        .json(&json!({ "ids": ids }))
        .json_value()
        .await;
    assert_eq!(answer["deleted"], 45, "{answer}");
    let at = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let feed: Value = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products?updated_since={at}"),
            &key.raw,
        )
        .json_value()
        .await;
    let deleted = feed["deleted"].as_array().unwrap();
    let reported: Vec<&str> = deleted.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(reported, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let times: Vec<time::OffsetDateTime> = deleted
        .iter()
        .map(|d| {
            time::OffsetDateTime::parse(
                d["deleted_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert!(times[0] >= since);
}

/// List answers are kept until the next catalog write: the very next identical request sees
/// every kind of write that changes what the list shows, including a supplier's new code
/// reaching its products.
#[actix_web::test]
async fn a_repeated_list_sees_every_write_at_once() {
    let app = spawn_app().await;
    let (admin, key) = app
        .admin_and_key(&["products:read", "products:write", "products:delete"])
        .await;
    let list = || async {
        app.with_key(Method::GET, "/api/v1/products?per_page=5", &key.raw)
            .json_value()
            .await
    };
    assert_eq!(list().await["total"], 0);
    let res = app
        .create_product(&key.raw, "4006381333931", "Kettle")
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = list().await;
    assert_eq!(first["items"][0]["name"], "Kettle");
    assert_eq!(list().await, first, "an unchanged catalog answers the same");
    let patch = |body: Value| {
        app.with_key(Method::PATCH, &format!("/api/v1/products/{id}"), &key.raw)
            .json(&body)
            .status_code()
    };
    assert_eq!(patch(json!({"name": "Teapot"})).await, StatusCode::OK);
    assert_eq!(list().await["items"][0]["name"], "Teapot");
    let res = app
        .with_token(Method::POST, "/api/v1/suppliers", &admin.token)
        .json(&json!({"code": "ACME", "name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let supplier = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        patch(json!({"supplier_code": "ACME"})).await,
        StatusCode::OK
    );
    assert_eq!(list().await["items"][0]["supplier_code"], "ACME");
    let renamed = app
        .with_token(
            Method::PATCH,
            &format!("/api/v1/suppliers/{supplier}"),
            &admin.token,
        )
        .json(&json!({"code": "ACME2"}))
        .status_code()
        .await;
    assert_eq!(renamed, StatusCode::OK);
    assert_eq!(list().await["items"][0]["supplier_code"], "ACME2");
    let deleted = app
        .with_key(Method::DELETE, &format!("/api/v1/products/{id}"), &key.raw)
        .status_code()
        .await;
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(list().await["total"], 0);
}
