//! A new user's first mistakes end in a few lines naming the cause and the fix, with no
//! SDK Debug dumps and no colours when piped. No AWS credentials, under each behaviour of
//! the instance metadata service a machine may show (refusing with 403 as on a locked-down
//! host, answering 404 as on EC2 without a role, never answering as on a laptop), served
//! by local servers through `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use crate::support;

/// How the fake metadata service answers.
#[derive(Clone, Copy, Debug)]
enum Imds {
    Forbidden,
    NoRole,
    Silent,
}

/// Serves `how` on a free loopback port (a thread per connection) and returns its URL.
fn metadata_service(how: Imds) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let answer = match how {
                        Imds::Silent => continue,
                        Imds::Forbidden => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        Imds::NoRole if request.starts_with("PUT") => "HTTP/1.1 200 OK\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 5\r\n\r\ntoken".to_owned(),
                        Imds::NoRole => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                    };
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn no_credentials_ends_in_one_line_naming_the_fix_whatever_the_metadata_service_does() {
    let home = support::tempdir();
    for how in [Imds::Forbidden, Imds::NoRole, Imds::Silent] {
        let out = support::pinstream()
            .args(["status", "--lease-table", "no-credentials-test"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", metadata_service(how))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {stderr}");
        assert!(
            stderr.contains("no AWS credentials found") && stderr.contains("fix:"),
            "{how:?}: the cause and the fix are named: {stderr}"
        );
        assert!(
            stderr.lines().count() <= 3 && stderr.len() < 600,
            "{how:?}: a few lines at most: {stderr}"
        );
        for dump in ["SdkBody", "ServiceError {", "\u{1b}["] {
            assert!(!stderr.contains(dump), "{how:?}: no `{dump}` in: {stderr}");
        }
    }
}

/// `pinstream` with the local stack's credentials and `args`, `env` added; returns the exit
/// code and stderr.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = support::pinstream()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The last line says what failed and what to do; nothing is dumped.
fn assert_named(what: &str, (code, stderr): (Option<i32>, String), needle: &str) {
    assert!(
        matches!(code, Some(c) if c != 0),
        "{what}: exit non-zero: {code:?} {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "{what}: ends in one error line: {stderr}"
    );
    assert!(last.contains(needle), "{what}: `{needle}` in: {last}");
    assert!(
        last.contains("fix") || last.contains("check") || last.contains("start the local stack"),
        "{what}: the line names the fix: {last}"
    );
    for dump in ["SdkBody", "ServiceError {", "\u{1b}["] {
        assert!(!stderr.contains(dump), "{what}: no `{dump}` in: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_first_mistake_ends_in_one_line_naming_the_cause_and_the_fix() {
    let aws = support::aws().await;
    let dir = support::tempdir();
    let tables = dir.path().join("tables");
    let root = tables.to_string_lossy().into_owned();
    assert_named(
        "an endpoint where nothing listens",
        run_with(
            &["status"],
            &[("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")],
        ),
        "cannot reach the DynamoDB endpoint",
    );
    let out = support::pinstream()
        .arg("status")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_named(
        "no region",
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        "no AWS region set",
    );
    // A DynamoDB table of that name that is not a lease table.
    let foreign = support::unique("foreign");
    aws.dynamodb
        .create_table()
        .table_name(&foreign)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_named(
        "a lease table that is not one",
        run_with(
            &[
                "run",
                "--available-now",
                "--lease-table",
                &foreign,
                "--table-root",
                &root,
            ],
            &[],
        ),
        "not a pinstream lease table",
    );
    let app = support::unique("nostream");
    assert_named(
        "a stream that does not exist",
        run_with(
            &[
                "run",
                "--available-now",
                "--app",
                &app,
                "--stream",
                &format!("pin={app}-none"),
                "--table-root",
                &root,
            ],
            &[],
        ),
        "check the stream names",
    );
    // Tables in a bucket that does not exist (moto S3): the service's code and message, in
    // one line (not its XML answer), and the fix. (AccessDenied and the other codes are
    // mapped by the same code: `delta::storage_error` unit tests.)
    let bucket = support::unique("no-bucket").to_lowercase();
    assert_named(
        "a bucket that does not exist",
        run_with(
            &[
                "run",
                "--available-now",
                "--app",
                &support::unique("s3"),
                "--table-root",
                &format!("s3://{bucket}/tables"),
            ],
            &[],
        ),
        "S3 answered NoSuchBucket",
    );
    // A file where the table root's directory would be.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("tables").to_string_lossy().into_owned();
    assert_named(
        "a table root that cannot be written",
        run_with(
            &[
                "run",
                "--available-now",
                "--app",
                &support::unique("ro"),
                "--table-root",
                &under_file,
            ],
            &[],
        ),
        "cannot use location",
    );
}

/// Tables on S3 whose credentials may not touch the bucket: a moto server of this test's own
/// that enforces IAM (after its first three calls: a user without any policy, its access
/// key, the bucket), and the worker run with that user's keys. One line with S3's code,
/// message and the permissions to grant.
#[test]
fn s3_access_denied_names_the_permissions_to_grant() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/local/.venv/bin/moto_server");
    let dir = support::tempdir();
    let _server = support::KillOnDrop::new(
        std::process::Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let setup = r#"
import sys, time, boto3
ep = sys.argv[1]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
for _ in range(100):
    try:
        iam = boto3.client("iam", **kw); iam.create_user(UserName="nobody"); break
    except Exception:
        time.sleep(0.1)
key = iam.create_access_key(UserName="nobody")["AccessKey"]
boto3.client("s3", **kw).create_bucket(Bucket="locked")
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;
    let keys = support::run_python(&["-c", setup, &endpoint]);
    let (id, secret) = keys.split_once(' ').unwrap();
    let (code, stderr) = run_with(
        &[
            "run",
            "--available-now",
            "--app",
            &support::unique("denied"),
            "--table-root",
            "s3://locked/tables",
        ],
        &[
            ("AWS_ENDPOINT_URL_S3", &endpoint),
            ("AWS_ACCESS_KEY_ID", id),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    assert_named(
        "S3 access denied",
        (code, stderr.clone()),
        "S3 answered AccessDenied",
    );
    assert!(
        stderr.contains("s3:PutObject"),
        "the permissions are named: {stderr}"
    );
}
