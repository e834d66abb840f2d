//! The OpenAPI 3.1 document of the public API, generated from the handlers' annotations.
//!
//! Handlers are annotated once, on their flat `/v1/sessions...` path; the project family
//! `/v1/projects/{project_ref}/sessions...` is derived from it, since the same handlers serve
//! both.

use actix_web::HttpResponse;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{Modify, OpenApi};

use super::data::sessions;
use super::error::{ErrorBody, ValidationErrorBody, ValidationItem};
use crate::runtime::{ProjectRef, SessionPage, SessionView};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Karta API",
        description = "Sessions and streamed turns of harness applications hosted on Karta."
    ),
    paths(
        sessions::create,
        sessions::list,
        sessions::fetch,
        sessions::close,
        sessions::send,
        sessions::events,
        sessions::resolve_input,
        sessions::add_participant,
        super::org::mint_session_token,
        super::org::keys::list,
        super::org::keys::create,
        super::org::keys::revoke,
        super::org::audit::list,
        super::org::projects::list,
        super::org::projects::get,
        super::org::model_keys::put,
        super::org::model_keys::get,
        super::org::model_keys::delete,
        super::org::budgets::list,
        super::org::budgets::put,
        super::org::budgets::delete,
        super::org::usage::list,
        super::org::usage::summary,
        super::org::usage::records,
        super::org::events::list,
        super::org::releases::publish,
        super::org::releases::list,
        super::org::releases::get,
        super::org::releases::rollback,
        super::org::logs::logs,
        super::org::webhooks::create,
        super::org::webhooks::list,
        super::org::webhooks::update,
        super::org::webhooks::delete,
        super::org::webhooks::rotate,
        super::org::webhooks::deliveries,
        super::org::webhooks::redeliver,
        super::adapters::chat::create,
        super::adapters::responses::create,
        super::adapters::responses::fetch,
        super::adapters::responses::delete,
        super::adapters::managed::create,
        super::adapters::managed::post_event,
        super::adapters::managed::state,
        super::adapters::managed::stream,
        super::adapters::managed_upstream::create,
        super::adapters::managed_upstream::state,
        super::adapters::managed_upstream::send,
        super::adapters::managed_upstream::list,
        super::adapters::managed_upstream::stream,
    ),
    components(schemas(
        SessionView,
        SessionPage,
        ProjectRef,
        sessions::CreateBody,
        sessions::SendBody,
        sessions::InputBody,
        sessions::ParticipantBody,
        sessions::TurnAnswer,
        sessions::TurnMessage,
        sessions::TextPart,
        sessions::InputAnswer,
        ErrorBody,
        ValidationErrorBody,
        ValidationItem,
        super::org::MintBody,
        super::org::MintedToken,
        super::org::keys::ApiKeyView,
        super::org::keys::CreateKeyBody,
        super::org::keys::CreatedKey,
        super::org::keys::KeyList,
        super::org::audit::AuditEvent,
        super::org::audit::AuditPage,
        super::org::projects::ProjectView,
        super::org::projects::ProjectPage,
        super::org::model_keys::PutModelKey,
        super::org::model_keys::ModelKeyView,
        super::org::budgets::PutBudget,
        super::org::budgets::BudgetView,
        super::org::usage::UsageRow,
        super::org::usage::UsagePage,
        super::adapters::chat::ChatBody,
        super::adapters::chat::StreamOptions,
        super::adapters::responses::ResponsesBody,
        super::adapters::managed::CreateManagedBody,
        super::adapters::managed::UserEventBody,
    )),
    modifiers(&Bearer, &ProjectFamily)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An org API key (`kt_live_...`)"))
                    .build(),
            ),
        );
        // The Anthropic SDK's header, accepted wherever a bearer key is.
        components.add_security_scheme(
            "x-api-key",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "x-api-key",
                    "An org API key (`kt_live_...`), as the Anthropic SDK sends it",
                ),
            )),
        );
    }
}

struct ProjectFamily;

impl Modify for ProjectFamily {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let project_ref = ParameterBuilder::new()
            .name("project_ref")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("The project's slug or id (`prj_...`)"))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        let flat: Vec<(String, utoipa::openapi::PathItem)> = doc
            .paths
            .paths
            .iter()
            .filter(|(p, _)| p.starts_with("/v1/sessions"))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        for (path, mut item) in flat {
            let scoped = path.replacen("/v1/sessions", "/v1/projects/{project_ref}/sessions", 1);
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.operation_id = op.operation_id.take().map(|id| format!("project_{id}"));
                op.parameters
                    .get_or_insert_with(Vec::new)
                    .insert(0, project_ref.clone());
                op.tags = Some(vec!["project sessions".into()]);
            }
            doc.paths.paths.insert(scoped, item);
        }
    }
}

/// `GET /openapi.json`
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
