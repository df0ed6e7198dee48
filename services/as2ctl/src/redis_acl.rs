//! `as2ctl redis acl`: the per-service Redis users, from the table in
//! `as2_common::redis::acl`.

use as2_common::redis::KeyNamespace;
use as2_common::redis::acl::{SERVICE_USERS, ServiceUser};

use crate::cli::RedisAclArgs;
use crate::commands::CtlError;

/// The `ACL SETUSER` lines, one per service (or the one asked for).
pub fn execute(args: &RedisAclArgs) -> Result<String, CtlError> {
    let namespace =
        KeyNamespace::new(&args.key_prefix).map_err(|error| CtlError::Usage(error.to_string()))?;
    let users: Vec<&ServiceUser> = SERVICE_USERS
        .iter()
        .filter(|user| {
            args.service
                .as_deref()
                .is_none_or(|only| only == user.service)
        })
        .collect();
    let mut output = String::new();
    for user in users {
        let password = if args.passwords_from_env {
            let variable = password_variable(user.service);
            std::env::var(&variable).map_err(|_| {
                CtlError::Usage(format!("--passwords-from-env: {variable} is not set"))
            })?
        } else {
            format!("<password of {}>", user.name(&namespace)).replace(' ', "-")
        };
        output.push_str("ACL SETUSER ");
        output.push_str(&user.setuser_arguments(&namespace, &password).join(" "));
        output.push('\n');
    }
    Ok(output)
}

/// `AS2_REDIS_PASSWORD_{SERVICE}`.
fn password_variable(service: &str) -> String {
    format!("AS2_REDIS_PASSWORD_{}", service.to_ascii_uppercase())
}
