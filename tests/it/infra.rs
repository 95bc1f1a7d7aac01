//! The AWS stack as code: the CloudFormation template passes cfn-lint (pinned in
//! infra/local/requirements.lock), and the worker's and producer's IAM policies name only
//! the actions and resources they use.

use std::path::Path;
use std::process::Command;

use crate::support;

fn template() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/aws/pinstream.yaml")
}

#[test]
fn the_template_passes_cfn_lint() {
    let lint = support::python().with_file_name("cfn-lint");
    assert!(
        lint.is_file(),
        "{} missing: the test command installs it (infra/local/start.sh)",
        lint.display()
    );
    let out = Command::new(lint).arg(template()).output().unwrap();
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The text of resource `name` in the template: from its key to the next resource key or
/// resource-level comment.
fn resource<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("\n  {name}:\n"))
        .unwrap_or_else(|| panic!("{name} in the template"))
        + 1;
    let rest = &text[start..];
    let end = rest
        .match_indices("\n  ")
        .map(|(i, _)| i)
        .find(|&i| rest[i + 3..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '#'))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn iam_policies_have_no_wildcard_actions_or_resources() {
    let text = std::fs::read_to_string(template()).unwrap();
    for role in ["WorkerRole", "ProducerRole"] {
        let policy = resource(&text, role);
        assert!(policy.contains("PolicyDocument"), "{role} has a policy");
        for bad in [
            "Action: \"*\"",
            "Action: '*'",
            ":*",
            "Resource: \"*\"",
            "Resource: '*'",
        ] {
            assert!(
                !policy.contains(bad),
                "{role} policy contains the wildcard {bad:?}:\n{policy}"
            );
        }
    }
    let producer = resource(&text, "ProducerRole");
    assert!(
        producer.contains("Action: kinesis:PutRecords") && !producer.contains("GetRecords"),
        "the producer may only put records"
    );
    let worker = resource(&text, "WorkerRole");
    assert!(
        !worker.contains("PutRecords")
            && !worker.contains("CreateTable")
            && !worker.contains("DeleteTable")
    );
}
