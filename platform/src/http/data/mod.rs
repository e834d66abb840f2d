//! The data plane: the flat `/v1/sessions...` family and the project family
//! `/v1/projects/{project_ref}/sessions...`, served by the same handlers.

pub mod sessions;

use actix_web::web;

fn session_routes(scope: actix_web::Scope) -> actix_web::Scope {
    // A request is matched against each resource's pattern in order; sending a message is by
    // far the most frequent request, so its pattern comes first (the patterns do not overlap).
    scope
        .route("/{session_id}/messages", web::post().to(sessions::send))
        .route("", web::post().to(sessions::create))
        .route("", web::get().to(sessions::list))
        .route("/{session_id}", web::get().to(sessions::fetch))
        .route("/{session_id}", web::delete().to(sessions::close))
        .route("/{session_id}/events", web::get().to(sessions::events))
        .route(
            "/{session_id}/inputs/{request_id}",
            web::put().to(sessions::resolve_input),
        )
        .route(
            "/{session_id}/participants",
            web::post().to(sessions::add_participant),
        )
}

/// Registers the data-plane routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(session_routes(web::scope("/v1/sessions")))
        .service(session_routes(web::scope(
            "/v1/projects/{project_ref}/sessions",
        )));
}
