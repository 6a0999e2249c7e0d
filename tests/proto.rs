//! The wire format: every field comin's `services.proto` has keeps comin's number, and
//! genbuild's own additions are numbered where comin's never go (ARCHITECTURE.md).

use genbuild::proto::{self, event, Event, Generation, RepositoryStatus};
use prost::Message;

/// The field numbers present in an encoded message, in order.
fn tags(bytes: &[u8]) -> Vec<u32> {
    let mut buf = bytes;
    let mut tags = Vec::new();
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf).unwrap();
        tags.push(tag);
        prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default()).unwrap();
    }
    tags
}

fn number_of<M: Message + Default>(set: impl FnOnce(&mut M)) -> u32 {
    let mut m = M::default();
    set(&mut m);
    match tags(&m.encode_to_vec())[..] {
        [tag] => tag,
        ref other => panic!("expected one field, found {other:?}"),
    }
}

/// A field setter and the number it must be encoded with.
type Case<'a, M> = (u32, Box<dyn FnOnce(&mut M) + 'a>);

fn ts() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: 1, nanos: 2 })
}

#[test]
fn generation_fields_have_comins_numbers() {
    let s = || "x".to_string();
    let cases: Vec<Case<Generation>> = vec![
        (1, Box::new(|g| g.uuid = s())),
        (3, Box::new(|g| g.hostname = s())),
        (4, Box::new(|g| g.selected_remote_url = s())),
        (5, Box::new(|g| g.selected_remote_name = s())),
        (6, Box::new(|g| g.selected_branch_name = s())),
        (7, Box::new(|g| g.selected_commit_id = s())),
        (8, Box::new(|g| g.selected_commit_msg = s())),
        (9, Box::new(|g| g.selected_branch_is_testing = Some(true))),
        (10, Box::new(|g| g.main_commit_id = s())),
        (11, Box::new(|g| g.main_remote_name = s())),
        (12, Box::new(|g| g.main_branch_name = s())),
        (13, Box::new(|g| g.eval_status = s())),
        (14, Box::new(|g| g.eval_started_at = ts())),
        (15, Box::new(|g| g.eval_ended_at = ts())),
        (16, Box::new(|g| g.eval_err = s())),
        (17, Box::new(|g| g.out_path = s())),
        (18, Box::new(|g| g.drv_path = s())),
        (19, Box::new(|g| g.machine_id = s())),
        (20, Box::new(|g| g.build_status = s())),
        (21, Box::new(|g| g.build_started_at = ts())),
        (22, Box::new(|g| g.build_ended_at = ts())),
        (23, Box::new(|g| g.build_err = s())),
        (24, Box::new(|g| g.repository_path = s())),
        (25, Box::new(|g| g.repository_subdir = s())),
        (26, Box::new(|g| g.system_attr = s())),
        (27, Box::new(|g| g.build_reason = s())),
    ];
    for (expected, set) in cases {
        assert_eq!(number_of(set), expected);
    }
}

#[test]
fn repository_status_builder_and_event_fields_have_comins_numbers() {
    let s = || "x".to_string();
    let rs: Vec<Case<RepositoryStatus>> = vec![
        (1, Box::new(|r| r.selected_commit_id = s())),
        (2, Box::new(|r| r.selected_commit_msg = s())),
        (3, Box::new(|r| r.selected_remote_name = s())),
        (4, Box::new(|r| r.selected_branch_name = s())),
        (5, Box::new(|r| r.selected_branch_is_testing = Some(false))),
        (9, Box::new(|r| r.main_commit_id = s())),
        (10, Box::new(|r| r.main_remote_name = s())),
        (11, Box::new(|r| r.main_branch_name = s())),
    ];
    for (expected, set) in rs {
        assert_eq!(number_of(set), expected);
    }
    let builder: Vec<Case<proto::Builder>> = vec![
        (1, Box::new(|b| b.is_evaluating = Some(false))),
        (2, Box::new(|b| b.is_building = Some(false))),
        (3, Box::new(|b| b.generation = Some(Generation::default()))),
        (4, Box::new(|b| b.generation_uuid = s())),
        (5, Box::new(|b| b.is_suspended = Some(false))),
        (6, Box::new(|b| b.hostname = s())),
        (16, Box::new(|b| b.last_error = s())),
    ];
    for (expected, set) in builder {
        assert_eq!(number_of(set), expected);
    }
    let g = || Some(Generation::default());
    let events: Vec<(u32, event::Kind)> = vec![
        (1, event::Kind::EvalStarted(proto::EvalStarted { generation: g() })),
        (2, event::Kind::EvalFinished(proto::EvalFinished { generation: g() })),
        (3, event::Kind::BuildStarted(proto::BuildStarted { generation: g() })),
        (4, event::Kind::BuildFinished(proto::BuildFinished { generation: g() })),
        (16, event::Kind::LogLine(proto::LogLine::default())),
    ];
    for (expected, kind) in events {
        assert_eq!(number_of(|e: &mut Event| e.kind = Some(kind)), expected);
    }
    assert_eq!(number_of(|e: &mut Event| e.created_at = ts()), 15);
    // The generation inside each event kind is field 1.
    let inner = proto::EvalStarted { generation: Some(Generation { uuid: s(), ..Default::default() }) };
    assert_eq!(tags(&inner.encode_to_vec()), [1]);
}

#[test]
fn a_fully_populated_generation_round_trips() {
    let g = Generation {
        uuid: "u".into(),
        hostname: "h".into(),
        selected_branch_is_testing: Some(true),
        eval_started_at: ts(),
        build_reason: "already built".into(),
        ..Default::default()
    };
    let state =
        proto::Builder { generation: Some(g.clone()), is_suspended: Some(true), ..Default::default() };
    assert_eq!(proto::Builder::decode(state.encode_to_vec().as_slice()).unwrap(), state);
    assert_eq!(tags(&g.encode_to_vec()), [1, 3, 9, 14, 27]);
}
