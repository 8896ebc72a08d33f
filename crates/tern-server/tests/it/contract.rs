//! The OpenAPI document and the router cannot drift apart: every operation the document
//! lists is served, every route the router is built with is in the document, and no path
//! answers a method the document does not give it.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::Server;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `(METHOD, /path/{param})` of every operation in the served document.
fn documented(server: &Server) -> BTreeSet<(String, String)> {
    let (status, doc) = server.api().with_token(None).get("/api/openapi.json");
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item is an object").keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// `(METHOD, /path/{param})` of every route in the router's source (`api::router`): each
/// `.route("PATH", get(..).post(..)...)`, read from the text the server is built from.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/api/mod.rs");
    let body = &source[source.find("pub fn router(").expect("api/mod.rs defines router")..];
    let body = &body[..body.find("\n}\n").expect("router ends")];
    let mut out = BTreeSet::new();
    let mut rest = body;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments, up to its closing parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a .route( call closes");
        let args = &rest[..end];
        let path = args.split('"').nth(1).expect("a route's first argument is a string literal");
        // The method routers: `get(`, `.post(` ... at the start of a call chain, never
        // inside another name (`DefaultBodyLimit::max(` is not a method).
        for method in METHODS {
            let call = format!("{}(", method.to_lowercase());
            let found = args.match_indices(&call).any(|(i, _)| {
                let before = args[..i].chars().next_back().unwrap_or(' ');
                before == '.' || before == ' ' || before == '\n' || before == ','
            });
            if found {
                out.insert((method.to_owned(), path.to_owned()));
            }
        }
        rest = &rest[end..];
    }
    out
}

/// A concrete path for a template: every `{param}` replaced by a value that names nothing.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| if segment.starts_with('{') { "999999" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the router answered with its fallback (no route at this path).
fn unrouted(status: u16, body: &Value) -> bool {
    status == 404 && body["error"]["message"] == "no such route"
}

#[test]
fn the_document_and_the_router_list_the_same_operations() {
    let dir = tern_testkit::scratch("contract");
    let server = Server::start(&dir.join("data"));
    let documented = documented(&server);
    let routed = routed();
    assert!(routed.len() >= 40, "the router's source was not read: {routed:?}");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(missing.is_empty(), "routes the document does not list: {missing:?}");
    assert!(extra.is_empty(), "operations the document lists that the router does not have: {extra:?}");

    // The live server agrees: each listed operation is routed (whatever it then says about a
    // resource that does not exist), and each other method on a listed path is 405 with
    // `Allow`, in the API's error format.
    let api = server.api();
    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        let url = concrete(path);
        for method in METHODS {
            // A body no route accepts, so nothing is created or changed.
            if method == "GET" && path == "/api/events" {
                continue; // a stream that never ends; the sets above and schemathesis cover it
            }
            let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| serde_json::json!("no"));
            let (status, reply) = api.call(method, &url, body, None);
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(!unrouted(status, &reply) && status != 405, "{method} {url}: {status} {reply}");
            } else {
                assert_eq!(status, 405, "{method} {url} is not in the document: {reply}");
                assert_eq!(reply["error"]["code"], "method_not_allowed", "{method} {url}: {reply}");
            }
        }
    }
    let (status, reply) = api.get("/api/no-such-route");
    assert!(unrouted(status, &reply), "{status} {reply}");
}
