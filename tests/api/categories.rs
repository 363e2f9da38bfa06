//! Categories: the tree with paths and positions, sibling names, placements refused (unknown
//! parent, cycles, depth), moves and renames down the subtree, products that name categories
//! and the descendant filter, deletes with and without cascade, mappings per channel.
use crate::helpers::{Fetch, TestApp, assert_problem, spawn_app};
use pixee_pim::auth::lockout::LockoutState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY_SCOPES: &[&str] = &[
    "products:read",
    "products:write",
    "products:delete",
    "categories:read",
];

async fn post(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.with_token(Method::POST, "/api/v1/categories", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn patch(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.with_token(Method::PATCH, &format!("/api/v1/categories/{id}"), token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Creates a category and answers its id.
async fn make(app: &TestApp, token: &str, name: &str, parent: Option<&str>) -> String {
    let res = post(app, token, json!({"name": name, "parent_id": parent})).await;
    assert_eq!(res.status(), StatusCode::CREATED, "creating {name}");
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn get(app: &TestApp, token: &str, id: &str) -> Value {
    app.with_token(Method::GET, &format!("/api/v1/categories/{id}"), token)
        .json_value()
        .await
}

async fn flat_names(app: &TestApp, token: &str) -> Vec<String> {
    let flat = app
        .with_token(Method::GET, "/api/v1/categories?flat=1&per_page=100", token)
        .json_value()
        .await;
    flat["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_owned())
        .collect()
}

fn check(app: &TestApp) -> std::collections::HashMap<&'static str, usize> {
    app.app_auth
        .store
        .check_integrity::<LockoutState>()
        .expect("paths, counts and indexes agree with the records")
        .trees
        .into_iter()
        .collect()
}

#[actix_web::test]
async fn the_tree_nests_children_by_position_with_paths_and_reads_flat() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let t = &admin.token;
    let garden = make(&app, t, " Garden ", None).await;
    let kitchen = make(&app, t, "Kitchen", None).await;
    let tools = make(&app, t, "Tools", Some(&garden)).await;
    make(&app, t, "Hoses", Some(&garden)).await;
    let pots = post(
        &app,
        t,
        json!({"name": "Pots", "parent_id": garden, "position": 0}),
    )
    .await;
    assert_eq!(pots.status(), StatusCode::CREATED);
    let pots: Value = pots.json().await.unwrap();
    assert_eq!(
        pots["path"], "Garden/Pots",
        "names trimmed, joined from the root"
    );
    assert_eq!(pots["depth"], 2);
    assert_eq!(pots["position"], 0);

    let tools_read = get(&app, t, &tools).await;
    assert_eq!(tools_read["position"], 0, "the first child goes first");
    assert_eq!(
        get(&app, t, &kitchen).await["position"],
        1,
        "after the last sibling"
    );

    let tree = app
        .with_key(Method::GET, "/api/v1/categories", &key.raw)
        .json_value()
        .await;
    assert_eq!(tree["total"], 5);
    let roots: Vec<&str> = tree["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(roots, ["Garden", "Kitchen"]);
    let children: Vec<&str> = tree["items"][0]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        ["Pots", "Tools", "Hoses"],
        "by position, then name"
    );
    assert_eq!(tree["items"][1]["children"], json!([]));

    assert_eq!(
        flat_names(&app, t).await,
        [
            "Garden",
            "Garden/Pots",
            "Garden/Tools",
            "Garden/Hoses",
            "Kitchen"
        ]
    );
    let one = get(&app, t, &garden).await;
    assert_eq!(one["children"].as_array().unwrap().len(), 3);
    assert_eq!(one["product_count"], 0);

    let no_scope = app
        .create_key(&admin.token, &["products:read"], "live")
        .await;
    let refused = app
        .with_key(Method::GET, "/api/v1/categories", &no_scope.raw)
        .send()
        .await
        .unwrap();
    assert_problem(refused, 403, "PERMISSION_DENIED").await;
    let unknown = app
        .with_key(
            Method::GET,
            "/api/v1/categories/0191d5f0-0000-7000-8000-000000000000",
            &key.raw,
        )
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, "NOT_FOUND").await;
    check(&app);
}

#[actix_web::test]
async fn names_parents_cycles_and_depth_are_checked_and_a_refusal_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let t = &admin.token;
    let a = make(&app, t, "A", None).await;
    let b = make(&app, t, "B", Some(&a)).await;
    let c = make(&app, t, "C", Some(&b)).await;
    make(&app, t, "Other", None).await;
    make(&app, t, "B", None).await; // the same name under another parent is fine
    let before = flat_names(&app, t).await;

    assert_problem(post(&app, t, json!({"name": "a"})).await, 409, "CONFLICT").await;
    assert_problem(
        post(
            &app,
            t,
            json!({"name": "x", "parent_id": "0191d5f0-0000-7000-8000-000000000000"}),
        )
        .await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    for bad in [
        json!({"name": "a/b"}),
        json!({"name": "  "}),
        json!({"name": "x", "position": -1}),
        json!({"name": "x", "position": 1.5}),
        json!({}),
    ] {
        assert_problem(post(&app, t, bad).await, 422, "VALIDATION_ERROR").await;
    }
    // Self, a child, a grandchild: each would make a cycle.
    for under in [&a, &b, &c] {
        let res = patch(&app, t, &a, json!({"parent_id": under})).await;
        assert_problem(res, 422, "VALIDATION_ERROR").await;
    }
    // A rename onto a sibling's name.
    let res = patch(&app, t, &a, json!({"name": "OTHER"})).await;
    assert_problem(res, 409, "CONFLICT").await;
    assert_eq!(
        flat_names(&app, t).await,
        before,
        "refusals changed nothing"
    );

    // Depth: eight levels, not nine.
    let mut parent = make(&app, t, "L1", None).await;
    let mut chain = vec![parent.clone()];
    for level in 2..=8 {
        parent = make(&app, t, &format!("L{level}"), Some(&parent)).await;
        chain.push(parent.clone());
    }
    let too_deep = post(&app, t, json!({"name": "L9", "parent_id": parent})).await;
    assert_problem(too_deep, 422, "VALIDATION_ERROR").await;
    // A (with B and C below it, three levels) cannot go under L6 (6 + 3 > 8), but under L5.
    let res = patch(&app, t, &a, json!({"parent_id": chain[5]})).await;
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = patch(&app, t, &a, json!({"parent_id": chain[4]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        get(&app, t, &c).await["path"],
        "L1/L2/L3/L4/L5/A/B/C",
        "the move rewrote the grandchild's path"
    );
    assert_eq!(get(&app, t, &c).await["depth"], 8);
    check(&app);
}

#[actix_web::test]
async fn moves_and_renames_rewrite_the_paths_of_the_whole_subtree() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let t = &admin.token;
    let a = make(&app, t, "A", None).await;
    let b = make(&app, t, "B", Some(&a)).await;
    let c = make(&app, t, "C", Some(&b)).await;
    let d = make(&app, t, "D", None).await;

    let moved = patch(&app, t, &b, json!({"parent_id": null})).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!(
        (moved["path"].as_str(), moved["depth"].as_u64()),
        (Some("B"), Some(1))
    );
    assert_eq!(get(&app, t, &c).await["path"], "B/C");
    assert_eq!(get(&app, t, &a).await["children"], json!([]));

    let renamed = patch(&app, t, &b, json!({"name": "Bee"})).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(get(&app, t, &c).await["path"], "Bee/C");

    let res = patch(&app, t, &b, json!({"parent_id": d, "position": 7})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let c_now = get(&app, t, &c).await;
    assert_eq!(
        (c_now["path"].as_str(), c_now["depth"].as_u64()),
        (Some("D/Bee/C"), Some(3))
    );
    assert_eq!(get(&app, t, &b).await["position"], 7);
    // Reordering alone keeps the paths.
    let res = patch(&app, t, &b, json!({"position": 2})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(get(&app, t, &c).await["path"], "D/Bee/C");
    check(&app);
}

#[actix_web::test]
async fn products_name_existing_categories_and_the_filter_covers_descendants() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let t = &admin.token;
    let garden = make(&app, t, "Garden", None).await;
    let tools = make(&app, t, "Tools", Some(&garden)).await;
    let spades = make(&app, t, "Spades", Some(&tools)).await;
    let kitchen = make(&app, t, "Kitchen", None).await;
    let create = |ean: &'static str, cats: Vec<String>| {
        let (app, key) = (&app, &key);
        async move {
            app.with_key(Method::POST, "/api/v1/products", &key.raw)
                .json(&json!({"ean": ean, "name": ean, "category_ids": cats}))
                .send()
                .await
                .unwrap()
        }
    };
    let unknown = "0191d5f0-0000-7000-8000-000000000000".to_owned();
    assert_problem(
        create("4006381333931", vec![garden.clone(), unknown.clone()]).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    let p1: Value = create("4006381333931", vec![garden.clone()])
        .await
        .json()
        .await
        .unwrap();
    let p2: Value = create("96385074", vec![spades.clone(), kitchen.clone()])
        .await
        .json()
        .await
        .unwrap();
    let p3: Value = create("5901234123457", vec![kitchen.clone()])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        create("4012345678901", vec![]).await.status(),
        StatusCode::CREATED
    );

    let ids_in = |category: String| {
        let (app, key) = (&app, &key);
        async move {
            let page = app
                .with_key(
                    Method::GET,
                    &format!("/api/v1/products?category_id={category}"),
                    &key.raw,
                )
                .json_value()
                .await;
            let mut ids: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            assert_eq!(page["total"], ids.len());
            ids
        }
    };
    let id = |p: &Value| p["id"].as_str().unwrap().to_owned();
    let mut garden_ids = vec![id(&p1), id(&p2)];
    garden_ids.sort();
    assert_eq!(
        ids_in(garden.clone()).await,
        garden_ids,
        "the category and its descendants"
    );
    assert_eq!(ids_in(tools.clone()).await, vec![id(&p2)]);
    let mut kitchen_ids = vec![id(&p2), id(&p3)];
    kitchen_ids.sort();
    assert_eq!(ids_in(kitchen.clone()).await, kitchen_ids);
    assert_eq!(ids_in(unknown.clone()).await, Vec::<String>::new());
    assert_eq!(
        get(&app, t, &garden).await["product_count"],
        1,
        "its own products only"
    );
    assert_eq!(get(&app, t, &spades).await["product_count"], 1);

    let path = format!("/api/v1/products/{}", id(&p2));
    let res = app
        .with_key(Method::PATCH, &path, &key.raw)
        .json(&json!({"category_ids": [unknown]}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "VALIDATION_ERROR").await;
    let res = app
        .with_key(Method::PATCH, &path, &key.raw)
        .json(&json!({"category_ids": [kitchen]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(get(&app, t, &spades).await["product_count"], 0);
    assert_eq!(ids_in(garden.clone()).await, vec![id(&p1)]);
    let res = app
        .with_key(Method::DELETE, &path, &key.raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&app, t, &kitchen).await["product_count"],
        1,
        "a delete counts too"
    );
    let counts = check(&app);
    assert_eq!(counts["products_by_category"], 2);
}

#[actix_web::test]
async fn a_delete_is_refused_while_children_or_products_hang_on_it_unless_cascade() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let t = &admin.token;
    let garden = make(&app, t, "Garden", None).await;
    let tools = make(&app, t, "Tools", Some(&garden)).await;
    let empty = make(&app, t, "Empty", None).await;
    let product: Value = app
        .with_key(Method::POST, "/api/v1/products", &key.raw)
        .json(&json!({"ean": "4006381333931", "name": "Spade", "category_ids": [tools, empty]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = app
        .with_token(
            Method::PUT,
            &format!("/api/v1/categories/{tools}/mappings/shopify"),
            t,
        )
        .json(&json!({"external_id": "gid://shopify/Collection/1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let delete = |id: String, query: &'static str| {
        let app = &app;
        async move {
            app.with_token(
                Method::DELETE,
                &format!("/api/v1/categories/{id}{query}"),
                t,
            )
            .send()
            .await
            .unwrap()
        }
    };
    assert_problem(delete(garden.clone(), "").await, 409, "CONFLICT").await;
    assert_problem(delete(tools.clone(), "").await, 409, "CONFLICT").await;
    assert_problem(
        delete(empty.clone(), "?cascade=false").await,
        409,
        "CONFLICT",
    )
    .await;
    assert_eq!(flat_names(&app, t).await.len(), 3, "nothing went");

    let gone = delete(garden.clone(), "?cascade=true").await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    for id in [&garden, &tools] {
        let res = app
            .with_token(Method::GET, &format!("/api/v1/categories/{id}"), t)
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "NOT_FOUND").await;
    }
    let after = app
        .with_key(
            Method::GET,
            &format!("/api/v1/products/{}", product["id"].as_str().unwrap()),
            &key.raw,
        )
        .json_value()
        .await;
    assert_eq!(
        after["category_ids"],
        json!([empty]),
        "the product stays, out of the subtree"
    );
    let mappings = app
        .with_key(Method::GET, "/api/v1/categories/mappings", &key.raw)
        .json_value()
        .await;
    assert_eq!(mappings["total"], 0, "the subtree's mappings went with it");
    assert_eq!(
        delete(empty.clone(), "?cascade=1").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(empty.clone(), "").await.status(),
        StatusCode::NOT_FOUND
    );
    let counts = check(&app);
    assert_eq!(counts["categories"], 0);
    assert_eq!(counts["products_by_category"], 0);
}

#[actix_web::test]
async fn mappings_are_one_per_category_and_channel() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    let t = &admin.token;
    let garden = make(&app, t, "Garden", None).await;
    let put = |channel: &'static str, body: Value| {
        let (app, garden) = (&app, &garden);
        async move {
            app.with_token(
                Method::PUT,
                &format!("/api/v1/categories/{garden}/mappings/{channel}"),
                t,
            )
            .json(&body)
            .send()
            .await
            .unwrap()
        }
    };
    let first = put(
        "shopify",
        json!({"external_id": "1", "external_name": "Garden"}),
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = put("shopify", json!({"external_id": "2"})).await;
    assert_eq!(again.status(), StatusCode::OK, "a second PUT replaces");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["external_id"], "2");
    assert_eq!(again["external_name"], Value::Null);
    assert_eq!(
        put("google", json!({"external_id": "543"})).await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        put("Shop ify", json!({"external_id": "1"})).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_problem(put("amazon", json!({})).await, 422, "VALIDATION_ERROR").await;

    let list = |q: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            app.with_key(
                Method::GET,
                &format!("/api/v1/categories/mappings{q}"),
                &key.raw,
            )
            .json_value()
            .await
        }
    };
    assert_eq!(list("").await["total"], 2);
    let shopify = list("?channel=shopify").await;
    assert_eq!(shopify["total"], 1);
    assert_eq!(shopify["items"][0]["category_id"], json!(garden));

    let unknown = app
        .with_token(
            Method::PUT,
            "/api/v1/categories/0191d5f0-0000-7000-8000-000000000000/mappings/shopify",
            t,
        )
        .json(&json!({"external_id": "1"}))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404, "NOT_FOUND").await;
    let by_key = app
        .with_key(
            Method::PUT,
            &format!("/api/v1/categories/{garden}/mappings/shopify"),
            &key.raw,
        )
        .json(&json!({"external_id": "1"}))
        .send()
        .await
        .unwrap();
    assert_problem(by_key, 403, "PERMISSION_DENIED").await;

    let path = format!("/api/v1/categories/{garden}/mappings/google");
    let del = app.with_token(Method::DELETE, &path, t).status_code().await;
    assert_eq!(del, StatusCode::NO_CONTENT);
    let del = app
        .with_token(Method::DELETE, &path, t)
        .send()
        .await
        .unwrap();
    assert_problem(del, 404, "NOT_FOUND").await;
    assert_eq!(list("").await["total"], 1);
    check(&app);
}

#[actix_web::test]
async fn only_editor_and_admin_sessions_write_categories() {
    let app = spawn_app().await;
    let (admin, key) = app.admin_and_key(KEY_SCOPES).await;
    app.create_user(&admin.token, "ed@example.com", "editor")
        .await;
    app.create_user(&admin.token, "vi@example.com", "viewer")
        .await;
    let editor = app.login("ed@example.com", "a fine password 1").await;
    let viewer = app.login("vi@example.com", "a fine password 1").await;
    make(&app, &editor.token, "By editor", None).await;
    assert_problem(
        post(&app, &viewer.token, json!({"name": "V"})).await,
        403,
        "PERMISSION_DENIED",
    )
    .await;
    let by_key = app
        .with_key(Method::POST, "/api/v1/categories", &key.raw)
        .json(&json!({"name": "K"}))
        .send()
        .await
        .unwrap();
    assert_problem(by_key, 403, "PERMISSION_DENIED").await;
    let read = app
        .with_token(Method::GET, "/api/v1/categories", &viewer.token)
        .json_value()
        .await;
    assert_eq!(read["total"], 1, "a viewer reads the tree");
    // A test key sees the test environment's tree, which sessions (live) do not write.
    let test_key = app
        .create_key(&admin.token, &["categories:read"], "test")
        .await;
    let test_tree = app
        .with_key(Method::GET, "/api/v1/categories", &test_key.raw)
        .json_value()
        .await;
    assert_eq!(test_tree["total"], 0);
}

#[actix_web::test]
async fn concurrent_opposite_moves_never_make_a_cycle() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let t = &admin.token;
    for round in 0..8 {
        let a = make(&app, t, &format!("A{round}"), None).await;
        let b = make(&app, t, &format!("B{round}"), None).await;
        let (ra, rb) = tokio::join!(
            patch(&app, t, &a, json!({"parent_id": b})),
            patch(&app, t, &b, json!({"parent_id": a})),
        );
        let statuses = [ra.status().as_u16(), rb.status().as_u16()];
        assert!(
            statuses.iter().filter(|s| **s == 200).count() == 1,
            "exactly one of two opposite moves lands: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| [200, 422].contains(s)),
            "{statuses:?}"
        );
    }
    check(&app);
}
