//! The data plane: `/v1/sessions...`.

mod sessions;

use actix_web::web;

/// Registers the data-plane routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/sessions")
            .route("", web::post().to(sessions::create))
            .route("/{session_id}", web::get().to(sessions::fetch))
            .route("/{session_id}/messages", web::post().to(sessions::send)),
    );
}
