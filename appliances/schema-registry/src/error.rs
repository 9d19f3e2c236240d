//! The registry's errors, each with Confluent's HTTP status and error code: clients branch on
//! the code (confluent-kafka raises `SchemaRegistryError` with it), so they must be exact.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: i32 },
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: i32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectCompatibility(String),
    #[error("Subject '{0}' does not have subject-level mode configured")]
    NoSubjectMode(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{details}]"
    )]
    Incompatible { subject: String, details: String },
    #[error("{0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibility,
    #[error("Invalid mode. Valid values are READWRITE, READONLY, IMPORT")]
    InvalidMode,
    #[error("{0}")]
    OperationNotPermitted(String),
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    ReferenceExists { subject: String, version: i32 },
    #[error("Unsupported schema type {0}: this registry holds Avro schemas")]
    UnsupportedSchemaType(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("HTTP 404 Not Found")]
    NoSuchRoute,
    #[error("Error while storing the schema: {0}")]
    Store(String),
    #[error("Error while forwarding the request to the registry's leader: {0}")]
    Forwarding(String),
}

impl RegistryError {
    /// Confluent's (HTTP status, error code).
    pub fn codes(&self) -> (u16, u32) {
        use RegistryError::*;
        match self {
            SubjectNotFound(_) => (404, 40401),
            VersionNotFound(_) => (404, 40402),
            SchemaNotFound(_) => (404, 40403),
            SubjectSoftDeleted(_) => (404, 40404),
            SubjectNotSoftDeleted(_) => (404, 40405),
            VersionSoftDeleted { .. } => (404, 40406),
            VersionNotSoftDeleted { .. } => (404, 40407),
            NoSubjectCompatibility(_) => (404, 40408),
            NoSubjectMode(_) => (404, 40409),
            Incompatible { .. } => (409, 409),
            InvalidSchema(_) | UnsupportedSchemaType(_) => (422, 42201),
            InvalidVersion(_) => (422, 42202),
            InvalidCompatibility => (422, 42203),
            InvalidMode => (422, 42204),
            OperationNotPermitted(_) => (422, 42205),
            ReferenceExists { .. } => (422, 42206),
            BadRequest(_) => (400, 400),
            NoSuchRoute => (404, 404),
            Store(_) => (500, 50001),
            Forwarding(_) => (500, 50003),
        }
    }

    /// The body Confluent answers with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_code: self.codes().1,
            message: self.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error_code: u32,
    pub message: String,
}
