//! A storage failure of delta-rs in one line: object_store's S3 errors carry the whole XML
//! answer of the service (several lines, request ids); the code and message in it, and the
//! likely fix, are what an operator needs.

use deltalake::DeltaTableError;

/// `err` as one line: for an S3 error answer, `S3 answered <Code>: <Message>; fix: ...`.
pub fn one_line(err: &DeltaTableError) -> String {
    let text = err.to_string();
    let tag = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_owned())
    };
    if let Some(code) = tag("Code") {
        let message = tag("Message").unwrap_or_default();
        let fix = match code.as_str() {
            "NoSuchBucket" => "create the bucket, or correct the bucket in `table_root`",
            "AccessDenied" | "AllAccessDisabled" => {
                "grant the role or user s3:ListBucket on the bucket and s3:GetObject, s3:PutObject, s3:DeleteObject under the prefix (infra/aws/pinstream.yaml has the policy)"
            }
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken" => {
                "the credentials are not valid for this account: check AWS_PROFILE / the access keys, or renew the session"
            }
            "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
                "the bucket is in another region: set AWS_REGION to the bucket's region"
            }
            _ => "",
        };
        let fix = if fix.is_empty() {
            String::new()
        } else {
            format!("; fix: {fix}")
        };
        return format!("S3 answered {code}: {message}{fix}");
    }
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_answer_is_its_code_message_and_fix_in_one_line() {
        let err = DeltaTableError::Generic("Failed to read delta log object: Generic S3 error: Error performing list request: Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>X</RequestId></Error>".into());
        let line = one_line(&err);
        assert!(
            !line.contains('\n') && !line.contains("RequestId"),
            "{line}"
        );
        assert!(
            line.starts_with("S3 answered AccessDenied: Access Denied; fix: grant"),
            "{line}"
        );
        let plain = DeltaTableError::Generic("first\nsecond".into());
        assert_eq!(one_line(&plain), "Generic DeltaTable error: first");
    }
}
