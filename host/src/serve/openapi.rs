//! The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json`.

use serde_json::{json, Value};

/// Returns the OpenAPI document.
pub fn document() -> Value {
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "The execution id (run_id)." });
    let cursor = json!([
        id,
        { "name": "from", "in": "query", "schema": { "type": "integer", "minimum": 0 },
          "description": "First sequence number to return. Default 0." },
        { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0 },
          "description": "Last sequence number already seen; the stream starts after it. Not together with `from`." },
        { "name": "follow", "in": "query", "schema": { "type": "boolean", "default": false },
          "description": "Keep the stream open until the execution's last record." }
    ]);
    let errors = |codes: &[&str]| -> Value {
        let mut responses = serde_json::Map::new();
        for code in codes {
            responses.insert((*code).to_string(), json!({ "$ref": format!("#/components/responses/Error{code}") }));
        }
        Value::Object(responses)
    };
    let with = |mut base: Value, extra: Value| -> Value {
        if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        base
    };
    let execution_response = json!({ "description": "The execution.", "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/Execution" } } } });
    let ndjson = |item: &str, description: &str| json!({ "description": description, "content": { "application/x-ndjson": {
        "schema": { "$ref": format!("#/components/schemas/{item}") } } } });

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tower-host serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs Tower app executions on the configured backend plugin and streams their logs and status. Errors are {\"error\": {\"code\", \"message\"}}. Over TCP every request needs `Authorization: Bearer <token>`."
        },
        "paths": {
            "/v1/executions": {
                "post": {
                    "operationId": "createExecution",
                    "summary": "Create an execution from an uploaded package or a package URL; returns at once.",
                    "description": "`multipart/form-data` with a `spec` part (JSON, `package` = {\"upload\": {\"sha256\"}}) followed by a `package` part (the .tar.gz), or `application/json` with `package` = {\"url\": {\"url\", \"sha256\"}}. Creating an existing id with the same spec returns it with 200; with a different spec, 409.",
                    "requestBody": { "required": true, "content": {
                        "multipart/form-data": { "schema": { "type": "object", "required": ["spec", "package"], "properties": {
                            "spec": { "$ref": "#/components/schemas/Spec" },
                            "package": { "type": "string", "format": "binary" } } } },
                        "application/json": { "schema": { "$ref": "#/components/schemas/Spec" } } } },
                    "responses": with(json!({
                        "201": with(execution_response.clone(), json!({ "description": "Created; the backend gets it in the background." })),
                        "200": with(execution_response.clone(), json!({ "description": "An execution with this id and spec exists." }))
                    }), errors(&["400", "401", "408", "409", "413", "415", "429", "500", "503"]))
                },
                "get": {
                    "operationId": "listExecutions",
                    "summary": "List executions in creation order.",
                    "parameters": [
                        { "name": "state", "in": "query", "schema": { "type": "string" },
                          "description": "Comma-separated states: preparing, running, exited, crashed, cancelled, timed_out, failed, lost, or active and finished." },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 1000 } },
                        { "name": "after", "in": "query", "schema": { "type": "string" }, "description": "`next_after` of the previous page." }
                    ],
                    "responses": with(json!({ "200": { "description": "A page of executions.", "content": { "application/json": { "schema": {
                        "type": "object", "properties": {
                            "executions": { "type": "array", "items": { "$ref": "#/components/schemas/Execution" } },
                            "next_after": { "type": ["string", "null"] } } } } } } }), errors(&["400", "401"]))
                }
            },
            "/v1/executions/{id}": {
                "get": {
                    "operationId": "getExecution",
                    "summary": "Get one execution: status, times, exit code or failure, metadata.",
                    "parameters": [id],
                    "responses": with(json!({ "200": execution_response.clone() }), errors(&["401", "404"]))
                },
                "delete": {
                    "operationId": "deleteExecution",
                    "summary": "Clean a finished execution up on the backend and remove it with its logs.",
                    "parameters": [id],
                    "responses": with(json!({ "204": { "description": "Removed." } }), errors(&["401", "404", "409", "500", "502"]))
                }
            },
            "/v1/executions/{id}/logs": {
                "get": {
                    "operationId": "streamLogs",
                    "summary": "Stream log records as NDJSON from a sequence number.",
                    "parameters": cursor.clone(),
                    "responses": with(json!({ "200": ndjson("LogRecord", "Log records, one per line. The response ends cleanly at the end of the log; an aborted response is incomplete.") }), errors(&["400", "401", "404"]))
                }
            },
            "/v1/executions/{id}/events": {
                "get": {
                    "operationId": "streamEvents",
                    "summary": "Stream status changes as NDJSON from a sequence number.",
                    "parameters": cursor,
                    "responses": with(json!({ "200": ndjson("Event", "Status changes, one per line; the last one of a finished execution is terminal.") }), errors(&["400", "401", "404"]))
                }
            },
            "/v1/executions/{id}/terminate": {
                "post": {
                    "operationId": "terminateExecution",
                    "summary": "Stop an execution politely, forcing it after the grace period.",
                    "parameters": [id],
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object",
                        "additionalProperties": false,
                        "properties": { "grace_seconds": { "type": "number", "minimum": 0, "maximum": 86400 } } } } } },
                    "responses": with(json!({
                        "202": with(execution_response.clone(), json!({ "description": "Stop requested; watch the events." })),
                        "200": with(execution_response.clone(), json!({ "description": "The execution had already ended." }))
                    }), errors(&["400", "401", "404"]))
                }
            },
            "/v1/executions/{id}/kill": {
                "post": {
                    "operationId": "killExecution",
                    "summary": "Stop an execution at once.",
                    "parameters": [id],
                    "responses": with(json!({
                        "202": with(execution_response.clone(), json!({ "description": "Kill requested; watch the events." })),
                        "200": with(execution_response, json!({ "description": "The execution had already ended." }))
                    }), errors(&["401", "404"]))
                }
            },
            "/v1/backend": {
                "get": {
                    "operationId": "getBackend",
                    "summary": "The plugin's name and versions, the backend's capabilities, and the host's limits.",
                    "responses": with(json!({ "200": { "description": "Backend information.", "content": { "application/json": { "schema": { "type": "object" } } } } }), errors(&["401"]))
                }
            },
            "/v1/health": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "The backend's own health probe, and whether the host accepts executions.",
                    "responses": with(json!({
                        "200": { "description": "Healthy.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } },
                        "503": { "description": "Unhealthy or shutting down.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Health" } } } }
                    }), errors(&["401"]))
                }
            },
            "/v1/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics in the text format 0.0.4.",
                    "responses": with(json!({ "200": { "description": "Metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } }), errors(&["401"]))
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document.",
                    "responses": with(json!({ "200": { "description": "The OpenAPI document.", "content": { "application/json": { "schema": { "type": "object" } } } } }), errors(&["401"]))
                }
            }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "Required on TCP listeners only." } },
            "responses": error_responses(),
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": {
                    "code": { "type": "string", "enum": ["invalid_request", "invalid_spec", "invalid_package", "unauthorized", "not_found", "method_not_allowed", "request_timeout", "conflict", "payload_too_large", "unsupported_media_type", "too_many_requests", "shutting_down", "backend_error", "internal"] },
                    "message": { "type": "string" },
                    "field": { "type": "string", "description": "Path of the invalid spec field, for `invalid_spec`." } } } } },
                "Spec": { "type": "object", "required": ["package"], "description": "The plugin contract's ExecutionSpec. `run_id` defaults to a new UUID; secret values are never returned.",
                    "properties": {
                        "run_id": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$" },
                        "app_name": { "type": "string" },
                        "package": { "oneOf": [
                            { "type": "object", "required": ["upload"], "properties": { "upload": { "type": "object", "required": ["sha256"], "properties": { "sha256": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$" } } } } },
                            { "type": "object", "required": ["url"], "properties": { "url": { "type": "object", "required": ["url", "sha256"], "properties": { "url": { "type": "string" }, "sha256": { "type": "string" } } } } }
                        ] },
                        "runtime": { "type": "object" },
                        "environment": { "type": "string" },
                        "secrets": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "value": { "type": "string" } } } },
                        "parameters": { "type": "array", "items": { "$ref": "#/components/schemas/KeyValue" } },
                        "env": { "type": "array", "items": { "$ref": "#/components/schemas/KeyValue" } },
                        "limits": { "type": "object", "properties": { "timeout_seconds": { "type": "integer" }, "memory_mib": { "type": "integer" }, "cpu_millicores": { "type": "integer" } } },
                        "network": { "type": "object" },
                        "cache": { "type": "object" },
                        "traceparent": { "type": "string" }
                    } },
                "KeyValue": { "type": "object", "required": ["key", "value"], "properties": { "key": { "type": "string" }, "value": { "type": "string" } } },
                "Status": { "type": "object", "required": ["state"], "properties": {
                    "state": { "type": "string", "enum": ["preparing", "running", "exited", "crashed", "cancelled", "timed_out", "failed", "lost"] },
                    "phase": { "type": "string" }, "exit_code": { "type": "integer" }, "signal": { "type": "integer" }, "reason": { "type": "string" },
                    "forced": { "type": "boolean" }, "code": { "type": "string" }, "stage": { "type": "string" }, "message": { "type": "string" },
                    "retryable": { "type": "boolean" }, "started_at": { "type": "string", "format": "date-time" },
                    "ended_at": { "type": "string", "format": "date-time" }, "metadata": { "type": "object", "additionalProperties": { "type": "string" } } } },
                "Execution": { "type": "object", "properties": {
                    "id": { "type": "string" }, "app_name": { "type": "string" },
                    "created_at": { "type": "string", "format": "date-time" }, "updated_at": { "type": "string", "format": "date-time" },
                    "status": { "$ref": "#/components/schemas/Status" },
                    "exit_code": { "type": ["integer", "null"] },
                    "phase": { "type": "string", "enum": ["queued", "submitted", "attached", "finished"] },
                    "log_records": { "type": "integer" }, "event_records": { "type": "integer" },
                    "package": { "type": "object", "properties": { "origin": { "type": "string", "enum": ["upload", "url"] }, "sha256": { "type": "string" }, "size_bytes": { "type": "integer" }, "url": { "type": "string" } } },
                    "recoveries": { "type": "integer" }, "cleaned_up": { "type": "boolean" },
                    "expires_at": { "type": ["string", "null"], "format": "date-time" },
                    "spec": { "$ref": "#/components/schemas/Spec" } } },
                "LogRecord": { "type": "object", "required": ["seq", "timestamp", "stream", "channel", "line", "flags"], "properties": {
                    "seq": { "type": "integer" }, "timestamp": { "type": "string", "format": "date-time" },
                    "stream": { "type": "string", "enum": ["stdout", "stderr"] }, "channel": { "type": "string", "enum": ["setup", "program"] },
                    "line": { "type": "string" }, "flags": { "type": "integer", "description": "1 split, 2 truncated, 4 invalid UTF-8, 8 no final newline." } } },
                "Event": { "allOf": [ { "type": "object", "required": ["seq", "recorded_at"], "properties": {
                    "seq": { "type": "integer" }, "recorded_at": { "type": "string", "format": "date-time" } } },
                    { "$ref": "#/components/schemas/Status" } ] },
                "Health": { "type": "object", "properties": { "healthy": { "type": "boolean" }, "message": { "type": "string" }, "accepting": { "type": "boolean" },
                    "backend": { "type": "object" }, "executions": { "type": "object" } } }
            }
        },
        "security": [ {}, { "bearer": [] } ]
    })
}

fn error_responses() -> Value {
    let described = [
        ("400", "The request or the spec is invalid."),
        ("401", "Missing or invalid bearer token (TCP only)."),
        ("404", "No execution has this id, or no route matches."),
        ("408", "The upload stalled."),
        ("409", "The request conflicts with the execution's state or id."),
        ("413", "The body, the spec or the package is larger than its limit."),
        ("415", "The content type is not accepted."),
        ("429", "Executions at the cap, and the queue is full or disabled."),
        ("500", "The host failed."),
        ("502", "The backend failed."),
        ("503", "The host is shutting down."),
    ];
    let mut responses = serde_json::Map::new();
    for (code, description) in described {
        responses.insert(
            format!("Error{code}"),
            json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(responses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::routes::ROUTES;

    #[test]
    fn document_lists_every_route_and_only_those() {
        let document = document();
        let paths = document["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            assert!(paths.get(path).and_then(|item| item.get(method)).is_some(), "{method} {path} is missing");
        }
        let documented: usize = paths.values().map(|item| item.as_object().unwrap().len()).sum();
        assert_eq!(documented, ROUTES.len());
    }

    #[test]
    fn every_error_reference_resolves() {
        let document = document();
        let text = document.to_string();
        for (start, _) in text.match_indices("#/components/responses/") {
            let name: String = text[start + 23..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            assert!(document["components"]["responses"].get(&name).is_some(), "{name} is not defined");
        }
    }
}
