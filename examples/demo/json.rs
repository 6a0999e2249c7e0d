//! The end of a run, for a script: the final `proto::Builder` as JSON.
//!
//! prost's types have no serde, so the fields are mapped here by hand, under their
//! protobuf names. Every field is present: absent messages and unset wrappers are
//! `null`, timestamps are RFC 3339 strings in UTC (`"2026-11-28T13:43:05.123456789Z"`).
//! The structs are destructured without `..`, so a field added to the schema does not
//! compile here until it is mapped.

use genbuild::proto;
use serde_json::{json, Value};

pub fn builder(state: &proto::Builder) -> Value {
    let proto::Builder {
        is_evaluating,
        is_building,
        generation,
        generation_uuid,
        is_suspended,
        hostname,
        last_error,
        build_progress,
    } = state;
    json!({
        "is_evaluating": is_evaluating,
        "is_building": is_building,
        "generation": generation.as_ref().map(self::generation),
        "generation_uuid": generation_uuid,
        "is_suspended": is_suspended,
        "hostname": hostname,
        "last_error": last_error,
        "build_progress": build_progress.as_ref().map(progress),
    })
}

fn generation(g: &proto::Generation) -> Value {
    let proto::Generation {
        uuid,
        hostname,
        selected_remote_url,
        selected_remote_name,
        selected_branch_name,
        selected_commit_id,
        selected_commit_msg,
        selected_branch_is_testing,
        main_commit_id,
        main_remote_name,
        main_branch_name,
        eval_status,
        eval_started_at,
        eval_ended_at,
        eval_err,
        out_path,
        drv_path,
        machine_id,
        build_status,
        build_started_at,
        build_ended_at,
        build_err,
        repository_path,
        repository_subdir,
        system_attr,
        build_reason,
        eval_reused_from,
        eval_usage,
        build_usage,
    } = g;
    json!({
        "uuid": uuid,
        "hostname": hostname,
        "selected_remote_url": selected_remote_url,
        "selected_remote_name": selected_remote_name,
        "selected_branch_name": selected_branch_name,
        "selected_commit_id": selected_commit_id,
        "selected_commit_msg": selected_commit_msg,
        "selected_branch_is_testing": selected_branch_is_testing,
        "main_commit_id": main_commit_id,
        "main_remote_name": main_remote_name,
        "main_branch_name": main_branch_name,
        "eval_status": eval_status,
        "eval_started_at": timestamp(eval_started_at),
        "eval_ended_at": timestamp(eval_ended_at),
        "eval_err": eval_err,
        "out_path": out_path,
        "drv_path": drv_path,
        "machine_id": machine_id,
        "build_status": build_status,
        "build_started_at": timestamp(build_started_at),
        "build_ended_at": timestamp(build_ended_at),
        "build_err": build_err,
        "repository_path": repository_path,
        "repository_subdir": repository_subdir,
        "system_attr": system_attr,
        "build_reason": build_reason,
        "eval_reused_from": eval_reused_from,
        "eval_usage": eval_usage.as_ref().map(usage),
        "build_usage": build_usage.as_ref().map(usage),
    })
}

fn usage(u: &proto::ResourceUsage) -> Value {
    let proto::ResourceUsage { peak_memory_bytes, cpu_ms, memory_limit_reached } = u;
    json!({
        "peak_memory_bytes": peak_memory_bytes,
        "cpu_ms": cpu_ms,
        "memory_limit_reached": memory_limit_reached,
    })
}

fn progress(p: &proto::BuildProgress) -> Value {
    let proto::BuildProgress {
        generation_uuid,
        done,
        expected,
        running,
        failed,
        building,
        copies_done,
        copies_expected,
        copying,
        copy_bytes_done,
        copy_bytes_expected,
    } = p;
    json!({
        "generation_uuid": generation_uuid,
        "done": done,
        "expected": expected,
        "running": running,
        "failed": failed,
        "building": building,
        "copies_done": copies_done,
        "copies_expected": copies_expected,
        "copying": copying,
        "copy_bytes_done": copy_bytes_done,
        "copy_bytes_expected": copy_bytes_expected,
    })
}

/// RFC 3339 in UTC, as prost-types prints a `Timestamp`.
fn timestamp(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref().map_or(Value::Null, |t| Value::String(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_under_its_protobuf_name() {
        let state = proto::Builder {
            is_evaluating: Some(false),
            is_building: None,
            generation: Some(proto::Generation {
                uuid: "u".into(),
                selected_branch_is_testing: Some(true),
                eval_started_at: Some(prost_types::Timestamp { seconds: 1_764_337_385, nanos: 120_000_000 }),
                eval_status: "evaluated".into(),
                eval_usage: Some(proto::ResourceUsage {
                    peak_memory_bytes: 1 << 30,
                    cpu_ms: 5300,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            build_progress: Some(proto::BuildProgress {
                done: 3,
                expected: 3,
                building: vec!["/nix/store/x-a.drv".into()],
                copies_expected: 2,
                copying: vec!["/nix/store/x-a".into()],
                copy_bytes_done: 10,
                copy_bytes_expected: 11,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = builder(&state);
        assert_eq!(json.as_object().unwrap().len(), 8);
        assert_eq!(json["is_evaluating"], false);
        assert_eq!(json["is_building"], Value::Null);
        assert_eq!(json["build_progress"]["done"], 3);
        assert_eq!(json["build_progress"]["building"][0], "/nix/store/x-a.drv");
        assert_eq!(json["build_progress"].as_object().unwrap().len(), 11);
        assert_eq!(json["build_progress"]["copies_done"], 0);
        assert_eq!(json["build_progress"]["copies_expected"], 2);
        assert_eq!(json["build_progress"]["copying"][0], "/nix/store/x-a");
        assert_eq!(json["build_progress"]["copy_bytes_expected"], 11);
        let g = &json["generation"];
        assert_eq!(g.as_object().unwrap().len(), 29);
        assert_eq!(g["eval_usage"]["peak_memory_bytes"], 1 << 30);
        assert_eq!(g["eval_usage"]["cpu_ms"], 5300);
        assert_eq!(g["eval_usage"]["memory_limit_reached"], false);
        assert_eq!(g["build_usage"], Value::Null);
        assert_eq!(g["eval_started_at"], "2025-11-28T13:43:05.120Z");
        assert_eq!(g["eval_ended_at"], Value::Null);
        assert_eq!(g["selected_branch_is_testing"], true);
        assert_eq!(g["eval_status"], "evaluated");
        assert_eq!(g["build_status"], "");
        let empty = builder(&proto::Builder::default());
        assert_eq!((&empty["generation"], &empty["build_progress"]), (&Value::Null, &Value::Null));
    }
}
