//! DescribeUserScramCredentials and AlterUserScramCredentials: SCRAM credentials kept in the
//! cluster metadata, with Kafka's per-user errors. Kafka's clients send the salted password
//! (never the password); the broker stores only the keys SCRAM derives from it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use quorum::controller::ControllerRequest;
use sasl::{Credential, ITERATIONS_MAX, ITERATIONS_MIN, Mechanism};

use crate::state::BrokerState;

/// How long a committed change may take to reach this broker's metadata.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka's numbers for the SCRAM mechanisms (`ScramMechanism`).
fn mechanism(code: i8) -> Option<Mechanism> {
    match code {
        1 => Some(Mechanism::ScramSha256),
        2 => Some(Mechanism::ScramSha512),
        _ => None,
    }
}

fn code(m: Mechanism) -> i8 {
    match m {
        Mechanism::ScramSha256 => 1,
        Mechanism::ScramSha512 => 2,
    }
}

type Outcome = Result<(), (ResponseError, &'static str)>;

pub fn describe(
    s: &BrokerState,
    r: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let metadata = s.metadata();
    let users: Vec<String> = match r.users {
        Some(u) if !u.is_empty() => u.iter().map(|u| u.name.to_string()).collect(),
        _ => metadata.scram.keys().cloned().collect(),
    };
    let mut seen = BTreeSet::new();
    let twice: BTreeSet<&String> = users.iter().filter(|u| !seen.insert(*u)).collect();
    let mut results = Vec::new();
    for user in users.iter().collect::<BTreeSet<_>>() {
        let result = DescribeUserScramCredentialsResult::default().with_user(text(user));
        let result = match metadata.scram.get(user) {
            _ if twice.contains(user) => failed(
                result,
                ResponseError::DuplicateResource,
                "cannot describe a user credential more than once in the same request",
            ),
            None => failed(
                result,
                ResponseError::ResourceNotFound,
                "attempt to describe a user credential that does not exist",
            ),
            Some(credentials) => result.with_credential_infos(
                credentials
                    .values()
                    .map(|c| {
                        CredentialInfo::default()
                            .with_mechanism(code(c.mechanism))
                            .with_iterations(c.iterations as i32)
                    })
                    .collect(),
            ),
        };
        results.push(result);
    }
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

fn failed(
    r: DescribeUserScramCredentialsResult,
    e: ResponseError,
    message: &'static str,
) -> DescribeUserScramCredentialsResult {
    r.with_error_code(e.code())
        .with_error_message(Some(StrBytes::from_static_str(message)))
}

pub async fn alter(
    s: &BrokerState,
    r: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let metadata = s.metadata();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    // A user and mechanism named twice (by deletions or upsertions) is refused, as Kafka
    // does; a user may change both mechanisms in one request.
    let keys = r.deletions.iter().map(|d| (&d.name, d.mechanism));
    let keys = keys.chain(r.upsertions.iter().map(|u| (&u.name, u.mechanism)));
    let mut seen = BTreeSet::new();
    for (name, mechanism) in keys {
        if !seen.insert((name.to_string(), mechanism)) {
            let twice = "a user credential cannot be altered twice in the same request";
            outcomes.insert(
                name.to_string(),
                Err((ResponseError::DuplicateResource, twice)),
            );
        }
    }
    let mut deletions = Vec::new();
    for d in &r.deletions {
        let checked = check_name(&d.name).and_then(|()| {
            let m = mechanism(d.mechanism).ok_or(UNKNOWN_MECHANISM)?;
            let exists = metadata
                .scram
                .get(&*d.name)
                .is_some_and(|c| c.contains_key(&m));
            exists.then_some(m).ok_or((
                ResponseError::ResourceNotFound,
                "attempt to delete a user credential that does not exist",
            ))
        });
        decide(&mut outcomes, &d.name, checked, |m| {
            deletions.push((d.name.to_string(), m))
        });
    }
    let mut upserts = Vec::new();
    for u in &r.upsertions {
        let checked = check_name(&u.name).and_then(|()| {
            let m = mechanism(u.mechanism).ok_or(UNKNOWN_MECHANISM)?;
            let iterations = u32::try_from(u.iterations).unwrap_or(0);
            if iterations < ITERATIONS_MIN {
                return Err((ResponseError::UnacceptableCredential, "too few iterations"));
            }
            if iterations > ITERATIONS_MAX {
                return Err((ResponseError::UnacceptableCredential, "too many iterations"));
            }
            if u.salt.is_empty() || u.salted_password.is_empty() {
                let empty = "the salt and the salted password must not be empty";
                return Err((ResponseError::UnacceptableCredential, empty));
            }
            Ok(Credential::from_salted(
                m,
                &u.salted_password,
                &u.salt,
                iterations,
            ))
        });
        decide(&mut outcomes, &u.name, checked, |c| {
            upserts.push((u.name.to_string(), c))
        });
    }
    if !upserts.is_empty() || !deletions.is_empty() {
        let users: Vec<String> = upserts
            .iter()
            .map(|(u, _)| u)
            .chain(deletions.iter().map(|(u, _)| u))
            .cloned()
            .collect();
        let request = ControllerRequest::AlterScramCredentials { upserts, deletions };
        if let Err(e) = s.cluster.change(request, APPLY_TIMEOUT).await {
            tracing::warn!(error = %e, "SCRAM credentials not altered");
            for u in users {
                outcomes.insert(
                    u,
                    Err((
                        ResponseError::UnknownServerError,
                        "the controller could not commit the change",
                    )),
                );
            }
        }
    }
    let results = outcomes
        .into_iter()
        .map(|(user, outcome)| {
            let r = AlterUserScramCredentialsResult::default().with_user(text(&user));
            match outcome {
                Ok(()) => r,
                Err((e, m)) => r
                    .with_error_code(e.code())
                    .with_error_message(Some(StrBytes::from_static_str(m))),
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

const UNKNOWN_MECHANISM: (ResponseError, &str) = (
    ResponseError::UnsupportedSaslMechanism,
    "unknown SCRAM mechanism",
);

fn check_name(name: &str) -> Outcome {
    if name.is_empty() {
        return Err((
            ResponseError::UnacceptableCredential,
            "the user name must not be empty",
        ));
    }
    if name.len() > quorum::metadata::SCRAM_USER_BYTES_MAX {
        return Err((
            ResponseError::UnacceptableCredential,
            "the user name is too long",
        ));
    }
    Ok(())
}

/// Record a user's outcome; a user refused once (a duplicate too) changes nothing.
fn decide<T>(
    outcomes: &mut BTreeMap<String, Outcome>,
    user: &str,
    checked: Result<T, (ResponseError, &'static str)>,
    accept: impl FnOnce(T),
) {
    if outcomes.get(user).is_some_and(Result::is_err) {
        return;
    }
    match checked {
        Ok(v) => {
            accept(v);
            outcomes.insert(user.to_string(), Ok(()));
        }
        Err(e) => {
            outcomes.insert(user.to_string(), Err(e));
        }
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
