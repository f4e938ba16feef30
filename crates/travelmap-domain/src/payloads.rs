//! The `data` of every event type, as typed structs. Serde parses a submitted `data` object
//! straight into these types, and schemars derives the published JSON Schema from the same
//! definitions, so the catalogue and the validator cannot drift apart.
//!
//! Every struct rejects unknown fields: a misspelt optional field would otherwise vanish
//! silently, and in a shared record a silently dropped fact is worse than a rejected request.
//! Fields holding personal data are grouped or named so the catalogue can list them (see
//! [`crate::catalogue::EventTypeInfo::personal_fields`]); they are the ones to be encrypted.

use chrono::{DateTime, FixedOffset, NaiveDate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{EventId, Text, ValidationError};

/// Checks that go beyond the shape of the data (for example, that one date follows another).
/// Most types have none; the default accepts.
pub trait Rules {
    fn check(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

macro_rules! no_extra_rules {
    ($($payload:ty),* $(,)?) => { $(impl Rules for $payload {})* };
}

// ----- shared vocabularies -------------------------------------------------------------------

/// An agency's own identifier for the client, such as a prison number or a probation case number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identifier {
    /// The kind of identifier, in snake_case, e.g. `prison_number`, `probation_case`.
    #[serde(rename = "type")]
    pub kind: IdentifierKind,
    /// The identifier itself, exactly as the agency writes it.
    pub value: Text,
}

/// A snake_case identifier kind (`prison_number`, `probation_case`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentifierKind(String);

impl JsonSchema for IdentifierKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdentifierKind".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"})
    }
}

impl IdentifierKind {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentifierKind {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let valid = value.len() <= 64
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(value))
        } else {
            Err("must be snake_case: a lowercase letter, then lowercase letters, digits or `_` (at most 64)".to_owned())
        }
    }
}

impl From<IdentifierKind> for String {
    fn from(kind: IdentifierKind) -> Self {
        kind.0
    }
}

/// Personal details of the client. Kept in one object so that they can be encrypted and erased
/// as a unit without touching the journey facts around them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PersonalDetails {
    /// Given name(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<Text>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<Text>,
    /// Date of birth (YYYY-MM-DD); not after the day the event occurred.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::dates::option"
    )]
    pub birth_date: Option<NaiveDate>,
}

/// The role a worker plays for the client.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    CaseManager,
    ProbationOfficer,
    Mentor,
    EmploymentAdvisor,
    SocialWorker,
    HousingWorker,
    HealthWorker,
    DebtCounsellor,
    Other,
}

/// A needs area worked on in an individual plan.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NeedArea {
    Housing,
    Employment,
    Family,
    Finance,
    Health,
    Addiction,
    Attitudes,
    Leisure,
}

/// Where work on a needs area stands (the statuses of the resettlement pathways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NeedStatus {
    NotStarted,
    InProgress,
    SupportRequired,
    SupportDeclined,
    SupportNotRequired,
    Done,
}

/// A purpose for which personal data may be processed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    CaseManagement,
    Supervision,
    ServiceDelivery,
    Audit,
    Statistics,
    SubjectAccess,
    Emergency,
}

impl Purpose {
    /// Every purpose, in the order they are listed.
    pub const ALL: [Purpose; 7] = [
        Purpose::CaseManagement,
        Purpose::Supervision,
        Purpose::ServiceDelivery,
        Purpose::Audit,
        Purpose::Statistics,
        Purpose::SubjectAccess,
        Purpose::Emergency,
    ];

    /// The name on the wire (`X-Purpose`, consents, webhooks).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::CaseManagement => "case_management",
            Purpose::Supervision => "supervision",
            Purpose::ServiceDelivery => "service_delivery",
            Purpose::Audit => "audit",
            Purpose::Statistics => "statistics",
            Purpose::SubjectAccess => "subject_access",
            Purpose::Emergency => "emergency",
        }
    }
}

/// The legal basis on which an agency processes the client's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegalBasis {
    Consent,
    LegalObligation,
    PublicTask,
    VitalInterests,
    CourtOrder,
    Contract,
}

// ----- identity ------------------------------------------------------------------------------

/// `client.registered`: the client becomes known to the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientRegistered {
    /// The agencies' own identifiers for this client, each listed once. Used by
    /// `GET /v1/clients?identifier=`.
    #[serde(default)]
    #[schemars(extend("uniqueItems" = true))]
    pub identifiers: Vec<Identifier>,
    /// Personal details (names, birth date): personal data, kept apart from the journey facts.
    #[serde(default)]
    pub personal: PersonalDetails,
}

impl Rules for ClientRegistered {
    fn check(&self) -> Result<(), ValidationError> {
        for (index, identifier) in self.identifiers.iter().enumerate() {
            if self.identifiers[..index].contains(identifier) {
                return Err(ValidationError::new(
                    format!("identifiers[{index}]"),
                    "the same identifier is listed twice",
                ));
            }
        }
        Ok(())
    }
}

/// `identifier.added`: another agency identifier for a known client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentifierAdded {
    /// The new identifier.
    pub identifier: Identifier,
}

// ----- custody -------------------------------------------------------------------------------

/// `sentence.started`: the client begins serving a prison sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentenceStarted {
    /// The prison where the sentence is served.
    pub prison: Text,
    /// The first day of the sentence (YYYY-MM-DD).
    #[serde(serialize_with = "crate::dates::serialize")]
    pub start_date: NaiveDate,
    /// The expected release date (YYYY-MM-DD), if known; not before `start_date`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::dates::option"
    )]
    pub expected_release_date: Option<NaiveDate>,
}

impl Rules for SentenceStarted {
    fn check(&self) -> Result<(), ValidationError> {
        match self.expected_release_date {
            Some(release) if release < self.start_date => Err(ValidationError::new(
                "expected_release_date",
                "must not be before start_date",
            )),
            _ => Ok(()),
        }
    }
}

/// `programme.enrolled`: the client joins a (usually voluntary) programme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeEnrolled {
    /// The programme, e.g. `vol-mentoring`.
    pub programme: Text,
    /// Whether a court approved the enrolment, where the programme needs that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub court_approval: Option<bool>,
}

/// Why an involvement was opened; `transfer` means the case was handed over from another worker
/// or agency.
// Variants carry no doc comments of their own: schemars would then describe each variant
// separately (`oneOf` with `const`), which OpenAPI tooling reads poorly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpeningReason {
    Referral,
    Transfer,
    CourtOrder,
    Voluntary,
    Assigned,
    Other,
}

/// Why an involvement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClosingReason {
    Completed,
    Transferred,
    DroppedOut,
    ClientMoved,
    Other,
}

/// `involvement.opened`: an agency (and a worker in it) starts working with the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvolvementOpened {
    /// The agency that becomes involved; when absent, the agency recording the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<Text>,
    /// The role played for the client.
    pub role: Role,
    /// A reference to the worker (not a name: the agency's own staff reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<Text>,
    /// Why the involvement started; `transfer` marks a hand-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<OpeningReason>,
}

/// `involvement.closed`: an agency stops working with the client in a role. With a worker, it
/// closes that worker's open involvement with the same agency and role; without one, every open
/// involvement with the same agency and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvolvementClosed {
    /// The agency whose involvement ends; when absent, the agency recording the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<Text>,
    /// The role that ends.
    pub role: Role,
    /// The worker whose involvement ends, when the agency had several in this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<Text>,
    /// Why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ClosingReason>,
}

/// `consent.recorded`: the client consents (or another legal basis is recorded) to an agency
/// processing their data for the given purposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecorded {
    /// The agency the consent or legal basis covers.
    pub agency: Text,
    /// The purposes covered; at least one. Not `emergency`, `audit` or `subject_access`:
    /// break-glass and oversight are not an agency's to be granted.
    #[schemars(with = "Vec<ConsentedPurpose>", length(min = 1))]
    pub purposes: Vec<Purpose>,
    /// The legal basis.
    pub legal_basis: LegalBasis,
}

/// The purposes a consent may cover, as the published schema states them (the payload keeps
/// [`Purpose`], which consents stored before the rule may hold).
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ConsentedPurpose {
    CaseManagement,
    Supervision,
    ServiceDelivery,
    Statistics,
}

impl Rules for ConsentRecorded {
    fn check(&self) -> Result<(), ValidationError> {
        non_empty_list("purposes", &self.purposes)?;
        // Purposes no consent can stand for: break-glass is a read of one client with a written
        // justification, listed for review; audit and subject access are the oversight of the
        // roles that hold them. A consent naming them would open all of that to an agency
        // without any of it.
        if let Some((index, purpose)) = self.purposes.iter().enumerate().find(|(_, purpose)| {
            matches!(
                purpose,
                Purpose::Emergency | Purpose::Audit | Purpose::SubjectAccess
            )
        }) {
            return Err(ValidationError::new(
                format!("purposes[{index}]"),
                format!(
                    "`{}` is not a purpose a consent covers (emergency access is break-glass, \
                     audit and subject access belong to roles)",
                    purpose.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// `consent.withdrawn`: the client withdraws consent for an agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentWithdrawn {
    /// The agency that loses the consent.
    pub agency: Text,
    /// The purposes withdrawn; when absent, all of them. When given, at least one: an empty
    /// list would read as a withdrawal and withdraw nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub purposes: Option<Vec<Purpose>>,
}

impl Rules for ConsentWithdrawn {
    fn check(&self) -> Result<(), ValidationError> {
        self.purposes
            .as_deref()
            .map_or(Ok(()), |purposes| non_empty_list("purposes", purposes))
    }
}

/// `plan.agreed`: an individual plan covering some needs areas is agreed with the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanAgreed {
    /// The needs areas the plan covers; at least one.
    #[schemars(length(min = 1))]
    pub areas: Vec<NeedArea>,
    /// When the plan is to be reviewed (YYYY-MM-DD).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::dates::option"
    )]
    pub review_date: Option<NaiveDate>,
}

impl Rules for PlanAgreed {
    fn check(&self) -> Result<(), ValidationError> {
        non_empty_list("areas", &self.areas)
    }
}

/// `need.assessed`: the status of one needs area is assessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NeedAssessed {
    /// The needs area.
    pub area: NeedArea,
    /// Where work on it stands.
    pub status: NeedStatus,
    /// A free-text note: personal data (may hold health details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

/// `prerelease_lecture.attended`: the client attended an employment bureau lecture in prison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrereleaseLectureAttended {
    /// The lecture's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Text>,
}

/// `retraining.started`: a retraining course starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrainingStarted {
    /// The course, e.g. `welding`.
    pub course: Text,
}

/// `retraining.completed`: a retraining course is completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrainingCompleted {
    /// The course.
    pub course: Text,
    /// Whether a certificate was awarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<bool>,
}

/// The kind of counselling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CounsellingKind {
    Debt,
    Legal,
    FamilyLaw,
    Psychological,
}

/// `counselling.attended`: the client attended a counselling session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CounsellingAttended {
    /// The kind of counselling.
    pub kind: CounsellingKind,
}

// ----- release -------------------------------------------------------------------------------

/// `release.scheduled`: a release date is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseScheduled {
    /// The planned release date (YYYY-MM-DD).
    #[serde(serialize_with = "crate::dates::serialize")]
    pub release_date: NaiveDate,
}

/// How the client left prison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    Conditional,
    Parole,
    EndOfSentence,
    Transfer,
    Other,
}

/// `client.released`: the client leaves prison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientReleased {
    /// How the client was released.
    pub release_kind: ReleaseKind,
    /// Whether the release comes with probation supervision.
    pub supervision: bool,
    /// The municipality the client is released to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub municipality: Option<Text>,
}

/// The kind of contact with the client; `first_day` is the contact on the day of release (the
/// "first-day crisis").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    FirstDay,
    Meeting,
    Phone,
    HomeVisit,
    CrisisIntervention,
}

fn default_true() -> bool {
    true
}

/// `contact.made`: a worker had (or tried to have) contact with the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactMade {
    /// The kind of contact.
    pub kind: ContactKind,
    /// Whether the client attended; defaults to true.
    #[serde(default = "default_true")]
    pub attended: bool,
    /// The appointment this contact fulfils, if it was scheduled: the recording agency's own
    /// with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_id: Option<Text>,
}

/// `appointment.scheduled`: an appointment is set for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentScheduled {
    /// The sender's reference for the appointment, used by `appointment.missed` and
    /// `contact.made`. Scheduling an id again replaces the sender's own appointment only.
    pub appointment_id: Text,
    /// When the appointment is (RFC 3339).
    #[serde(deserialize_with = "crate::dates::to_the_microsecond")]
    pub at: DateTime<FixedOffset>,
    /// What the appointment is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Text>,
}

/// `appointment.missed`: the client did not come to a scheduled appointment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentMissed {
    /// The appointment that was missed: the recording agency's own with this id.
    pub appointment_id: Text,
}

/// `employment_bureau.registered`: the client registers with the employment bureau.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmploymentBureauRegistered {
    /// Whether a contract with the bureau was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_signed: Option<bool>,
}

/// The kind of job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    FullTime,
    PartTime,
    Temporary,
    SupportedEmployment,
    Other,
}

/// `job.placed`: the client starts a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPlaced {
    /// The kind of job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    /// The sector, e.g. `construction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sector: Option<Text>,
}

/// `job.lost`: the client loses or leaves a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobLost {
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
}

/// The kind of housing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HousingKind {
    OwnTenancy,
    SocialHousing,
    SupportedHousing,
    Shelter,
    Family,
    Other,
}

/// `housing.secured`: the client has somewhere to live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HousingSecured {
    /// The kind of housing.
    pub kind: HousingKind,
}

/// `housing.lost`: the client loses their housing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HousingLost {
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
}

/// `debt_case.opened`: debt counselling opens a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebtCaseOpened {
    /// The counselling service's case reference.
    pub case_ref: Text,
}

/// How a debt case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DebtOutcome {
    Settled,
    RepaymentPlan,
    Insolvency,
    Other,
}

/// `debt_case.closed`: a debt case is closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebtCaseClosed {
    /// The case reference given when it was opened.
    pub case_ref: Text,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DebtOutcome>,
}

/// `family_contact.restored`: contact with family is restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FamilyContactRestored {
    /// A free-text note: personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<Text>,
}

/// `programme.completed`: the client completes a programme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeCompleted {
    /// The programme completed.
    pub programme: Text,
}

/// `programme.dropped_out`: the client leaves a programme before completing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeDroppedOut {
    /// The programme left.
    pub programme: Text,
    /// Why the client dropped out.
    pub reason: Text,
}

/// `reoffence.recorded`: a new offence is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReoffenceRecorded {
    /// When the offence was committed (YYYY-MM-DD), if known; not after the day the event
    /// occurred.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::dates::option"
    )]
    pub offence_date: Option<NaiveDate>,
}

/// `client.recalled`: a conditionally released client is recalled to prison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientRecalled {
    /// The prison the client returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prison: Option<Text>,
    /// Why, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
}

// ----- rectification -------------------------------------------------------------------------

/// `event.corrected`: rectification. The event `event_id` is to be read with `data` in place of
/// its original data; the original stays in the log, marked as corrected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventCorrected {
    /// The event being corrected (an earlier event of the same client).
    pub event_id: EventId,
    /// Why it is corrected.
    pub reason: Text,
    /// The replacement `data`, valid under the corrected event's own schema.
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl EventCorrected {
    /// The replacement data as the corrected event's type reads it: texts trimmed, defaults
    /// filled in, times to the microsecond, as every other event's data is stored. `None` where
    /// it is not valid for that type (the journey then refuses the correction, naming why).
    pub fn normalised_data(
        &self,
        target_type: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let current = crate::catalogue::event_type(target_type)?.schema_version;
        let replacement = serde_json::Value::Object(self.data.clone());
        match crate::JourneyEvent::decode(target_type, current, &replacement)
            .ok()?
            .data()
        {
            serde_json::Value::Object(data) => Some(data),
            _ => None,
        }
    }
}

/// `event.retracted`: an event should never have been recorded (wrong client, never happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRetracted {
    /// The event being retracted (an earlier event of the same client).
    pub event_id: EventId,
    /// Why it is retracted.
    pub reason: Text,
}

// ----- data protection -----------------------------------------------------------------------
// Recorded by the service itself through the data-protection endpoints and the retention run,
// never posted by agency systems: they change what may be done with the client's data, not the
// client's journey.

/// `personal_data.erased`: the data-protection officer erased the client's personal data. The
/// keys protecting it are destroyed: the journey facts (types, dates, agencies) stay, while names,
/// identifiers, notes and reasons read as erased from then on, everywhere. The client's record is
/// closed: no further events are accepted for them, but for the lifting of a restriction in force
/// at the erasure (kept, it would hold the remaining facts out of statistics for good).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonalDataErased {
    /// Why, as recorded by the data-protection officer (must not itself hold personal data).
    pub reason: Text,
}

/// `retention.applied`: the retention schedule found some categories of the client's personal
/// data due, and their keys were destroyed. The record stays open; data recorded later in those
/// categories gets a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionApplied {
    /// The categories whose personal data was shredded.
    #[schemars(length(min = 1))]
    pub categories: Vec<crate::personal::Category>,
    /// The day the retention period ended (the earliest of the categories' due dates).
    #[serde(serialize_with = "crate::dates::serialize")]
    pub due_since: NaiveDate,
}

impl Rules for RetentionApplied {
    fn check(&self) -> Result<(), ValidationError> {
        non_empty_list("categories", &self.categories)
    }
}

/// `processing.restricted`: the client's data may be stored but not used (GDPR Art. 18,
/// LED Art. 16(3)); it is readable only for audit or subject access until the restriction is lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessingRestricted {
    /// Why (e.g. the client contests the accuracy of the data).
    pub reason: Text,
}

/// `restriction.lifted`: a restriction of processing ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestrictionLifted {
    /// Why it ends.
    pub reason: Text,
}

no_extra_rules!(
    IdentifierAdded,
    ProgrammeEnrolled,
    InvolvementOpened,
    InvolvementClosed,
    NeedAssessed,
    PrereleaseLectureAttended,
    RetrainingStarted,
    RetrainingCompleted,
    CounsellingAttended,
    ReleaseScheduled,
    ClientReleased,
    ContactMade,
    AppointmentScheduled,
    AppointmentMissed,
    EmploymentBureauRegistered,
    JobPlaced,
    JobLost,
    HousingSecured,
    HousingLost,
    DebtCaseOpened,
    DebtCaseClosed,
    FamilyContactRestored,
    ProgrammeCompleted,
    ProgrammeDroppedOut,
    ReoffenceRecorded,
    ClientRecalled,
    EventCorrected,
    EventRetracted,
    PersonalDataErased,
    ProcessingRestricted,
    RestrictionLifted,
);

fn non_empty_list<T>(field: &str, items: &[T]) -> Result<(), ValidationError> {
    if items.is_empty() {
        Err(ValidationError::new(field, "must list at least one item"))
    } else {
        Ok(())
    }
}
