//! Network rules decided by the cgroup layer on the kernel's copy of the address:
//! refusals, kills, monitor mode, and host-name rules that follow their DNS answers.

use crate::support::*;

/// Tries each network operation and prints `label=ok` or `label=errno`.
const NET_PROBE: &str = r#"
import socket, sys
ok, denied = int(sys.argv[1]), int(sys.argv[2])
def attempt(label, fam, kind, addr, udp=False):
    s = socket.socket(fam, kind)
    s.settimeout(5)
    try:
        if udp:
            s.sendto(b"x", addr)
        else:
            s.connect(addr)
        print(label + "=ok")
    except OSError as e:
        print(label + "=" + str(e.errno))
    finally:
        s.close()
attempt("v4_allowed", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", ok))
attempt("v4_denied", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", denied))
attempt("mapped_denied", socket.AF_INET6, socket.SOCK_STREAM, ("::ffff:127.0.0.1", denied))
attempt("mapped_allowed", socket.AF_INET6, socket.SOCK_STREAM, ("::ffff:127.0.0.1", ok))
attempt("udp_denied", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", denied), udp=True)
"#;

fn net_profile(name: &str, mode: &str, port: u16) -> String {
    format!(
        "name: {name}\ndescription: test\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
         network:\n  default: deny\n  allow:\n    - {{ cidr: 127.0.0.1, ports: \"{port}\" }}\n  \
         on_violation: block\n"
    )
}

/// Two loopback listeners, on a port the test profiles allow and on one they deny, and a
/// rules directory for the profiles.
struct NetFixture {
    _listeners: [TcpListener; 2],
    p_ok: u16,
    p_denied: u16,
    rules: TempDir,
}

impl NetFixture {
    fn new() -> Self {
        let l = || TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners = [l(), l()];
        let port = |i: usize| listeners[i].local_addr().unwrap().port();
        Self {
            p_ok: port(0),
            p_denied: port(1),
            _listeners: listeners,
            rules: tempfile::tempdir().unwrap(),
        }
    }

    fn profile(&self, name: &str, text: String) {
        fs::write(self.rules.path().join(format!("{name}.yaml")), text).unwrap();
    }

    fn daemon(&self) -> Option<Daemon> {
        let dir = self.rules.path().to_str().unwrap().to_owned();
        Daemon::start_with(&["--rules-dir", &dir])
    }
}

/// Network rules are decided in the kernel by the cgroup layer on the kernel's copy of
/// the address: EPERM before the connect or send, IPv4-mapped IPv6 judged as IPv4, UDP
/// caught like TCP; monitor mode records and lets through; outside sessions nothing.
#[test]
fn network_rules_block_in_the_kernel_and_monitor_only_records() {
    let f = NetFixture::new();
    let (p_ok, p_denied) = (f.p_ok, f.p_denied);
    f.profile("nettest", net_profile("nettest", "enforce", p_ok));
    f.profile("netmon", net_profile("netmon", "monitor", p_ok));
    let Some(d) = f.daemon() else { return };
    let cwd = std::env::temp_dir();
    let st: StatusReport = d.json(&["status", "--json"]);
    let cg = st
        .programs
        .iter()
        .find(|p| p.name == "connect4")
        .expect("connect4 row");
    if cg.state != "attached" {
        // No cgroup layer here: a blocking profile is refused, never silently downgraded.
        let out = d.run_profile("nettest", "net-refused", &cwd, &["true"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs the connect4 program"));
        println!(
            "cgroup layer absent ({:?}): blocking profile refused",
            cg.reason
        );
        return;
    }
    let (a, b) = (p_ok.to_string(), p_denied.to_string());
    let probe = |profile: &str, name: &str| {
        let out = d.run_profile(
            profile,
            name,
            &cwd,
            &["/usr/bin/python3", "-c", NET_PROBE, &a, &b],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let enforced = probe("nettest", "net-enforce");
    for line in [
        "v4_allowed=ok",
        "v4_denied=1",
        "mapped_denied=1",
        "mapped_allowed=ok",
        "udp_denied=1",
    ] {
        assert!(
            enforced.lines().any(|l| l == line),
            "want {line} (1 = EPERM) in:\n{enforced}"
        );
    }
    let monitored = probe("netmon", "net-monitor");
    for line in ["v4_denied=ok", "mapped_denied=ok", "udp_denied=ok"] {
        assert!(
            monitored.lines().any(|l| l == line),
            "monitor must not act: {line}\n{monitored}"
        );
    }
    // Outside every session the same destination is untouched.
    assert!(std::net::TcpStream::connect(("127.0.0.1", p_denied)).is_ok());

    let sid = d.session("net-enforce").id;
    let evs = d.wait_for(&sid, "decisions", |evs| {
        evs.iter().filter(|e| e.decision.is_some()).count() >= 5
    });
    let decided = |port: u16, op: &str| {
        evs.iter()
            .filter(|e| e.net().is_some_and(|n| n.port == port && n.op == op))
            .map(|e| (e.net().cloned().unwrap(), e.decision.clone().unwrap()))
            .collect::<Vec<_>>()
    };
    let blocked = decided(p_denied, "connect");
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    for (net, dec) in &blocked {
        assert_eq!(
            net.address, "127.0.0.1",
            "mapped address judged and shown as IPv4"
        );
        assert_eq!(
            (dec.decision.as_str(), dec.action.as_str()),
            ("deny", "blocked")
        );
        assert_eq!(
            (dec.enforced_by.as_str(), dec.rule.as_str()),
            ("cgroup", "network.default")
        );
    }
    let udp = decided(p_denied, "sendmsg");
    assert_eq!(udp.len(), 1, "{udp:?}");
    assert_eq!(udp[0].0.protocol, "udp");
    let allowed = decided(p_ok, "connect");
    assert!(!allowed.is_empty());
    assert_eq!(allowed[0].1.decision, Verdict::Allow);
    assert!(
        allowed[0]
            .1
            .rule
            .ends_with("nettest.yaml:8 (network.allow[0])"),
        "{:?}",
        allowed[0].1
    );

    let mid = d.session("net-monitor").id;
    let evs = d.wait_for(&mid, "monitor decisions", |evs| {
        with_action(evs, Action::Alerted).count() >= 3
    });
    let alerted = evs
        .iter()
        .filter_map(|e| e.decision.as_ref())
        .find(|x| x.action == Action::Alerted)
        .unwrap();
    assert_eq!(
        (alerted.decision.as_str(), alerted.enforced_by.as_str()),
        ("deny", "none")
    );
}

/// `on_violation: kill` on the network: the cgroup layer refuses the connect or send and
/// the process is killed before it returns to user mode, TCP and UDP alike.
#[test]
fn network_kill_refuses_and_kills_before_return() {
    let f = NetFixture::new();
    let (p_ok, p_denied) = (f.p_ok, f.p_denied);
    f.profile(
        "netkill",
        net_profile("netkill", "enforce", p_ok)
            .replace("on_violation: block", "on_violation: kill"),
    );
    let Some(d) = f.daemon() else { return };
    if !d.attached("connect4") {
        return skip("the cgroup layer is not attached on this host");
    }
    let cwd = std::env::temp_dir();
    let tcp = format!(
        "import socket\ns = socket.socket()\nprint('before', flush=True)\n\
         s.connect(('127.0.0.1', {p_denied}))\nprint('after', flush=True)\n"
    );
    let udp = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         print('before', flush=True)\ns.sendto(b'x', ('127.0.0.1', {p_denied}))\n\
         print('after', flush=True)\n"
    );
    for (name, code) in [("nk-tcp", &tcp), ("nk-udp", &udp)] {
        let out = d.run_profile("netkill", name, &cwd, &["/usr/bin/python3", "-c", code]);
        assert_eq!(out.status.signal(), Some(9), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n", "{name}");
        let sid = d.session(name).id;
        let evs = d.wait_for(&sid, "the kill", |evs| {
            evs.iter().any(|e| e.kind() == EventKind::SessionEnd)
        });
        let dec = evs
            .iter()
            .find(|e| e.net().is_some_and(|n| n.port == p_denied))
            .and_then(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("{name}: no decision:\n{}", dump(&evs)));
        assert_eq!(
            (
                dec.decision.as_str(),
                dec.action.as_str(),
                dec.enforced_by.as_str()
            ),
            ("deny", "killed", "cgroup")
        );
    }
    // The allowed destination still connects inside the same profile.
    let fine = format!("import socket\nsocket.create_connection(('127.0.0.1', {p_ok})).close()\n");
    let out = d.run_profile("netkill", "nk-ok", &cwd, &["/usr/bin/python3", "-c", &fine]);
    assert!(out.status.success(), "{out:?}");
}

/// `net.ipv4.ping_group_range` opened to every group while it lives, then restored.
struct PingGroups(String);

impl PingGroups {
    const PATH: &str = "/proc/sys/net/ipv4/ping_group_range";

    fn open_to_all() -> Self {
        let before = fs::read_to_string(Self::PATH).expect("ping_group_range");
        fs::write(Self::PATH, "0 2147483647").expect("opening ping sockets");
        Self(before)
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, self.0.trim().replace('\t', " "));
    }
}

/// Creates each socket no destination rule can judge and prints `label=ok` or
/// `label=errno`; a created one sends nothing (creation is what is decided).
const SOCKET_PROBE: &str = r#"
import socket
for label, fam, kind, proto in [
    ("raw_icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("raw_icmpv6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    ("raw_ip", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
    ("ping", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    ("tcp", socket.AF_INET, socket.SOCK_STREAM, 0),
]:
    try:
        socket.socket(fam, kind, proto).close()
        print(label + "=ok", flush=True)
    except OSError as e:
        print(label + "=" + str(e.errno), flush=True)
"#;

/// Raw and ICMP sockets carry traffic no destination rule can judge: where the network
/// default is deny they are refused at creation (`EPERM` from `socket(2)`, before a
/// packet can leave), `kill` ends the process before `socket(2)` returns, and monitor
/// mode records them. TCP sockets are judged later, by destination. Outside every
/// session (the test itself, root) raw sockets are untouched. ICMP "ping" sockets are
/// opened to every group for the test (`net.ipv4.ping_group_range`), as distributions
/// do for unprivileged ping, so that only agentwarden refuses them.
#[test]
fn raw_and_icmp_sockets_are_refused_at_creation() {
    let f = NetFixture::new();
    f.profile("rawdeny", net_profile("rawdeny", "enforce", f.p_ok));
    f.profile("rawmon", net_profile("rawmon", "monitor", f.p_ok));
    f.profile(
        "rawkill",
        net_profile("rawkill", "enforce", f.p_ok)
            .replace("on_violation: block", "on_violation: kill"),
    );
    let Some(d) = f.daemon() else { return };
    if !d.attached("sock_create") {
        return skip("cgroup sock_create is not attached on this host");
    }
    assert!(d.attached("sys_exit_socket"));
    let _ping = PingGroups::open_to_all();
    let cwd = std::env::temp_dir();
    let refused = ["raw_icmp", "raw_icmpv6", "raw_ip", "ping"];
    let run = |profile: &str| {
        let out = d.run_profile(
            profile,
            profile,
            &cwd,
            &["/usr/bin/python3", "-c", SOCKET_PROBE],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deny = run("rawdeny");
    for label in refused {
        assert!(
            deny.contains(&format!("{label}=1\n")),
            "{label} not refused with EPERM:\n{deny}"
        );
    }
    assert!(deny.contains("tcp=ok"), "{deny}");
    let mon = run("rawmon");
    for label in refused.iter().chain(&["tcp"]) {
        assert!(
            mon.contains(&format!("{label}=ok")),
            "monitor acts on nothing:\n{mon}"
        );
    }
    // Outside every session the same sockets are created (root may).
    let outside = Command::new("/usr/bin/python3")
        .args(["-c", SOCKET_PROBE])
        .output_within();
    let outside = String::from_utf8_lossy(&outside.stdout).into_owned();
    assert!(
        outside.contains("raw_icmp=ok") && outside.contains("ping=ok"),
        "{outside}"
    );
    // `kill`: the process dies before `socket(2)` returns; nothing after it runs.
    let out = d.run_profile(
        "rawkill",
        "rawkill",
        &cwd,
        &["/usr/bin/python3", "-c", "import socket\nprint('before', flush=True)\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\nprint('after', flush=True)\n"],
    );
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");

    // Each creation is an event naming the decision, the rule and the layer.
    let decisions = |session: &str, want: usize| {
        let sid = d.session(session).id;
        let evs = d.wait_for(&sid, "socket decisions", |evs| {
            evs.iter()
                .filter(|e| e.net().is_some_and(|n| n.op == "socket"))
                .count()
                >= want
        });
        evs.into_iter()
            .filter_map(|e| {
                let n = e.net()?.clone();
                (n.op == "socket").then(|| (n, e.decision.clone().expect("decision")))
            })
            .collect::<Vec<_>>()
    };
    let denied = decisions("rawdeny", refused.len());
    assert_eq!(denied.len(), refused.len(), "{denied:?}");
    for (n, dec) in &denied {
        // `run` dropped CAP_NET_RAW (the network default is deny): raw sockets are
        // refused by the kernel's own capability check before the cgroup hook would
        // run; ICMP ping sockets need no capability and are refused by the hook.
        let layer =
            if n.protocol == "icmp" && n.family == "inet" && dec.enforced_by == Layer::Cgroup {
                Layer::Cgroup
            } else {
                Layer::Capabilities
            };
        assert_eq!(
            (dec.decision, dec.action, dec.enforced_by, dec.rule.as_str()),
            (Verdict::Deny, Action::Blocked, layer, "network.default"),
            "{n:?}"
        );
        assert!(n.address.is_empty() && n.port == 0, "{n:?}");
    }
    let layers: BTreeSet<Layer> = denied.iter().map(|(_, d)| d.enforced_by).collect();
    assert_eq!(
        layers,
        BTreeSet::from([Layer::Cgroup, Layer::Capabilities]),
        "ping by the cgroup hook, raw sockets by the capability check: {denied:?}"
    );
    let kinds: BTreeSet<(String, String)> = denied
        .iter()
        .map(|(n, _)| (n.family.clone(), n.protocol.clone()))
        .collect();
    for want in [("inet", "icmp"), ("inet6", "icmpv6"), ("inet", "raw")] {
        assert!(
            kinds.contains(&(want.0.to_owned(), want.1.to_owned())),
            "no {want:?} in {kinds:?}"
        );
    }
    for (_, dec) in decisions("rawmon", refused.len()) {
        assert_eq!(
            (dec.action, dec.enforced_by),
            (Action::Alerted, Layer::None)
        );
    }
    let killed = decisions("rawkill", 1);
    assert_eq!(
        (killed[0].1.action, killed[0].1.enforced_by),
        (Action::Killed, Layer::Capabilities)
    );
}

/// A DNS responder on loopback for one name: A queries get the current address with a
/// short TTL, everything else an empty answer. The daemon is pointed at it with
/// `--dns-server`.
struct DnsResponder {
    addr: std::net::SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl DnsResponder {
    fn start(first: std::net::Ipv4Addr, ttl: u32) -> Self {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = std::sync::Arc::new(std::sync::Mutex::new(first));
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                if let Some(reply) = dns_reply(&buf[..n], *a.lock().unwrap(), ttl) {
                    q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        Self {
            addr,
            answer,
            queries,
        }
    }
}

/// The reply to one query: the question echoed, one A record for A queries.
fn dns_reply(q: &[u8], ip: std::net::Ipv4Addr, ttl: u32) -> Option<Vec<u8>> {
    // Header (12 bytes), then the question: labels up to a zero byte, type, class.
    let mut end = 12;
    while *q.get(end)? != 0 {
        end += 1 + usize::from(q[end]);
    }
    let qtype = u16::from_be_bytes([*q.get(end + 1)?, *q.get(end + 2)?]);
    let question = &q[12..end + 5];
    let is_a = qtype == 1;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[..2]); // id
    r.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
    r.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if is_a {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // name pointer, type A, class IN
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// A network rule naming a host follows the host's address: the daemon resolves it and
/// asks again when the answer's TTL runs out, so when the service moves, the allowed
/// address moves with it and the old one is denied.
#[test]
fn host_name_rules_follow_the_answer_when_its_ttl_expires() {
    use std::net::Ipv4Addr;
    let (first, second) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let dns = DnsResponder::start(first, 2);
    let l1 = TcpListener::bind((first, 0)).unwrap();
    let l2 = TcpListener::bind((second, 0)).unwrap();
    let (p1, p2) = (
        l1.local_addr().unwrap().port(),
        l2.local_addr().unwrap().port(),
    );
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("svc.yaml"),
        "name: svc\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         network:\n  default: deny\n  allow:\n    - { host: svc.agentwarden.test, ports: \"1-65535\" }\n  \
         on_violation: block\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let server = dns.addr.to_string();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd, "--dns-server", &server]) else {
        return;
    };
    if !d.attached("connect4") {
        return skip("the cgroup layer is not attached on this host");
    }
    let probe = format!(
        "import socket\nfor label, addr in (('first', ('{first}', {p1})), ('second', ('{second}', {p2}))):\n    \
         s = socket.socket()\n    s.settimeout(5)\n    try:\n        s.connect(addr)\n        print(label + '=ok')\n    \
         except OSError as e:\n        print(label + '=' + str(e.errno))\n    s.close()\n"
    );
    let cwd = std::env::temp_dir();
    let attempt = |name: &str| {
        let out = d.run_profile("svc", name, &cwd, &["/usr/bin/python3", "-c", &probe]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The first answer takes effect once resolved.
    let start = Instant::now();
    loop {
        let got = attempt(&format!("svc-a{}", start.elapsed().as_millis()));
        if got == "first=ok\nsecond=1\n" {
            break;
        }
        assert!(
            start.elapsed() < patience(),
            "first answer never took effect: {got}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // The service moves; within a few TTLs the rule follows (the old fixed 60 s period
    // could not).
    *dns.answer.lock().unwrap() = second;
    let moved = Instant::now();
    loop {
        let got = attempt(&format!("svc-b{}", moved.elapsed().as_millis()));
        if got == "first=1\nsecond=ok\n" {
            break;
        }
        assert!(
            moved.elapsed() < scaled(Duration::from_secs(20)),
            "the rule did not follow the new answer: {got}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let queries = dns.queries.load(std::sync::atomic::Ordering::Relaxed);
    assert!(queries >= 2, "asked again after the TTL: {queries} queries");
    println!(
        "host rule followed the service from {first} to {second} in {:.1} s (TTL 2 s)",
        moved.elapsed().as_secs_f64()
    );
}

/// `nameservers: system` allows DNS (port 53, UDP and TCP) to exactly the name servers
/// the resolver configuration names, and follows the file when it changes (DHCP, a VPN):
/// the server it no longer names is refused, the new one allowed.
#[test]
fn the_system_name_servers_are_allowed_and_followed_when_the_configuration_changes() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    let write_resolv = |ns: &str| {
        let tmp = dir.path().join("resolv.conf.new");
        fs::write(&tmp, format!("# test\nnameserver {ns}\noptions edns0\n")).unwrap();
        fs::rename(&tmp, &resolv).unwrap();
    };
    write_resolv("127.0.0.77");
    let rules = tempfile::tempdir().unwrap();
    fs::write(
        rules.path().join("ns.yaml"),
        "name: ns\ndescription: t\nowners: { business: b, technical: t }\nmode: enforce\n\
         network:\n  default: deny\n  allow:\n    - { nameservers: system }\n  \
         on_violation: block\n",
    )
    .unwrap();
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&[
        "--rules-dir",
        &rd,
        "--resolv-conf",
        resolv.to_str().unwrap(),
    ]) else {
        return;
    };
    if !d.attached("connect4") {
        return skip("the cgroup layer is not attached on this host");
    }
    // No server listens: an allowed TCP connect is refused by the stack (111), a denied
    // one by the rule (1); an allowed UDP send goes out.
    let probe = "import socket\n\
        def udp(label, addr):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
        try:\n        s.sendto(b'q', addr)\n        print(label + '=ok')\n    \
        except OSError as e:\n        print(label + '=' + str(e.errno))\n\
        def tcp(label, addr):\n    s = socket.socket()\n    s.settimeout(5)\n    \
        try:\n        s.connect(addr)\n        print(label + '=ok')\n    \
        except OSError as e:\n        print(label + '=' + str(e.errno))\n\
        udp('a53', ('127.0.0.77', 53))\ntcp('a53tcp', ('127.0.0.77', 53))\n\
        udp('a54', ('127.0.0.77', 54))\nudp('b53', ('127.0.0.78', 53))\n";
    let cwd = std::env::temp_dir();
    let attempt = |name: &str| {
        let out = d.run_profile("ns", name, &cwd, &["/usr/bin/python3", "-c", probe]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (A DNS server of the host's own listening on 0.0.0.0:53 accepts the connect.)
    let first = attempt("ns-first");
    assert!(
        [
            "a53=ok\na53tcp=111\na54=1\nb53=1\n",
            "a53=ok\na53tcp=ok\na54=1\nb53=1\n"
        ]
        .contains(&first.as_str()),
        "port 53 of the named server only: {first}"
    );
    let sid = d.session("ns-first").id;
    // Decisions recorded: the allowed connect and the refused sends (an allowed UDP
    // send is not recorded).
    let evs = d.wait_for(&sid, "the allowed connect and the refused sends", |evs| {
        evs.iter().filter(|e| e.net().is_some()).count() >= 3
    });
    let rule_of = |port: u16, addr: &str| {
        evs.iter()
            .filter(|e| e.net().is_some_and(|n| n.port == port && n.address == addr))
            .find_map(|e| e.decision.clone())
            .unwrap_or_else(|| panic!("no decision on {addr}:{port}:\n{}", dump(&evs)))
    };
    let allowed = rule_of(53, "127.0.0.77");
    assert_eq!(allowed.action, Action::Allowed, "{allowed:?}");
    assert!(
        allowed.rule.ends_with("ns.yaml:8 (network.allow[0])"),
        "{allowed:?}"
    );
    let refused = rule_of(54, "127.0.0.77");
    assert_eq!(
        (refused.action, refused.rule.as_str()),
        (Action::Blocked, "network.default")
    );
    // The configuration changes: the rule follows it within a few refresh rounds.
    write_resolv("127.0.0.78");
    let moved = Instant::now();
    loop {
        let got = attempt(&format!("ns-b{}", moved.elapsed().as_millis()));
        if got == "a53=1\na53tcp=1\na54=1\nb53=ok\n" {
            break;
        }
        assert!(
            moved.elapsed() < scaled(Duration::from_secs(30)),
            "the rule did not follow the new name server: {got}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// A client that connects to where its profile redirects, says hello, prints the
/// endpoint's answer, then tries a port of the same host outside the redirect.
const REDIRECTED_CLIENT: &str = r#"
import socket, sys
port, other = int(sys.argv[1]), int(sys.argv[2])
try:
    s = socket.create_connection(("127.0.0.2", port), timeout=10)
    s.sendall(b"hello")
    print("answer=" + s.recv(200).decode())
    s.close()
except OSError as e:
    print("redirected=" + str(e.errno))
try:
    socket.create_connection(("127.0.0.2", other), timeout=5)
    print("other=ok")
except OSError as e:
    print("other=" + str(e.errno))
"#;

/// `network.redirect` sends a session's connection meant for another destination to the
/// rule's endpoint (here a listener of the test), however the agent addressed it: the
/// kernel rewrote the address before the connect. The endpoint learns the original
/// destination from the daemon (`original-destination --peer`), the decision is recorded
/// `modified` with the rule, and a port outside the redirect meets the profile's deny. A
/// connect submitted through io_uring is redirected alike.
/// In monitor mode the connection goes where it was addressed (nothing listens there)
/// and the record says `would_redirect`.
#[test]
fn redirect_sends_a_connection_to_its_endpoint_which_learns_the_original_destination() {
    let endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = endpoint.local_addr().unwrap();
    let endpoint_again = endpoint.try_clone().unwrap();
    let rules = tempfile::tempdir().unwrap();
    for (name, mode) in [("redir", "enforce"), ("redir-watch", "monitor")] {
        fs::write(
            rules.path().join(format!("{name}.yaml")),
            format!(
                "name: {name}\ndescription: t\nowners: {{ business: b, technical: t }}\nmode: {mode}\n\
                 network:\n  default: deny\n  allow: [{{ cidr: 127.0.0.1 }}]\n  \
                 redirect:\n    - {{ cidr: 127.0.0.2, ports: \"9100-9199\", to: \"{to}\" }}\n"
            ),
        )
        .unwrap();
    }
    let rd = rules.path().to_str().unwrap().to_owned();
    let Some(d) = Daemon::start_with(&["--rules-dir", &rd]) else {
        return;
    };
    let (bin, sock) = (bin().to_owned(), d.socket());
    let server = thread::spawn(move || {
        use std::io::Write as _;
        let (mut c, peer) = endpoint.accept().unwrap();
        let mut hello = [0u8; 5];
        c.read_exact(&mut hello).unwrap();
        let out = Command::new(&bin)
            .arg("--socket")
            .arg(&sock)
            .args([
                "original-destination",
                "--json",
                "--peer",
                &peer.to_string(),
            ])
            .args(["--local", &to.to_string()])
            .output()
            .unwrap();
        let answer = if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            format!(
                "{} {}",
                v["address"].as_str().unwrap(),
                v["rule"].as_str().unwrap()
            )
        } else {
            format!("error {}", String::from_utf8_lossy(&out.stderr))
        };
        c.write_all(answer.as_bytes()).unwrap();
        hello
    });
    let work = tempfile::tempdir().unwrap();
    let out = d.run_profile(
        "redir",
        "redirected",
        work.path(),
        &["python3", "-c", REDIRECTED_CLIENT, "9123", "8123"],
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(&server.join().unwrap(), b"hello");
    let first = said.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("answer=127.0.0.2:9123 ") && first.contains("network.redirect[0]"),
        "{said}\n{out:?}"
    );
    assert!(
        said.contains("other=1\n"),
        "EPERM outside the redirect: {said}"
    );
    let sid = d.session("redirected").id;
    let evs = d.wait_for(&sid, "the redirect and the refusal", |evs| {
        with_action(evs, Action::Modified).next().is_some()
            && with_action(evs, Action::Blocked).next().is_some()
    });
    let m = with_action(&evs, Action::Modified).next().unwrap();
    let n = m.net().unwrap();
    assert_eq!(
        (n.address.as_str(), n.port),
        ("127.0.0.2", 9123),
        "{}",
        dump(&evs)
    );
    let dec = m.decision.as_ref().unwrap();
    assert_eq!(dec.enforced_by, Layer::Cgroup);
    assert!(dec.rule.contains("network.redirect[0]"), "{dec:?}");
    let rows = d.audit_session(&sid);
    assert!(
        rows.iter().any(|r| r["kind"] == "net_decision"
            && r["decision"]["action"] == "modified"
            && r["net"]["address"] == "127.0.0.2"),
        "{rows:?}"
    );

    // Another route: a connect submitted through io_uring meets the same hook.
    endpoint_again.set_nonblocking(true).unwrap();
    let out = d.run_profile(
        "redir",
        "redirected-uring",
        work.path(),
        &[probe(), "uring-connect", "127.0.0.2", "9124"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");
    assert!(
        endpoint_again.accept().is_ok(),
        "the io_uring connect did not reach the endpoint"
    );
    let sid = d.session("redirected-uring").id;
    d.wait_for(&sid, "the io_uring redirect", |evs| {
        with_action(evs, Action::Modified).next().is_some()
    });

    // Monitor mode: recorded, not redirected.
    let out = d.run_profile(
        "redir-watch",
        "watched",
        work.path(),
        &["python3", "-c", REDIRECTED_CLIENT, "9123", "8123"],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("redirected=111\n"), "ECONNREFUSED: {said}");
    let sid = d.session("watched").id;
    let evs = d.wait_for(&sid, "the would-be redirect", |evs| {
        with_action(evs, Action::WouldRedirect).next().is_some()
    });
    assert!(
        with_action(&evs, Action::Modified).next().is_none(),
        "{}",
        dump(&evs)
    );
}
