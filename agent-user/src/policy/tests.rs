//! Diagnostics of bad profiles: file, line, column, field and a hint.

use super::*;

const HEAD: &str =
    "name: t\ndescription: d\nowners:\n  business: b\n  technical: t\nmode: enforce\n";

fn errors(body: &str) -> Vec<Diagnostic> {
    match parse("t.yaml", &format!("{HEAD}{body}")) {
        Ok(p) => panic!("parsed: {:?}", p.file),
        Err(d) => d,
    }
}

#[test]
fn unknown_field_is_located_and_named() {
    let d = &errors("files:\n  deny: [/etc/shadow]\n  permit: [/tmp]\n")[0];
    assert_eq!((d.line, d.field.as_str()), (9, "files.permit"), "{d}");
    assert!(d.message.starts_with("unknown field `permit`"), "{d}");
    assert!(d.hint.is_some());
    assert!(d.to_string().starts_with("t.yaml:9:"), "{d}");
}

#[test]
fn bad_pattern_points_at_the_list_item() {
    let d = &errors("files:\n  deny:\n    - /etc/shadow\n    - etc/passwd\n")[0];
    assert_eq!((d.line, d.field.as_str()), (10, "files.deny[1]"), "{d}");
    assert!(d.message.contains("not absolute"));
    assert!(d.hint.as_deref().unwrap().contains("start with"));
}

#[test]
fn bad_destinations_and_ports() {
    let e = errors(
        "network:\n  allow:\n    - { cidr: 10.0.0.0/40 }\n    - { host: a.example, ports: \"9-1\" }\n    - { cidr: 10.0.0.1, host: x.example }\n",
    );
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "network.allow[0]",
            "network.allow[1].ports",
            "network.allow[2]"
        ],
        "{e:?}"
    );
    assert_eq!(e[0].line, 9);
}

#[test]
fn the_system_name_servers_are_a_destination_on_port_53_by_default() {
    let p = parse(
        "t.yaml",
        &format!(
            "{HEAD}network:\n  allow:\n    - {{ nameservers: system }}\n    - {{ nameservers: system, ports: \"853\" }}\n"
        ),
    )
    .unwrap();
    let got: Vec<(Target, Vec<(u16, u16)>)> = p
        .net_allow
        .iter()
        .map(|d| {
            (
                d.value.target.clone(),
                d.value.ports.iter().map(|r| (r.lo, r.hi)).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Target::Nameservers, vec![(53, 53)]),
            (Target::Nameservers, vec![(853, 853)])
        ]
    );
    let d = &errors("network:\n  allow:\n    - { nameservers: mine }\n")[0];
    assert_eq!(d.line, 9, "{d}");
    assert!(d.message.contains("unknown variant `mine`"), "{d}");
    let d = &errors("network:\n  allow:\n    - { nameservers: system, cidr: 10.0.0.1 }\n")[0];
    assert_eq!((d.line, d.field.as_str()), (9, "network.allow[0]"), "{d}");
    assert!(d.message.contains("`nameservers`"), "{d}");
}

#[test]
fn owners_are_required() {
    let e = parse("t.yaml", "name: t\ndescription: d\nmode: enforce\n").unwrap_err();
    assert_eq!(e[0].field, "owners", "{}", e[0]);
    assert!(e[0].message.contains("missing field `owners`"), "{}", e[0]);
    let e = parse(
        "t.yaml",
        "name: t\ndescription: d\nowners:\n  business: \"\"\n  technical: t\nmode: enforce\n",
    )
    .unwrap_err();
    assert_eq!(
        (e[0].field.as_str(), e[0].line),
        ("owners.business", 4),
        "{}",
        e[0]
    );
}

#[test]
fn wildcards_the_kernel_cannot_match_are_flagged_alert_only() {
    let p = parse(
        "t.yaml",
        &format!("{HEAD}files:\n  deny: [\"/**/*.pem\", ~/.ssh/**, \"**/.env\"]\n"),
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].message.contains("alert-only"));
    assert_eq!(p.warnings[0].field, "files.deny[0]");
    assert_eq!(p.files_deny[1].line, 8);
}

#[test]
fn field_paths_from_indentation() {
    let text = "a: 1\nfiles:\n  deny:\n    - x\n    - y\nnetwork:\n  allow: []\n";
    assert_eq!(field_at(text, 5), "files.deny");
    assert_eq!(field_at(text, 7), "network.allow");
    assert_eq!(field_at(text, 1), "a");
}

/// Userspace adds nothing to the kernel's decision (and the daemon skips matching) only
/// where the default allows, every deny rule has a kernel form and no allow list exists.
#[test]
fn the_kernel_decides_alone_only_without_allow_lists_or_alert_only_rules() {
    let kd = |body: &str| {
        parse("t.yaml", &format!("{HEAD}{body}"))
            .unwrap()
            .kernel_decides
    };
    assert_eq!(
        kd("exec:\n  deny: [/usr/bin/nc]\nfiles:\n  deny: [~/.ssh/**, \"**/.env\"]\n"),
        [true, true]
    );
    assert_eq!(kd("files:\n  deny: [\"/**/*.pem\"]\n"), [true, false]);
    assert_eq!(kd("files:\n  read: [/srv/**]\n"), [true, false]);
    assert_eq!(
        kd("exec:\n  default: deny\n  allow: [/usr/bin/**]\n"),
        [false, true]
    );
    let shipped = crate::profiles::ProfileSet::embedded().unwrap();
    assert_eq!(
        shipped.get("claude-code").unwrap().kernel_decides,
        [true, true]
    );
}

/// `ask` holds what the refusal layer can mark: files and trees `deny` names, with a
/// wait of 1s..1h (default 2m) and `deny` when nobody answers unless `on_timeout` says.
#[test]
fn ask_holds_named_files_for_a_bounded_wait() {
    let p = parse(
        "t.yaml",
        &format!(
            "{HEAD}files:\n  deny: [/srv/a, \"/srv/tree/**\"]\n  on_violation: ask\n  timeout: 30s\n\
             exec:\n  deny: [/usr/bin/nc]\n  on_violation: ask\n  on_timeout: allow\n"
        ),
    )
    .unwrap();
    assert_eq!(
        p.ask,
        [
            Some(AskRule {
                timeout: ASK_TIMEOUT,
                on_timeout: OnTimeout::Allow
            }),
            Some(AskRule {
                timeout: std::time::Duration::from_secs(30),
                on_timeout: OnTimeout::Deny
            }),
            None,
            None,
        ]
    );
    let e = errors(
        "files:\n  default: deny\n  deny: [\"**/.env\"]\n  on_violation: ask\n  fallback: kill\n  timeout: 2h\n",
    );
    let fields: Vec<(&str, u64)> = e.iter().map(|d| (d.field.as_str(), d.line)).collect();
    assert_eq!(
        fields,
        [
            ("files.timeout", 12),
            ("files.default", 8),
            ("files.fallback", 11),
            ("files.deny[0]", 9),
        ],
        "{e:?}"
    );
    assert!(
        e[3].message.contains("names: a file, or a `/dir/**` tree"),
        "{}",
        e[3]
    );
    let e = errors("files:\n  deny: [/a]\n  timeout: 5m\n  on_timeout: allow\n");
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["files.timeout", "files.on_timeout"], "{e:?}");
    let e = errors("files:\n  deny: [/a]\n  on_violation: ask\n  timeout: soon\n");
    assert!(e[0].message.contains("not a duration"), "{}", e[0]);
    // Connections are held at the daemon's endpoint, whatever their destination; a
    // syscall cannot wait.
    let p = parse(
        "t.yaml",
        &format!("{HEAD}network:\n  default: deny\n  on_violation: ask\n  timeout: 1m\n"),
    )
    .unwrap();
    assert_eq!(
        p.ask[2].map(|a| a.timeout),
        Some(std::time::Duration::from_secs(60))
    );
    let e = errors(
        "network:\n  default: deny\n  on_violation: ask\n  fallback: kill\nsyscalls:\n  deny: [ptrace]\n  on_violation: ask\n",
    );
    let fields: Vec<(&str, u64)> = e.iter().map(|d| (d.field.as_str(), d.line)).collect();
    assert_eq!(
        fields,
        [("network.fallback", 10), ("syscalls.on_violation", 13)],
        "{e:?}"
    );
}

/// `network.redirect` names a destination and an endpoint by address and port.
#[test]
fn redirects_name_a_destination_and_an_address_to_send_it_to() {
    let p = parse(
        "t.yaml",
        &format!(
            "{HEAD}network:\n  redirect:\n    - {{ host: api.example.com, ports: \"443\", to: \"127.0.0.1:8443\" }}\n    - {{ cidr: \"::/0\", to: \"[::1]:3128\" }}\n"
        ),
    )
    .unwrap();
    assert_eq!(p.net_redirect.len(), 2);
    assert_eq!(p.net_redirect[1].value.1, "[::1]:3128".parse().unwrap());
    let e = errors(
        "network:\n  redirect:\n    - { cidr: 10.0.0.0/8, to: proxy.local:3128 }\n    - { cidr: 10.0.0.0/8, to: \"127.0.0.1:0\" }\n",
    );
    let fields: Vec<&str> = e.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["network.redirect[0].to", "network.redirect[1].to"],
        "{e:?}"
    );
}
