//! ACLs with real clients: an operator with a client certificate (a super user) creates
//! SCRAM users, topics and bindings with confluent-kafka's AdminClient; each branch may then
//! write and read its own topics (a prefixed pattern) and use its own groups, and nothing
//! else: other topics answer TOPIC_AUTHORIZATION_FAILED, other groups
//! GROUP_AUTHORIZATION_FAILED, cluster operations CLUSTER_AUTHORIZATION_FAILED, and
//! metadata hides what a branch may not describe. A deny binding wins over an allow, and a
//! deleted binding takes effect on the next request.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::Broker;
use e2e::clients::{kcat, python};
use e2e::hub::free_addr;
use tls::test_pki::{Issued, TestPki, Usage, Validity};

const T: Duration = Duration::from_secs(90);

struct AclBroker {
    broker: Broker,
    pki: TestPki,
    admin: Issued,
    /// mTLS: the operator's certificate makes it `User:admin`, a super user.
    secure: SocketAddr,
    /// SASL_PLAINTEXT: branches log in with SCRAM.
    apps: SocketAddr,
    /// The Schema Registry over HTTPS with client certificates.
    registry: SocketAddr,
    _dir: tempfile::TempDir,
}

fn acl_broker() -> AclBroker {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "hub");
    let server = pki.server("broker", &["127.0.0.1", "localhost"]);
    let admin = pki.client("admin", "admin", Validity::Current, Usage::ClientAuth);
    let (secure, apps, registry) = (free_addr(), free_addr(), free_addr());
    let extra = format!(
        "[[kafka.listeners]]\nname = \"admin\"\nlisten = \"{secure}\"\nsecurity = \"SSL\"\n\
         [[kafka.listeners]]\nname = \"apps\"\nlisten = \"{apps}\"\nsecurity = \"SASL_PLAINTEXT\"\n\
         [schema_registry]\nlisten = \"{registry}\"\nsecurity = \"SSL\"\n\
         [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"required\"\n\
         [authorization]\nenabled = true\nsuper_users = [\"User:admin\"]\n",
        server.certificate.display(),
        server.key.display(),
        pki.ca.display(),
    );
    AclBroker {
        broker: Broker::start_with(&extra),
        pki,
        admin,
        secure,
        apps,
        registry,
        _dir: dir,
    }
}

impl AclBroker {
    /// `script` as the operator (mTLS, super user).
    fn as_admin(&self, script: &str, args: &[&str]) -> serde_json::Value {
        let bootstrap = self.secure.to_string();
        let config = [
            "security.protocol=ssl".to_string(),
            format!("ssl.ca.location={}", self.pki.ca.display()),
            format!(
                "ssl.certificate.location={}",
                self.admin.certificate.display()
            ),
            format!("ssl.key.location={}", self.admin.key.display()),
        ];
        let flags: Vec<String> = config.iter().map(|c| format!("--config={c}")).collect();
        let mut all = vec!["--bootstrap", &bootstrap];
        all.extend(flags.iter().map(String::as_str));
        all.extend(args);
        python(script, &all, T)
    }

    /// `ck_acls.py` as a branch logged in with SCRAM.
    fn as_branch(&self, user: &str, args: &[&str]) -> serde_json::Value {
        let bootstrap = self.apps.to_string();
        let login = sasl(user);
        let mut all = vec!["--bootstrap", &bootstrap];
        all.extend(login.iter().map(String::as_str));
        all.extend(args);
        python("ck_acls.py", &all, T)
    }
}

impl AclBroker {
    /// `sr_grants.py` with `certificate` against the registry.
    fn registry_as(&self, certificate: &Issued, args: &[&str]) -> serde_json::Value {
        let url = format!("https://localhost:{}", self.registry.port());
        let path = |p: &std::path::Path| p.display().to_string();
        let (ca, cert, key) = (
            path(&self.pki.ca),
            path(&certificate.certificate),
            path(&certificate.key),
        );
        let mut all = vec![
            "--registry",
            &url,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ];
        all.extend(args);
        python("sr_grants.py", &all, T)
    }
}

/// The registry's subjects under the same bindings: a subject belongs to the topic it is
/// named after (`<topic>-value`), so the branch that may write `branch-017.*` may register
/// and read `branch-017.*-value` and nothing of another branch's, and lists only its own.
#[test]
fn each_branch_may_register_and_read_only_its_own_subjects() {
    let b = acl_broker();
    let setup = b.as_admin(
        "ck_acls.py",
        &["--allow=TOPIC:branch-017.:PREFIXED:User:branch-017:WRITE"],
    );
    assert_eq!(setup["created"], serde_json::json!([null]), "{setup}");
    let other = "branch-018.alarms-value";
    let by_admin = b.registry_as(&b.admin, &["--register", other]);
    assert_eq!(by_admin["registered"][other], "ok", "{by_admin}");

    let branch = b.pki.client(
        "branch-017",
        "branch-017",
        Validity::Current,
        Usage::ClientAuth,
    );
    let own = "branch-017.alarms-value";
    let r = b.registry_as(
        &branch,
        &[
            "--register",
            own,
            "--register",
            other,
            "--get",
            own,
            "--get",
            other,
        ],
    );
    let denied = serde_json::json!({"status": 403, "code": 40301});
    assert_eq!(r["registered"][own], "ok", "{r}");
    assert_eq!(r["registered"][other], denied, "{r}");
    assert_eq!(r["got"][own], 1, "{r}");
    assert_eq!(r["got"][other], denied, "{r}");
    assert_eq!(r["subjects"], serde_json::json!([own]), "{r}");
    // The operator sees both.
    let all = b.registry_as(&b.admin, &[]);
    assert_eq!(all["subjects"], serde_json::json!([own, other]), "{all}");
}

/// `tests/node/reassign_denied.js` as `user` (SCRAM over the apps listener).
fn reassign_as(b: &AclBroker, user: &str) -> serde_json::Value {
    let bootstrap = b.apps.to_string();
    let args = [
        "--bootstrap",
        &bootstrap,
        "--user",
        user,
        "--password",
        "pw",
        "--topic",
        "branch-017.alarms",
        "--replicas",
        "1",
    ];
    e2e::clients::node("reassign_denied.js", &args, T)
}

fn sasl(user: &str) -> Vec<String> {
    vec![
        "--config=security.protocol=sasl_plaintext".into(),
        "--config=sasl.mechanism=SCRAM-SHA-256".into(),
        format!("--config=sasl.username={user}"),
        "--config=sasl.password=pw".into(),
    ]
}

#[test]
fn each_branch_may_use_its_own_topics_and_groups_and_nothing_else() {
    let b = acl_broker();
    let users = b.as_admin(
        "ck_scram.py",
        &[
            "--upsert=branch-017:SCRAM-SHA-256:pw",
            "--upsert=branch-018:SCRAM-SHA-256:pw",
        ],
    );
    assert_eq!(
        users["altered"]["branch-017"],
        serde_json::Value::Null,
        "{users}"
    );
    let setup = b.as_admin(
        "ck_acls.py",
        &[
            "--allow=TOPIC:branch-017.:PREFIXED:User:branch-017:WRITE",
            "--allow=TOPIC:branch-017.:PREFIXED:User:branch-017:READ",
            "--allow=GROUP:branch-017.:PREFIXED:User:branch-017:READ",
            "--create-topic=branch-017.alarms",
            "--create-topic=branch-018.alarms",
            "--describe-acls",
        ],
    );
    assert_eq!(
        setup["created"],
        serde_json::json!([null, null, null]),
        "{setup}"
    );
    assert_eq!(
        setup["topics"]["branch-018.alarms"],
        serde_json::Value::Null,
        "{setup}"
    );
    assert_eq!(
        setup["described"].as_array().map(Vec::len),
        Some(3),
        "{setup}"
    );

    // Its own topic and group: written and read.
    let own = b.as_branch(
        "branch-017",
        &[
            "--produce=branch-017.alarms",
            "--consume=branch-017.alarms",
            "--group=branch-017.hmi",
        ],
    );
    assert_eq!(own["produced"], serde_json::Value::Null, "{own}");
    assert_eq!(own["consumed"], 5, "{own}");
    // Metadata's authorized operations follow the bindings (WRITE and READ imply DESCRIBE).
    let ops = b.as_branch("branch-017", &["--operations-on=branch-017.alarms"]);
    assert_eq!(
        ops["operations"],
        serde_json::json!(["DESCRIBE", "READ", "WRITE"]),
        "{ops}"
    );

    // Everything else: refused with Kafka's errors.
    let other = b.as_branch("branch-017", &["--produce=branch-018.alarms"]);
    assert_eq!(other["produced"], "TOPIC_AUTHORIZATION_FAILED", "{other}");
    let group = b.as_branch(
        "branch-017",
        &["--consume=branch-017.alarms", "--group=someone-elses"],
    );
    assert_eq!(group["consumed"], "GROUP_AUTHORIZATION_FAILED", "{group}");
    let cluster = b.as_branch(
        "branch-017",
        &[
            "--describe-acls",
            "--delete-acls-of=User:branch-017",
            "--create-topic=branch-017.new",
        ],
    );
    // librdkafka drops DescribeAcls's error and returns no bindings: none leak either way.
    assert_eq!(cluster["described"], serde_json::json!([]), "{cluster}");
    assert_eq!(
        cluster["deleted"], "CLUSTER_AUTHORIZATION_FAILED",
        "{cluster}"
    );
    assert_eq!(
        cluster["topics"]["branch-017.new"], "TOPIC_AUTHORIZATION_FAILED",
        "{cluster}"
    );
    // Moving partitions needs Alter on the cluster, listing moves Describe (kafkajs).
    let moves = reassign_as(&b, "branch-017");
    assert_eq!(
        moves,
        serde_json::json!({
            "altered": "CLUSTER_AUTHORIZATION_FAILED",
            "listed": "CLUSTER_AUTHORIZATION_FAILED"
        })
    );
    let stranger = b.as_branch("branch-018", &["--produce=branch-018.alarms"]);
    assert_eq!(
        stranger["produced"], "TOPIC_AUTHORIZATION_FAILED",
        "{stranger}"
    );

    // Metadata shows a branch only what it may describe; an anonymous client nothing.
    let apps = b.apps.to_string();
    let listed = kcat(
        &[
            "-b",
            &apps,
            "-X",
            "security.protocol=sasl_plaintext",
            "-X",
            "sasl.mechanism=SCRAM-SHA-256",
            "-X",
            "sasl.username=branch-017",
            "-X",
            "sasl.password=pw",
            "-L",
        ],
        None,
        T,
    );
    assert!(listed.contains("\"branch-017.alarms\""), "{listed}");
    assert!(!listed.contains("branch-018"), "{listed}");
    let anonymous = kcat(&["-b", &b.broker.bootstrap(), "-L"], None, T);
    assert!(anonymous.contains(" 0 topics:"), "{anonymous}");

    // A deny wins over the prefixed allow.
    let deny = b.as_admin(
        "ck_acls.py",
        &["--deny=TOPIC:branch-017.alarms:LITERAL:User:branch-017:WRITE"],
    );
    assert_eq!(deny["created"], serde_json::json!([null]), "{deny}");
    let denied = b.as_branch("branch-017", &["--produce=branch-017.alarms"]);
    assert_eq!(denied["produced"], "TOPIC_AUTHORIZATION_FAILED", "{denied}");

    // Deleted bindings: the branch may do nothing any more.
    let deleted = b.as_admin("ck_acls.py", &["--delete-acls-of=User:branch-017"]);
    assert_eq!(deleted["deleted"], 4, "{deleted}");
    let after = b.as_branch(
        "branch-017",
        &["--consume=branch-017.alarms", "--group=branch-017.hmi"],
    );
    assert_ne!(after["consumed"], 5, "{after}");
}
