//! diesel table definitions, kept by hand in step with `migrations/` (a test checks both backends).

diesel::table! {
    orgs (id) {
        id -> Text,
        slug -> Text,
        name -> Text,
        managed_by -> Text,
        disabled_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        sandbox_slot -> Nullable<Integer>,
    }
}

diesel::table! {
    idempotency_keys (org_id, idem_key) {
        org_id -> Text,
        idem_key -> Text,
        request_hash -> Text,
        status -> Nullable<Integer>,
        response -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    model_calls (id) {
        id -> Text,
        org_id -> Text,
        project_id -> Text,
        session_id -> Text,
        provider -> Text,
        model -> Text,
        status -> Integer,
        streamed -> Bool,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cache_read_tokens -> BigInt,
        cache_creation_tokens -> BigInt,
        latency_ms -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    projects (id) {
        id -> Text,
        org_id -> Text,
        slug -> Text,
        source_path -> Text,
        harness -> Nullable<Text>,
        multitask -> Text,
        managed_by -> Text,
        disabled_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        lookup_prefix -> Text,
        key_hash -> Text,
        scopes -> Text,
        created_at -> Timestamp,
        last_used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        last4 -> Text,
        managed_by -> Text,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        org_id -> Text,
        project_id -> Text,
        driver -> Text,
        app_path -> Text,
        harness_session_id -> Nullable<Text>,
        status -> Text,
        current_agent -> Text,
        permission_mode -> Nullable<Text>,
        metadata -> Text,
        participants -> Text,
        pending_input -> Nullable<Text>,
        approved_tools -> Text,
        parent_id -> Nullable<Text>,
        last_seq -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        turn_owner -> Nullable<Text>,
        turn_lease_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    session_log (session_id, seq) {
        session_id -> Text,
        seq -> BigInt,
        last_seq -> BigInt,
        org_id -> Text,
        payload -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Text,
        org_id -> Text,
        name -> Text,
        url -> Text,
        event_types -> Text,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        secret_sealed -> Nullable<Text>,
        previous_secret_sealed -> Nullable<Text>,
        previous_secret_until -> Nullable<Timestamp>,
        managed_by -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        org_id -> Text,
        event_id -> Text,
        endpoint_id -> Text,
        status -> Text,
        attempts -> BigInt,
        next_attempt_at -> Timestamp,
        lease_holder -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        delivered_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> Text,
        delivery_id -> Text,
        org_id -> Text,
        attempt -> BigInt,
        status_code -> Nullable<BigInt>,
        latency_ms -> BigInt,
        error -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        org_id -> Nullable<Text>,
        actor -> Text,
        action -> Text,
        target -> Text,
        details -> Text,
        created_at -> Timestamp,
        actor_type -> Text,
        request_id -> Nullable<Text>,
        remote_addr -> Nullable<Text>,
        digest -> Nullable<Text>,
        resource_type -> Nullable<Text>,
        before_digest -> Nullable<Text>,
    }
}

diesel::table! {
    adapter_responses (id) {
        id -> Text,
        org_id -> Text,
        project_id -> Text,
        session_id -> Text,
        body -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    managed_events (session_id, seq) {
        session_id -> Text,
        org_id -> Text,
        seq -> BigInt,
        event_type -> Text,
        body -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    usage_records (id) {
        id -> Text,
        org_id -> Text,
        client_event_id -> Text,
        project_id -> Text,
        session_id -> Text,
        turn_seq -> BigInt,
        api_key_id -> Nullable<Text>,
        driver -> Text,
        provider -> Nullable<Text>,
        model -> Nullable<Text>,
        byok -> Bool,
        status -> Text,
        source -> Text,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cache_read_tokens -> BigInt,
        cache_write_tokens -> BigInt,
        reasoning_tokens -> BigInt,
        cost_micro_cents -> BigInt,
        created_at -> Timestamp,
        billed -> Bool,
        price_input -> Nullable<BigInt>,
        price_output -> Nullable<BigInt>,
        price_cache_read -> Nullable<BigInt>,
        price_cache_write -> Nullable<BigInt>,
    }
}

diesel::table! {
    org_events (id) {
        id -> Text,
        org_id -> Text,
        event_type -> Text,
        dedupe_key -> Text,
        payload -> Text,
        created_at -> Timestamp,
        fanned_out -> Bool,
    }
}

diesel::table! {
    job_leases (name) {
        name -> Text,
        holder -> Text,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    releases (id) {
        id -> Text,
        org_id -> Text,
        project_id -> Text,
        version -> BigInt,
        commit_sha -> Text,
        message -> Text,
        kind -> Text,
        status -> Text,
        build_kind -> Text,
        path -> Text,
        size_bytes -> BigInt,
        files -> BigInt,
        created_at -> Timestamp,
        activated_at -> Nullable<Timestamp>,
        expires_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    usage_daily (org_id, project_id, api_key_id, model, day) {
        org_id -> Text,
        project_id -> Text,
        api_key_id -> Text,
        model -> Text,
        day -> Text,
        turns -> BigInt,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        cache_read_tokens -> BigInt,
        cache_write_tokens -> BigInt,
        reasoning_tokens -> BigInt,
        cost_micro_cents -> BigInt,
    }
}

diesel::table! {
    model_keys (org_id, provider) {
        org_id -> Text,
        provider -> Text,
        sealed -> Text,
        master_key_id -> Text,
        last4 -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    budgets (org_id, scope_id) {
        org_id -> Text,
        scope_id -> Text,
        input_tokens -> Nullable<BigInt>,
        output_tokens -> Nullable<BigInt>,
        total_tokens -> Nullable<BigInt>,
        cost_cents -> Nullable<BigInt>,
        reserve_tokens -> Nullable<BigInt>,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(projects -> orgs (org_id));
diesel::joinable!(api_keys -> orgs (org_id));
diesel::allow_tables_to_appear_in_same_query!(
    orgs,
    projects,
    api_keys,
    sessions,
    session_log,
    audit_log,
    model_calls,
    idempotency_keys,
    adapter_responses,
    managed_events,
    usage_records,
    usage_daily,
    org_events,
    releases,
    job_leases,
    webhook_endpoints,
    webhook_deliveries,
    webhook_attempts,
    model_keys,
    budgets
);
