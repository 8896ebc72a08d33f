//! Configuration layering: defaults, then the file, then the environment, then flags.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use tern_server::{Config, ServerArgs};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn each_layer_overrides_the_one_before() {
    let dir = tern_testkit::scratch("config");
    let file = dir.join("server.toml");
    std::fs::write(
        &file,
        "data_dir = \"/from/file\"\nhttp = \"127.0.0.1:1001\"\nmqtt = \"127.0.0.1:1002\"\nmax_module_size = 5\n",
    )
    .unwrap();
    let defaults = Config::default();
    let with_file = ServerArgs { config: Some(file.clone()), ..ServerArgs::default() };
    let all_flags = ServerArgs {
        config: Some(file.clone()),
        data: Some(PathBuf::from("/from/flag")),
        http: Some(addr("127.0.0.1:3001")),
        ..ServerArgs::default()
    };
    let env_http: HashMap<&str, &str> = HashMap::from([("TERN_HTTP", "127.0.0.1:2001")]);
    let env_all: HashMap<&str, &str> =
        HashMap::from([("TERN_HTTP", "127.0.0.1:2001"), ("TERN_MQTT", "127.0.0.1:2002"), ("TERN_DATA", "/from/env")]);
    let none: HashMap<&str, &str> = HashMap::new();
    // (args, env, expected data dir, http, mqtt, max module size)
    let cases = [
        (
            ServerArgs::default(),
            &none,
            defaults.data_dir.clone(),
            defaults.http,
            defaults.mqtt,
            defaults.max_module_size,
        ),
        (
            with_file.clone(),
            &none,
            PathBuf::from("/from/file"),
            addr("127.0.0.1:1001"),
            Some(addr("127.0.0.1:1002")),
            5,
        ),
        (
            with_file.clone(),
            &env_http,
            PathBuf::from("/from/file"),
            addr("127.0.0.1:2001"),
            Some(addr("127.0.0.1:1002")),
            5,
        ),
        (with_file, &env_all, PathBuf::from("/from/env"), addr("127.0.0.1:2001"), Some(addr("127.0.0.1:2002")), 5),
        (all_flags, &env_all, PathBuf::from("/from/flag"), addr("127.0.0.1:3001"), Some(addr("127.0.0.1:2002")), 5),
    ];
    for (i, (args, env, data, http, mqtt, max)) in cases.into_iter().enumerate() {
        let config = Config::resolve(&args, |name| env.get(name).map(|v| v.to_string())).unwrap();
        assert_eq!(
            (config.data_dir, config.http, config.mqtt, config.max_module_size),
            (data, http, mqtt, max),
            "case {i}"
        );
    }
    // TERN_CONFIG names the file when no flag does.
    let env_config: HashMap<&str, String> = HashMap::from([("TERN_CONFIG", file.display().to_string())]);
    let config = Config::resolve(&ServerArgs::default(), |name| env_config.get(name).cloned()).unwrap();
    assert_eq!(config.http, addr("127.0.0.1:1001"));
}

/// Flags, environment variables, and text the error must contain.
type BadCase = (ServerArgs, Vec<(&'static str, &'static str)>, String);

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tern_testkit::scratch("config-bad");
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "htp = \"127.0.0.1:1\"\n").unwrap();
    let bad_addr = dir.join("addr.toml");
    std::fs::write(&bad_addr, "http = \"localhost\"\n").unwrap();
    let missing = dir.join("missing.toml");
    let not_a_key = dir.join("not-a-key.pem");
    std::fs::write(&not_a_key, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let bad_key = dir.join("keys.toml");
    std::fs::write(&bad_key, "trusted_keys = [\"not-a-key.pem\"]\n").unwrap();
    // (args, env, text the error must contain)
    let cases: Vec<BadCase> = vec![
        (ServerArgs { config: Some(typo.clone()), ..ServerArgs::default() }, vec![], "unknown field `htp`".into()),
        (
            ServerArgs { config: Some(bad_addr.clone()), ..ServerArgs::default() },
            vec![],
            bad_addr.display().to_string(),
        ),
        (ServerArgs { config: Some(missing.clone()), ..ServerArgs::default() }, vec![], missing.display().to_string()),
        (ServerArgs::default(), vec![("TERN_MQTT", "nowhere")], "TERN_MQTT=nowhere".into()),
        // A key file named in the file resolves beside it, and must be a public key.
        (
            ServerArgs { config: Some(bad_key.clone()), ..ServerArgs::default() },
            vec![],
            format!("{}: not an ED25519 public key", not_a_key.display()),
        ),
        (
            ServerArgs { trusted_key: vec![missing.clone()], ..ServerArgs::default() },
            vec![],
            format!("{}: cannot read", missing.display()),
        ),
    ];
    for (args, env, needle) in cases {
        let err = Config::resolve(&args, |name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
            .expect_err(&needle);
        let text = format!("{err:#}");
        assert!(text.contains(&needle), "{text} should mention {needle}");
    }
}

#[test]
fn tls_settings_and_plain_listeners() {
    use tern_server::TlsSource;
    let dir = tern_testkit::scratch("config-tls");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Some(path)
    };
    let with = |config: Option<PathBuf>, args: ServerArgs| ServerArgs { config, ..args };
    let none = |_: &str| None::<String>;

    // Without TLS: plain listeners on loopback, as before.
    let config = Config::resolve(&ServerArgs::default(), none).unwrap();
    assert_eq!((config.tls.clone(), config.mqtt), (TlsSource::Off, Some(addr("127.0.0.1:1883"))));

    // Certificate files named in the file resolve beside it; plain MQTT is off unless asked.
    let tls_file = file("tls.toml", "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\nhttp = \"0.0.0.0:8443\"\n");
    let config = Config::resolve(&with(tls_file.clone(), ServerArgs::default()), none).unwrap();
    let TlsSource::Files(files) = &config.tls else { panic!("TLS from files: {:?}", config.tls) };
    assert_eq!((files.cert.clone(), files.key.clone()), (dir.join("cert.pem"), dir.join("key.pem")));
    assert_eq!((config.mqtt, config.mqtts, config.http), (None, addr("127.0.0.1:8883"), addr("0.0.0.0:8443")));
    let args = ServerArgs { mqtt: Some(addr("127.0.0.1:1883")), ..ServerArgs::default() };
    let config = Config::resolve(&with(tls_file.clone(), args), none).unwrap();
    assert_eq!(config.mqtt, Some(addr("127.0.0.1:1883")), "an explicit plain MQTT listener beside TLS");

    let self_signed =
        ServerArgs { self_signed: true, tls_client_ca: Some(dir.join("ca.pem")), ..ServerArgs::default() };
    let config = Config::resolve(&self_signed, none).unwrap();
    assert_eq!(config.tls, TlsSource::SelfSigned { client_ca: Some(dir.join("ca.pem")) });

    // Plain on a public address only when allowed explicitly.
    let public = file("public.toml", "http = \"0.0.0.0:8080\"\nallow_plain_public = true\n");
    assert!(Config::resolve(&with(public, ServerArgs::default()), none).is_ok());

    let bad: Vec<(Option<PathBuf>, ServerArgs, &str)> = vec![
        (None, ServerArgs { http: Some(addr("0.0.0.0:8080")), ..ServerArgs::default() }, "plain HTTP on 0.0.0.0:8080"),
        (
            tls_file,
            ServerArgs { mqtt: Some(addr("0.0.0.0:1883")), ..ServerArgs::default() },
            "plain MQTT on 0.0.0.0:1883",
        ),
        (file("half.toml", "tls_cert = \"cert.pem\"\n"), ServerArgs::default(), "tls_key is not"),
        (None, ServerArgs { tls_client_ca: Some(dir.join("ca.pem")), ..ServerArgs::default() }, "needs TLS"),
    ];
    for (config, args, needle) in bad {
        let err = Config::resolve(&with(config, args), none).expect_err(needle);
        let text = format!("{err:#}");
        assert!(text.contains(needle), "{text} should mention {needle}");
    }
}
