//! The caller's values, checked before any process starts, and the evaluation's answer
//! read back. Values never become Nix code: attribute paths travel as JSON lists in
//! `--argstr` strings and are looked up with `builtins.getAttr`.

use std::path::{Component, Path};

use crate::{EvalOutput, EvalRequest, JobError};

/// Refuses what cannot name a commit or what would leave the repository.
pub(crate) fn validate(req: &EvalRequest) -> Result<(), JobError> {
    let id = &req.commit_id;
    if !matches!(id.len(), 40 | 64) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JobError::Failed(format!(
            "invalid commit id {id:?}: a commit id is 40 or 64 hexadecimal characters"
        )));
    }
    subdir(&req.repository_subdir)?;
    if req.hostname.is_empty() {
        return Err(JobError::Failed("invalid hostname \"\": the hostname is empty".into()));
    }
    attr_path_json("system attribute", &req.system_attr)?;
    Ok(())
}

/// The subdirectory's names, empty for the repository root (`""`, `"."`).
pub(crate) fn subdir(subdir: &str) -> Result<Vec<&str>, JobError> {
    let refuse =
        |reason: &str| Err(JobError::Failed(format!("invalid repository subdirectory {subdir:?}: {reason}")));
    if subdir.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    let mut names = Vec::new();
    for component in Path::new(subdir).components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return refuse("it must be relative to the repository")
            }
            Component::ParentDir => return refuse("it must not contain `..`"),
            Component::CurDir => {}
            Component::Normal(name) => match name.to_str() {
                Some(name) => names.push(name),
                None => return refuse("it is not UTF-8"),
            },
        }
    }
    Ok(names)
}

/// `a.b.c` as the JSON list `["a","b","c"]`; empty components are refused (`""` is
/// the empty path). Attribute names holding a dot cannot be expressed.
pub(crate) fn attr_path_json(what: &str, path: &str) -> Result<String, JobError> {
    if path.is_empty() {
        return Ok("[]".into());
    }
    let names: Vec<&str> = path.split('.').collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(JobError::Failed(format!("invalid {what} {path:?}: it has an empty attribute name")));
    }
    Ok(serde_json::Value::from(names).to_string())
}

/// Reads the `{drv, out, machineId}` object an evaluation prints. Whether the paths
/// are empty is the builder's rule, for every executor alike.
pub(crate) fn parse_eval_output(stdout: &str) -> Result<EvalOutput, JobError> {
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| JobError::Failed(format!("cannot read the evaluation's output ({e}): {stdout:?}")))?;
    let field = |name: &str| -> Result<String, JobError> {
        match value.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            other => Err(JobError::Failed(format!(
                "the evaluation gave no string `{name}` (got {}): {stdout:?}",
                other.map_or("nothing".to_string(), |v| v.to_string())
            ))),
        }
    };
    Ok(EvalOutput { drv_path: field("drv")?, out_path: field("out")?, machine_id: field("machineId")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(commit: &str, subdir: &str) -> EvalRequest {
        EvalRequest {
            repository_path: "/r".into(),
            repository_subdir: subdir.into(),
            commit_id: commit.into(),
            system_attr: "nixosConfigurations".into(),
            hostname: "h".into(),
            submodules: false,
        }
    }

    #[test]
    fn validates_commit_ids_and_subdirs() {
        let sha1 = "a".repeat(40);
        assert!(validate(&req(&sha1, "")).is_ok());
        assert!(validate(&req(&"0123456789abcdef".repeat(4), "hosts/x")).is_ok());
        for bad in ["", "HEAD", "main", &"g".repeat(40), &"a".repeat(41), "--upload-pack=x"] {
            let err = validate(&req(bad, "")).unwrap_err().to_string();
            assert!(err.contains("invalid commit id"), "{err}");
        }
        for bad in ["/etc", "..", "a/../..", "a/..", "../x", "a\0b"] {
            let err = validate(&req(&sha1, bad)).unwrap_err().to_string();
            assert!(err.contains("invalid repository subdirectory"), "{err}");
        }
        assert_eq!(subdir(".").unwrap(), Vec::<&str>::new());
        assert_eq!(subdir("./a//b/").unwrap(), vec!["a", "b"]);
        assert_eq!(subdir("a b/${x}").unwrap(), vec!["a b", "${x}"]);
    }

    #[test]
    fn attr_paths_become_json_lists() {
        assert_eq!(attr_path_json("x", "").unwrap(), "[]");
        assert_eq!(attr_path_json("x", "a.b").unwrap(), r#"["a","b"]"#);
        assert_eq!(attr_path_json("x", "a\"${x}").unwrap(), r#"["a\"${x}"]"#);
        assert!(attr_path_json("x", "a..b").is_err());
    }

    #[test]
    fn eval_output_names_a_missing_or_mistyped_field() {
        let ok =
            parse_eval_output(r#"{"drv":"/nix/store/a.drv","out":"/nix/store/a","machineId":""}"#).unwrap();
        assert_eq!(ok.drv_path, "/nix/store/a.drv");
        // Empty paths are parsed: the builder refuses them, for every executor.
        let empty = parse_eval_output(r#"{"drv":"","out":"","machineId":""}"#).unwrap();
        assert_eq!(empty.drv_path, "");
        let err = parse_eval_output(r#"{"drv":"/nix/store/a.drv","machineId":""}"#).unwrap_err();
        assert!(err.to_string().contains("no string `out` (got nothing)"), "{err}");
        let err = parse_eval_output(r#"{"drv":1,"out":"","machineId":""}"#).unwrap_err();
        assert!(err.to_string().contains("no string `drv` (got 1)"), "{err}");
        assert!(parse_eval_output("\"/nix/store/a\"").is_err());
        assert!(parse_eval_output("")
            .unwrap_err()
            .to_string()
            .contains("cannot read the evaluation's output"));
    }
}
